"""Whole journeys on Telegram: the real router and flows, the real SDK, the loopback Bot API.

Each test is a chat transcript: what people send (updates pushed to the fake server) and
what the bot shows (the fake's record of every chat, edits applied, deletions removed).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.telegram import TelegramAdapter, parse
from bot import texts
from bot.app import App
from core.chat import Platform, UserRef, button_owner_tag
from core.config import PlatformSettings
from core.ports import UnavailableAgents
from tests.canaries import anthropic_key
from tests.conftest import make_config, proxy_on
from tests.fakes.telegram_server import (
    PROXY_VARS,
    FakeTelegramServer,
    HeldSleep,
    TickingClock,
    callback,
    message,
    tg_user,
)

TOKEN = "5550004321:AAG-router-canary-token-0123456789ab"
ADA = tg_user(42, "Ada", "ada")
BOB = tg_user(43, "Bob", "bob")
GROUP = -100777
_mids = iter(range(10_000, 20_000))


class ScriptedAgents(UnavailableAgents):
    """An agent that answers every message with the same chunks and records what it got."""

    def __init__(self, chunks: list[str]) -> None:
        self.chunks = chunks
        self.seen: list[str] = []

    async def reply(  # type: ignore[override]
        self, tenant_id: str, conversation: str, text: str, **_: object
    ) -> AsyncIterator[str]:
        self.seen.append(text)
        for chunk in self.chunks:
            yield chunk


@dataclass
class Chat:
    """The test's view: the fake Bot API and the running app."""

    server: FakeTelegramServer
    app: App
    agents: ScriptedAgents

    def push(self, chat_id: int, user: dict[str, Any], text: str, **kw: Any) -> int:
        mid = next(_mids)
        self.server.push_update(message(chat_id, user, text, message_id=mid, **kw))
        return mid

    def press(self, chat_id: int, user: dict[str, Any], data: str, message_id: int) -> None:
        self.server.push_update(callback(chat_id, user, data, message_id=message_id))

    async def shows(self, chat_id: int, count: int) -> list[str]:
        """Wait until the bot has sent ``count`` messages to the chat; what the chat shows."""
        await self.server.wait_for(lambda: len(self.sent(chat_id)) >= count)
        return self.server.texts(chat_id)

    def sent(self, chat_id: int) -> list[dict[str, Any]]:
        return [p for p in self.server.calls_to("sendMessage") if p["chat_id"] == str(chat_id)]


@pytest.fixture
async def chat(
    monkeypatch: pytest.MonkeyPatch,
    sqlite_url: str,
    tmp_path: Path,
    master_key_env: dict[str, str],
) -> AsyncIterator[Chat]:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    server = FakeTelegramServer(token=TOKEN)
    await server.start()
    settings = PlatformSettings(
        "telegram",
        True,
        {"api_base_url": server.base_url, "file_base_url": server.file_base_url},
    )
    adapter = TelegramAdapter(
        parse(settings, {"TELEGRAM_BOT_TOKEN": TOKEN}), clock=TickingClock(), sleep=HeldSleep()
    )
    agents = ScriptedAgents(["Hello", " Ada", ", how can I help?"])
    proxy, keys = proxy_on()  # so the managed plan is offered
    app = App(
        make_config(sqlite_url, tmp_path, proxy=proxy),
        env={**master_key_env, **keys},
        agents=agents,
        extra_adapters=[adapter],
        platforms=False,
    )
    await app.start()
    yield Chat(server, app, agents)
    await app.stop()
    await server.stop()


def tagged(user: dict[str, Any], payload: str) -> str:
    return f"{button_owner_tag(UserRef(Platform.TELEGRAM, str(user['id'])))}|{payload}"


async def sign_up(chat: Chat, user: dict[str, Any], plan: str, *, where: int) -> None:
    """/start, then press the plan's button; waits for the plan's follow-up message."""
    before = len(chat.sent(where))
    chat.push(where, user, "/start")
    await chat.shows(where, before + 1)
    chat.press(where, user, tagged(user, f"plan:{plan}"), _menu_id(chat, where))
    # The managed plan's trial (the config's stand-in for a payment) is announced too.
    await chat.shows(where, before + (4 if plan == "managed" else 3))


def _menu_id(chat: Chat, chat_id: int) -> int:
    # The fake numbers messages in order; the newest in this chat is the plan menu.
    return max(chat.server.chats[str(chat_id)])


# ----- transcripts -------------------------------------------------------------------------


