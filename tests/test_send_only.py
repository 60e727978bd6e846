"""Adapters log in to send only (``byokbot admin`` notices): the message goes out, nothing polls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import MappingProxyType

import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.discord.adapter import DiscordAdapter
from adapters.slack import SlackAdapter
from adapters.slack.config import parse as parse_slack
from adapters.telegram import TelegramAdapter, TelegramUnavailable
from adapters.telegram.config import parse as parse_telegram
from core.chat import ChatRef, Platform, Reply
from core.config import PlatformSettings
from core.ports import SendOnlyAdapter
from tests.fakes.discord_harness import make_config
from tests.fakes.discord_server import GUILD_CHANNEL_ID, FakeDiscord
from tests.fakes.slack_server import PROXY_VARS, FakeSlack, slack_env
from tests.fakes.telegram_server import FakeTelegramServer

TOKEN = "5550001234:AAE-canary-TOKEN-do-not-log-0123456789"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


def telegram(base: str, files: str) -> TelegramAdapter:
    settings = PlatformSettings("telegram", True, {"api_base_url": base, "file_base_url": files})
    return TelegramAdapter(parse_telegram(settings, {"TELEGRAM_BOT_TOKEN": TOKEN}))


async def test_telegram_sends_without_polling() -> None:
    fake = FakeTelegramServer(token=TOKEN)
    await fake.start()
    adapter = telegram(fake.base_url, fake.file_base_url)
    assert isinstance(adapter, SendOnlyAdapter)
    try:
        await adapter.open_for_sending()
        sent = await adapter.send(ChatRef(Platform.TELEGRAM, "4242", True), Reply(text="hello"))
        assert sent is not None
    finally:
        await adapter.stop()
        await fake.stop()
    assert fake.methods() == ["getMe", "sendMessage"]
    assert fake.texts(4242) == ["hello"]


async def test_telegram_unreachable_is_a_clear_error() -> None:
    adapter = telegram("http://127.0.0.1:9/bot", "http://127.0.0.1:9/file/bot")
    with pytest.raises(TelegramUnavailable, match="cannot reach the Bot API at http://127"):
        await adapter.open_for_sending()
    await adapter.stop()


@pytest.fixture
async def slack_fake() -> AsyncIterator[FakeSlack]:
    server = FakeSlack()
    await server.start()
    yield server
    await server.stop()


async def test_slack_sends_without_socket_mode(slack_fake: FakeSlack) -> None:
    settings = PlatformSettings(
        name="slack", enabled=True, options=MappingProxyType({"api_base_url": slack_fake.base_url})
    )
    adapter = SlackAdapter(parse_slack(settings, slack_env()))
    assert isinstance(adapter, SendOnlyAdapter)
    try:
        await adapter.open_for_sending()
        await adapter.send(ChatRef(Platform.SLACK, "D0123", True), Reply(text="hello"))
    finally:
        await adapter.stop()
    assert slack_fake.methods() == ["auth.test", "chat.postMessage"]
    assert slack_fake.calls_to("chat.postMessage")[0]["channel"] == "D0123"


async def test_discord_sends_over_rest_without_the_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Route, "BASE", Route.BASE)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)
    async with FakeDiscord() as fake:
        adapter = DiscordAdapter(make_config(fake))
        assert isinstance(adapter, SendOnlyAdapter)
        try:
            await adapter.open_for_sending()
            chat = ChatRef(Platform.DISCORD, GUILD_CHANNEL_ID, False)
            await adapter.send(chat, Reply(text="hello"))
        finally:
            await adapter.stop()
        posts = fake.find("POST", rf"^/channels/{GUILD_CHANNEL_ID}/messages$")
        assert [c.body["content"] for c in posts] == ["hello"]
        assert fake.gateway_frames == []
