"""Webhook mode: the real python-telegram-bot webhook server, fed like Telegram feeds it."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from adapters.telegram import TelegramAdapter, TelegramAdapterError, parse
from core.chat import EventKind, Reply
from core.config import PlatformSettings
from tests.fakes.telegram_server import PROXY_VARS, FakeTelegramServer, Script, message, tg_user

TOKEN = "5550009876:AAF-webhook-canary-token-0123456789ab"
SECRET = "wh-secret-canary_0123456789"
ADA = tg_user(42, "Ada", "ada")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTelegramServer]:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    fake = FakeTelegramServer(token=TOKEN)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
async def hook(server: FakeTelegramServer, script: Script) -> AsyncIterator[str]:
    """Start the adapter in webhook mode; yields the local URL Telegram would POST to."""
    port = free_port()
    settings = PlatformSettings(
        "telegram",
        True,
        {
            "api_base_url": server.base_url,
            "file_base_url": server.file_base_url,
            "mode": "webhook",
            "webhook_listen": "127.0.0.1",
            "webhook_port": port,
            "webhook_path": "/tg/hook",
            "webhook_public_url": "https://bot.example.org/tg/hook",
        },
    )
    env = {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_WEBHOOK_SECRET": SECRET}
    adapter = TelegramAdapter(parse(settings, env))

    async def on(event: Any) -> None:
        await adapter.respond(event, Reply(f"echo: {event.text}"))

    script.on = on
    await adapter.start(script)
    yield f"http://127.0.0.1:{port}/tg/hook"
    await adapter.stop()


async def post(url: str, body: dict[str, Any], headers: dict[str, str]) -> int:
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.post(
            url,
            content=json.dumps(body),
            headers={"Content-Type": "application/json", **headers},
        )
        return response.status_code


def update(update_id: int, text: str) -> dict[str, Any]:
    return {"update_id": update_id, **message(42, ADA, text, message_id=update_id)}


async def test_start_registers_the_webhook_with_its_secret(
    hook: str, server: FakeTelegramServer
) -> None:
    assert server.methods()[:3] == ["getMe", "setMyCommands", "setWebhook"]
    (registration,) = server.calls_to("setWebhook")
    assert registration["url"] == "https://bot.example.org/tg/hook"
    assert registration["secret_token"] == SECRET
    assert registration["allowed_updates"] == [
        "message",
        "edited_message",
        "callback_query",
        "my_chat_member",
        "pre_checkout_query",
    ]
    assert "getUpdates" not in server.methods()


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}, {"X-Telegram-Bot-Api-Secret-Token": ""}],
    ids=["missing", "wrong", "empty"],
)
async def test_missing_or_wrong_secret_is_refused(
    hook: str, script: Script, headers: dict[str, str]
) -> None:
    assert await post(hook, update(5001, "let me in"), headers) == 403
    assert script.events == []


async def test_update_with_the_secret_is_handled_and_redelivery_processed_once(
    hook: str, server: FakeTelegramServer, script: Script
) -> None:
    good = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    assert await post(hook, update(6001, "hello"), good) == 200
    await script.handled(1)
    # Telegram did not see our 200 in time and sends the same update again.
    assert await post(hook, update(6001, "hello"), good) == 200
    assert await post(hook, update(6002, "again"), good) == 200
    await script.handled(2)
    assert [(e.kind, e.text) for e in script.events] == [
        (EventKind.MESSAGE, "hello"),
        (EventKind.MESSAGE, "again"),
    ]
    await server.wait_calls("sendMessage", 2)
    assert server.texts(42) == ["echo: hello", "echo: again"]


async def test_secret_and_token_never_logged(
    server: FakeTelegramServer, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    # httpx at INFO (it prints request URLs), everything else at DEBUG; the handler level
    # follows the last call, so DEBUG comes last.
    caplog.set_level(logging.INFO, logger="httpx")
    caplog.set_level(logging.DEBUG)
    port = free_port()
    settings = PlatformSettings(
        "telegram",
        True,
        {
            "api_base_url": server.base_url,
            "mode": "webhook",
            "webhook_port": port,
            "webhook_public_url": "https://bot.example.org/telegram",
        },
    )
    adapter = TelegramAdapter(
        parse(settings, {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_WEBHOOK_SECRET": SECRET})
    )
    await adapter.start(script)
    url = f"http://127.0.0.1:{port}/telegram"
    assert await post(url, update(7001, "hi"), {"X-Telegram-Bot-Api-Secret-Token": "nope"}) == 403
    assert await post(url, update(7002, "hi"), {"X-Telegram-Bot-Api-Secret-Token": SECRET}) == 200
    await script.handled(1)
    await adapter.stop()
    assert "Calling Bot API endpoint `setWebhook`" in caplog.text  # SDK DEBUG lines captured
    for value in (TOKEN, TOKEN.partition(":")[2], SECRET):
        assert value not in caplog.text


async def test_bodies_that_are_not_updates_are_refused(hook: str, script: Script) -> None:
    good = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    async with httpx.AsyncClient(trust_env=False) as client:
        plain = await client.post(
            hook, content=b"{}", headers={**good, "Content-Type": "text/plain"}
        )
        broken = await client.post(
            hook, content=b"{not json", headers={**good, "Content-Type": "application/json"}
        )
        listed = await client.post(
            hook, content=b"[1, 2]", headers={**good, "Content-Type": "application/json"}
        )
    assert (plain.status_code, broken.status_code, listed.status_code) == (415, 400, 400)
    assert script.events == []


async def test_a_taken_port_is_a_clear_start_up_error(
    server: FakeTelegramServer, script: Script
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = PlatformSettings(
            "telegram",
            True,
            {
                "api_base_url": server.base_url,
                "mode": "webhook",
                "webhook_port": port,
                "webhook_public_url": "https://bot.example.org/telegram",
            },
        )
        adapter = TelegramAdapter(
            parse(settings, {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_WEBHOOK_SECRET": SECRET})
        )
        with pytest.raises(TelegramAdapterError) as info:
            await adapter.start(script)
    assert str(info.value).startswith(f"cannot listen on 127.0.0.1:{port}: ")
    assert "setWebhook" not in server.methods()


class _Inbox:
    """An inbox that can be made to refuse, as a locked or unreachable database does."""

    def __init__(self) -> None:
        self.refuse = True
        self.recorded: list[str] = []
        self.finished: list[str] = []

    async def record(self, events: Any) -> list[Any]:
        if self.refuse:
            raise OSError("database unreachable")
        fresh = [e for e in events if e.event_id not in self.recorded]
        self.recorded += [e.event_id for e in fresh]
        return fresh

    def finish(self, event: Any) -> None:
        self.finished.append(event.event_id)


async def test_the_webhook_answers_200_only_once_the_update_is_recorded(
    server: FakeTelegramServer, script: Script
) -> None:
    port = free_port()
    settings = PlatformSettings(
        "telegram",
        True,
        {
            "api_base_url": server.base_url,
            "file_base_url": server.file_base_url,
            "mode": "webhook",
            "webhook_listen": "127.0.0.1",
            "webhook_port": port,
            "webhook_path": "/tg/hook",
            "webhook_public_url": "https://bot.example.org/tg/hook",
        },
    )
    env = {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_WEBHOOK_SECRET": SECRET}
    inbox = _Inbox()
    adapter = TelegramAdapter(parse(settings, env), inbox=inbox)
    await adapter.start(script)
    try:
        url = f"http://127.0.0.1:{port}/tg/hook"
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
        body = {"update_id": 77, **message(42, ADA, "stored first", message_id=9)}
        # Not recorded: Telegram is told to try again, and nothing is handled.
        assert await post(url, body, headers) == 503
        assert script.events == []
        inbox.refuse = False
        assert await post(url, body, headers) == 200
        await script.handled(1)
        assert await post(url, body, headers) == 200  # Telegram's retry: recorded, not new
        await server.wait_for(lambda: len(inbox.finished) == 1)
        assert [e.text for e in script.events] == ["stored first"]
        assert inbox.finished == inbox.recorded
    finally:
        await adapter.stop()
