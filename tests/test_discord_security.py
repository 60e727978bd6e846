"""The bot token, intake tokens and submitted keys never reach logs or outgoing messages."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.discord.adapter import DiscordAdapter, DiscordLoginError, redact
from core.chat import ChatRef, Platform, Reply
from tests.fakes.discord_harness import CANARY_TOKEN, make_config, running
from tests.fakes.discord_server import GUILD_CHANNEL_ID, FakeDiscord

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    monkeypatch.setattr(Route, "BASE", Route.BASE)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)
    async with FakeDiscord() as server:
        yield server


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.INFO)
    return caplog


async def test_bot_token_is_used_but_never_logged_or_sent_in_bodies(
    fake: FakeDiscord, debug_logs: pytest.LogCaptureFixture
) -> None:
    async with running(fake) as (adapter, _):
        chat = ChatRef(platform=Platform.DISCORD, id=GUILD_CHANNEL_ID, is_direct=False)
        ref = await adapter.send(chat, Reply(text="hello"))
        assert ref is not None
        await adapter.edit(ref, Reply(text="hello again"))
        fake.forbidden_deletes.add(ref.id)
        assert await adapter.delete(chat, ref.id) is False
        await adapter.typing(chat)
        assert CANARY_TOKEN not in repr(adapter._cfg)
    assert {c.headers.get("Authorization") for c in fake.calls} == {f"Bot {CANARY_TOKEN}"}
    assert CANARY_TOKEN not in json.dumps([(c.path, c.query, c.body) for c in fake.calls])
    identify = [f for f in fake.gateway_frames if f["op"] == 2]
    assert [f["d"]["token"] for f in identify] == [CANARY_TOKEN]
    assert CANARY_TOKEN not in json.dumps([f for f in fake.gateway_frames if f["op"] != 2])
    assert "discord: could not delete message" in debug_logs.text
    assert CANARY_TOKEN not in debug_logs.text


async def test_refused_token_stops_start_up_without_echoing_it(
    fake: FakeDiscord, debug_logs: pytest.LogCaptureFixture
) -> None:
    fake.fail_next("GET", r"^/users/@me$", 401, {"code": 0, "message": "401: Unauthorized"})
    adapter = DiscordAdapter(make_config(fake), guild_ready_timeout=0.05)

    async def handler(event: object) -> None:
        raise AssertionError("no event expected")

    with pytest.raises(DiscordLoginError) as info:
        await adapter.start(handler)  # type: ignore[arg-type]
    assert str(info.value) == "Discord refused the bot token in $DISCORD_BOT_TOKEN"
    assert CANARY_TOKEN not in debug_logs.text
    await adapter.stop()  # idempotent after a failed start


def test_redact_masks_custom_ids_and_interaction_tokens() -> None:
    assert redact("custom_id k:AbC123-xyz_9 and 's:anthropic:T0k3n99'") == (
        "custom_id k:*** and 's:***'"
    )
    assert redact("POST https://discord.com/api/v10/webhooks/123/aW50ZXJh?wait=true") == (
        "POST https://discord.com/api/v10/webhooks/123/***?wait=true"
    )
    assert redact("/interactions/55/aW50ZXJh/callback") == "/interactions/55/***/callback"
    assert redact("https://example.com/docs: fine") == "https://example.com/docs: fine"


async def test_start_registers_the_token_with_the_log_redaction(fake: FakeDiscord) -> None:
    import secrets

    from core.logs import redact_text
    from core.secret import Secret

    token = (
        f"MTk{secrets.token_urlsafe(20)}.Gx{secrets.token_urlsafe(4)}.{secrets.token_urlsafe(28)}"
    )
    assert redact_text(f"token={token}") == f"token={token}"
    async with running(fake, token=Secret(token)):
        pass
    assert redact_text(f"token={token}") == "token=[REDACTED discord bot token]"