async def test_onboarding_then_key_intake_from_a_group(chat: Chat) -> None:
    key = anthropic_key()
    chat.push(42, ADA, "/start")
    (welcome,) = await chat.shows(42, 1)
    assert welcome.startswith(texts.WELCOME)
    buttons = chat.sent(42)[0]["reply_markup"]["inline_keyboard"]
    assert [row[0]["callback_data"] for row in buttons] == [
        tagged(ADA, "plan:byok"),
        tagged(ADA, "plan:managed"),
    ]

    chat.press(42, ADA, tagged(ADA, "plan:byok"), _menu_id(chat, 42))
    shown = await chat.shows(42, 3)
    assert shown[1:] == [
        texts.SIGNED_UP.format(plan="BYOK"),
        texts.BYOK_NEEDS_KEY.format(plan="BYOK"),
    ]
    assert chat.server.calls_to("answerCallbackQuery") == [{"callback_query_id": "q1"}]

    # In the team group, Ada asks to add her key: the exchange moves to her DM.
    chat.push(GROUP, ADA, "/key@byok_test_bot add anthropic")
    assert await chat.shows(GROUP, 1) == [texts.KEY_MOVED_TO_DM]
    prompt, hint = chat.sent(42)[-2:]
    assert prompt["protect_content"] == "true"
    assert prompt["reply_markup"]["force_reply"] is True
    assert prompt["text"].startswith("<b>Your Anthropic API key</b>")
    # ForceReply leaves no room for buttons: the Cancel button comes right after.
    assert hint["text"] == texts.KEY_CANCEL_HINT
    assert hint["reply_markup"]["inline_keyboard"][0][0]["text"] == texts.CANCEL_BUTTON

    # She replies with the key: deleted at once, confirmed with a fingerprint only.
    mid = chat.push(42, ADA, key)
    await chat.shows(42, 6)
    assert chat.server.calls_to("deleteMessage") == [{"chat_id": "42", "message_id": str(mid)}]
    confirmation = chat.server.texts(42)[-1]
    assert confirmation.startswith(texts.KEY_MESSAGE_DELETED + "\n" + "Key saved: ")
    outgoing = str([c.params for c in chat.server.calls if c.method != "getUpdates"])
    assert key not in outgoing
    assert key[13:40] not in outgoing


async def test_key_intake_when_telegram_refuses_the_deletion(chat: Chat) -> None:
    await sign_up(chat, ADA, "byok", where=42)
    chat.push(42, ADA, "/key add anthropic")
    await chat.shows(42, 5)
    chat.server.fail("deleteMessage", 400, "Bad Request: message can't be deleted")
    chat.push(42, ADA, anthropic_key())
    shown = await chat.shows(42, 6)
    assert shown[-1].startswith(texts.KEY_DELETE_FAILED + "\nKey saved: ")


async def test_key_intake_for_someone_who_never_started_the_bot(chat: Chat) -> None:
    await sign_up(chat, BOB, "byok", where=GROUP)
    chat.server.fail("sendMessage", 403, "Forbidden: bot can't initiate conversation", chat_id=43)
    chat.push(GROUP, BOB, "/key add anthropic")
    shown = await chat.shows(GROUP, 4)
    assert shown[-1] == texts.KEY_DM_NEEDED.format(provider="anthropic")
    assert chat.sent(GROUP)[-1]["reply_markup"] == {
        # The deep link lands on /start key, which continues the key exchange in the DM.
        "inline_keyboard": [
            [{"text": texts.OPEN_DM_BUTTON, "url": "https://t.me/byok_test_bot?start=key"}]
        ]
    }


async def test_leak_guard_in_a_group(chat: Chat) -> None:
    key = anthropic_key()
    mid = chat.push(GROUP, ADA, f"here is the team key {key}")
    shown = await chat.shows(GROUP, 1)
    assert chat.server.calls_to("deleteMessage") == [
        {"chat_id": str(GROUP), "message_id": str(mid)}
    ]
    assert shown == [texts.LEAK_WARNING.format(deleted=texts.LEAK_DELETED)]
    assert chat.agents.seen == []
    assert key not in str([c.params for c in chat.server.calls if c.method != "getUpdates"])


async def test_leak_guard_in_a_dm_when_deletion_is_refused(chat: Chat) -> None:
    chat.server.fail("deleteMessage", 400, "Bad Request: message can't be deleted")
    chat.push(42, ADA, f"my key is {anthropic_key()}")
    shown = await chat.shows(42, 1)
    assert shown == [texts.LEAK_WARNING.format(deleted=texts.LEAK_NOT_DELETED)]


async def test_agent_chat_streams_in_dm_and_answers_mentions_in_groups(chat: Chat) -> None:
    await sign_up(chat, ADA, "managed", where=42)
    chat.push(42, ADA, "hi there")
    shown = await chat.shows(42, 5)
    assert shown[-1] == "Hello Ada, how can I help?"
    drafts = chat.server.calls_to("sendMessageDraft")
    # Paced: the rest came within a second. When the sign-up's messages still fill the chat's
    # flood window, the reply ends before its first draft's turn and only the message goes.
    assert [d["text"] for d in drafts] in ([], ["Hello"])

    chat.push(GROUP, ADA, "just chatting with the team")
    chat.push(GROUP, ADA, "@byok_test_bot summarise please")
    shown = await chat.shows(GROUP, 1)
    await chat.server.wait_for(lambda: chat.server.texts(GROUP) == ["Hello Ada, how can I help?"])
    assert chat.agents.seen == ["hi there", "summarise please"]
    edits = [p["text"] for p in chat.server.calls_to("editMessageText")]
    assert (chat.sent(GROUP)[0]["text"], edits) == ("Hello", ["Hello Ada, how can I help?"])


async def test_someone_elses_button(chat: Chat) -> None:
    chat.push(GROUP, ADA, "/start")
    await chat.shows(GROUP, 1)
    chat.press(GROUP, BOB, tagged(ADA, "plan:byok"), _menu_id(chat, GROUP))
    shown = await chat.shows(GROUP, 2)
    assert shown[-1] == texts.NOT_YOUR_BUTTON


async def test_private_details_asked_in_a_group_go_to_the_dm(chat: Chat) -> None:
    await sign_up(chat, ADA, "managed", where=42)
    chat.push(GROUP, ADA, "/status")
    assert await chat.shows(GROUP, 1) == [texts.SENT_TO_DM]
    status = chat.server.texts(42)[-1]
    assert status.startswith("Plan: Managed")
    assert chat.server.calls_to("sendChatAction")[-1] == {"chat_id": "42", "action": "typing"}


async def test_private_details_the_dm_refuses_are_not_said_to_be_sent(chat: Chat) -> None:
    await sign_up(chat, ADA, "managed", where=42)
    chat.server.fail("sendMessage", 403, "Forbidden: bot was blocked by the user", chat_id=42)
    chat.push(GROUP, ADA, "/status")
    assert await chat.shows(GROUP, 1) == [texts.DM_NEEDED]
    assert not any(t.startswith("Plan: Managed") for t in chat.server.texts(GROUP))


async def test_webhook_journey_with_a_redelivered_update(
    monkeypatch: pytest.MonkeyPatch,
    sqlite_url: str,
    tmp_path: Path,
    master_key_env: dict[str, str],
) -> None:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    server = FakeTelegramServer(token=TOKEN)
    await server.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "journey-secret_0123456789"
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
    env = {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_WEBHOOK_SECRET": secret}
    app = App(
        make_config(sqlite_url, tmp_path),
        env=master_key_env,
        agents=ScriptedAgents(["ok"]),
        extra_adapters=[TelegramAdapter(parse(settings, env))],
        platforms=False,
    )
    await app.start()
    try:
        body = json.dumps({"update_id": 1, **message(42, ADA, "/start", message_id=1)})
        async with httpx.AsyncClient(trust_env=False) as client:
            for secret_sent, expected in (
                (None, 403),
                ("guess", 403),
                (secret, 200),
                (secret, 200),
            ):
                headers = {"Content-Type": "application/json"}
                if secret_sent is not None:
                    headers["X-Telegram-Bot-Api-Secret-Token"] = secret_sent
                response = await client.post(
                    f"http://127.0.0.1:{port}/telegram", content=body, headers=headers
                )
                assert response.status_code == expected
            # A later update from the same person: its answer comes after any answer to the
            # duplicate would have (one conversation is handled in order).
            help_body = json.dumps({"update_id": 2, **message(42, ADA, "/help", message_id=2)})
            response = await client.post(
                f"http://127.0.0.1:{port}/telegram",
                content=help_body,
                headers={
                    "Content-Type": "application/json",
                    "X-Telegram-Bot-Api-Secret-Token": secret,
                },
            )
            assert response.status_code == 200
        await server.wait_for(lambda: texts.HELP in server.texts(42))
        # /start was delivered twice with the secret and answered once.
        shown = server.texts(42)
        assert [t.startswith(texts.WELCOME) for t in shown] == [True, False]
    finally:
        await app.stop()
        await server.stop()
