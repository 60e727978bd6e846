"""Scenario tests: the real python-telegram-bot, polling a loopback fake Bot API.

Each test reads like a chat transcript: updates the person sends, what the handler (a scripted
stand-in for the router) does, and what the fake server recorded the bot doing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.telegram import (
    TelegramAdapter,
    TelegramLoginError,
    TelegramPollingConflict,
    TelegramRateLimited,
    TelegramRequestRejected,
    TelegramUnavailable,
    parse,
)
from adapters.telegram.pacing import FloodLimits, Window
from adapters.telegram.translate import utf16_len
from core.chat import (
    Button,
    ChatRef,
    Event,
    EventKind,
    MessageRef,
    Platform,
    Reply,
    SecretRequest,
    TextFormat,
    UserRef,
)
from core.config import PlatformSettings
from core.metrics import REGISTRY
from tests.fakes.telegram_server import (
    PROXY_VARS,
    FakeTelegramServer,
    HeldSleep,
    Script,
    TickingClock,
    callback,
    message,
    tg_user,
)

TOKEN = "5550001234:AAE-canary-TOKEN-do-not-log-0123456789"
ADA = tg_user(42, "Ada", "ada")
BOB = tg_user(43, "Bob", "bob")
GROUP_ID = -100555
KEY = "sk-ant-api03-" + "Q" * 93 + "AA"

Factory = Callable[..., Awaitable[TelegramAdapter]]


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
def clock() -> TickingClock:
    return TickingClock()


@pytest.fixture
def sleep() -> HeldSleep:
    return HeldSleep()


OPEN_LIMITS = FloodLimits(Window(1000, 1.0), Window(1000, 1.0), Window(1000, 1.0))


@pytest.fixture
async def make(
    server: FakeTelegramServer, script: Script, clock: TickingClock, sleep: HeldSleep
) -> AsyncIterator[Factory]:
    started: list[TelegramAdapter] = []

    async def factory(*, typing_refresh: float = 4.5, **options: Any) -> TelegramAdapter:
        settings = PlatformSettings(
            "telegram",
            True,
            {
                "api_base_url": server.base_url,
                "file_base_url": server.file_base_url,
                "poll_timeout": 1,
                "rate_limit_retries": 3,
                **options,
            },
        )
        adapter = TelegramAdapter(
            parse(settings, {"TELEGRAM_BOT_TOKEN": TOKEN}),
            clock=clock,
            typing_refresh=typing_refresh,
            sleep=sleep,
            # These tests move a manual clock for the stream's pace; the flood windows count
            # real time, so they are wide open here (tests/test_telegram_pacing.py covers them).
            limits=OPEN_LIMITS,
        )
        await adapter.start(script)
        started.append(adapter)
        return adapter

    yield factory
    for adapter in started:
        await adapter.stop()


def sent(server: FakeTelegramServer, chat_id: int) -> list[dict[str, Any]]:
    return [p for p in server.calls_to("sendMessage") if p["chat_id"] == str(chat_id)]


def request() -> SecretRequest:
    return SecretRequest(
        token="intake-token-never-shown",
        provider="anthropic",
        title="Anthropic API key",
        prompt="Reply to this message with your key. I delete it at once.",
        expires_at=datetime(2026, 12, 1, tzinfo=UTC),
    )


# ----- start-up ----------------------------------------------------------------------------


async def test_start_logs_in_publishes_commands_and_polls(
    make: Factory, server: FakeTelegramServer
) -> None:
    adapter = await make()
    await server.wait_calls("getUpdates", 2)
    # The first getUpdates is the one-shot check that no other process polls this bot.
    assert server.methods()[:5] == [
        "getMe",
        "setMyCommands",
        "getUpdates",
        "deleteWebhook",
        "getUpdates",
    ]
    probe = server.calls_to("getUpdates")[0]
    assert probe["timeout"] == "0" and "offset" not in probe  # confirms no update
    commands = server.calls_to("setMyCommands")[0]["commands"]
    assert [c["command"] for c in commands][:3] == ["start", "help", "plan"]
    assert len(commands) == 24  # /new, /history, /compact and /mcp joined the menu (issue 14)
    assert {
        "cancel",
        "whoami",
        "memory",
        "tasks",
        "timezone",
        "new",
        "history",
        "compact",
        "mcp",
    } <= {c["command"] for c in commands}
    assert adapter.bot_username == "byok_test_bot"
    assert adapter.deep_link("key") == "https://t.me/byok_test_bot?start=key"


_CONFLICT = "Conflict: terminated by other getUpdates request; make sure that only one bot"


async def test_start_refuses_beside_another_poller(
    make: Factory, server: FakeTelegramServer
) -> None:
    server.fail("getUpdates", 409, _CONFLICT)
    with pytest.raises(TelegramPollingConflict, match="another process is polling this bot"):
        await make()


async def test_a_registered_webhook_is_not_another_poller(
    make: Factory, server: FakeTelegramServer
) -> None:
    server.fail("getUpdates", 409, "Conflict: can't use getUpdates method while webhook is active")
    await make()
    await server.wait_calls("getUpdates", 1)
    assert "deleteWebhook" in server.methods()


async def test_a_conflict_while_starting_ends_serving(
    make: Factory, server: FakeTelegramServer
) -> None:
    # The real server lets the newest request win, so the probe may pass and the first
    # polls get the 409 instead.
    adapter = await make()
    server.fail("getUpdates", 409, _CONFLICT)
    reason = await asyncio.wait_for(adapter.failure(), 5)
    assert isinstance(reason, TelegramPollingConflict)


async def test_a_conflict_long_after_start_is_only_logged(
    make: Factory,
    server: FakeTelegramServer,
    clock: TickingClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    adapter = await make()
    clock.now += 3600  # this process has been serving for an hour: the newcomer must yield
    server.fail("getUpdates", 409, _CONFLICT)
    await server.wait_for(lambda: any(c.status == 409 for c in server.calls))
    await server.wait_calls("getUpdates", len(server.calls_to("getUpdates")) + 1, within=10)
    failed = asyncio.ensure_future(adapter.failure())
    await asyncio.sleep(0)
    assert not failed.done()
    failed.cancel()
    assert "another process is polling this bot too" in caplog.text


async def test_stop_is_idempotent(make: Factory) -> None:
    adapter = await make()
    await adapter.stop()
    await adapter.stop()


async def test_rejected_token_stops_start_with_a_clear_error(
    server: FakeTelegramServer, script: Script
) -> None:
    settings = PlatformSettings("telegram", True, {"api_base_url": server.base_url})
    adapter = TelegramAdapter(parse(settings, {"TELEGRAM_BOT_TOKEN": "1:wrong-token-value"}))
    with pytest.raises(TelegramLoginError) as info:
        await adapter.start(script)
    assert str(info.value) == (
        "Telegram rejected the bot token in TELEGRAM_BOT_TOKEN "
        f"(or api_base_url {server.base_url} is not a Bot API server)"
    )
    await adapter.stop()


# ----- onboarding with plan buttons --------------------------------------------------------


async def test_onboarding_with_plan_buttons(
    make: Factory, server: FakeTelegramServer, script: Script
) -> None:
    tag = "0a1b2c3d"
    menu: list[Any] = []

    async def on(event: Event) -> None:
        if event.kind == EventKind.COMMAND and event.command == "start":
            menu.append(
                await adapter.respond(
                    event,
                    Reply(
                        "Welcome! Pick a plan:",
                        buttons=(
                            (Button("BYOK $15", f"{tag}:plan:byok"),),
                            (Button("Managed $39", f"{tag}:plan:managed"),),
                        ),
                    ),
                )
            )
        elif event.kind == EventKind.BUTTON:
            assert event.message_id is not None
            await adapter.edit(menu[0], Reply("Plan: BYOK. Next, your API key."))

    script.on = on
    adapter = await make()
    server.push_update(message(42, ADA, "/start", message_id=1))
    await script.handled(1)
    (shown,) = sent(server, 42)
    assert shown["text"] == "Welcome! Pick a plan:"
    assert shown["reply_markup"]["inline_keyboard"] == [
        [{"text": "BYOK $15", "callback_data": f"{tag}:plan:byok"}],
        [{"text": "Managed $39", "callback_data": f"{tag}:plan:managed"}],
    ]

    mid = int(menu[0].id)
    server.push_update(callback(42, ADA, f"{tag}:plan:byok", message_id=mid, query_id="cq-1"))
    await script.handled(2)
    press = script.events[1]
    assert server.methods().index("answerCallbackQuery") < server.methods().index("editMessageText")
    assert (press.kind, press.payload, press.message_id) == (
        EventKind.BUTTON,
        f"{tag}:plan:byok",
        str(mid),
    )
    await server.wait_calls("answerCallbackQuery", 1)
    assert server.calls_to("answerCallbackQuery") == [{"callback_query_id": "cq-1"}]
    assert server.texts(42) == ["Plan: BYOK. Next, your API key."]
    # No reply_markup on the edit: Telegram removes the old keyboard.
    assert "reply_markup" not in server.calls_to("editMessageText")[0]


async def test_slow_handler_button_is_answered_promptly(
    make: Factory, server: FakeTelegramServer, script: Script
) -> None:
    release = asyncio.Event()

    async def on(event: Event) -> None:
        await release.wait()

    script.on = on
    await make()
    server.push_update(callback(42, ADA, "x:plan", message_id=3, query_id="q3"))
    # Answered at once although the handler is still busy.
    await server.wait_calls("answerCallbackQuery", 1)
    assert script.done == 0
    release.set()
    await script.handled(1)
    assert server.calls_to("answerCallbackQuery") == [{"callback_query_id": "q3"}]


# ----- key intake --------------------------------------------------------------------------


def intake_script(adapter_box: list[TelegramAdapter], script: Script, *, refuse: bool) -> None:
    """Group /key moves to DM; the DM reply is deleted at once and fingerprinted."""
    awaiting: set[str] = set()

    async def on(event: Event) -> None:
        adapter = adapter_box[0]
        if event.kind == EventKind.COMMAND and event.command == "key":
            asked = await adapter.ask_secret(event, request())
            if asked is not False:
                # The prompt itself, in the person's DM: a reply to it is the answer.
                assert isinstance(asked, MessageRef) and asked.chat == ChatRef(
                    Platform.TELEGRAM, event.user.id, is_direct=True
                )
            if not asked:
                await adapter.respond(
                    event,
                    Reply(
                        "Open a private chat with me first:",
                        buttons=((Button("Open DM", "@open-dm:key"),),),
                    ),
                )
                return
            awaiting.add(event.user.id)
            if not event.chat.is_direct:
                await adapter.respond(event, Reply("I've sent you a private message."))
        elif event.kind == EventKind.MESSAGE and event.user.id in awaiting:
            awaiting.discard(event.user.id)
            assert event.message_id is not None
            deleted = await adapter.delete(event.chat, event.message_id)
            text = "Key saved: fingerprint 3f:9a:c1." if not refuse else "Key saved."
            if not deleted:
                text += " I could not delete your message: delete it and rotate the key."
            else:
                text += " Your message was deleted."
            await adapter.send(event.chat, Reply(text, sensitive=True))

    script.on = on


async def test_key_intake_from_a_group_moves_to_dm_and_deletes_the_reply(
    make: Factory, server: FakeTelegramServer, script: Script
) -> None:
    box: list[TelegramAdapter] = []
    intake_script(box, script, refuse=False)
    box.append(await make())
    server.push_update(message(GROUP_ID, ADA, "/key@byok_test_bot add anthropic", message_id=70))
    await script.handled(1)
    assert script.events[0].args == ("add", "anthropic")
    (prompt,) = sent(server, 42)
    assert prompt["protect_content"] == "true"
    assert prompt["reply_markup"] == {
        "force_reply": True,
        "selective": True,
        "input_field_placeholder": "Anthropic API key",
    }
    assert "intake-token-never-shown" not in str(server.calls)
    (note,) = sent(server, GROUP_ID)
    assert note["text"] == "I've sent you a private message."
    assert note["reply_parameters"] == {"message_id": 70, "allow_sending_without_reply": True}

    server.push_update(message(42, ADA, KEY, message_id=71))
    await script.handled(2)
    assert server.calls_to("deleteMessage") == [{"chat_id": "42", "message_id": "71"}]
    assert [m for m in server.methods() if m != "getUpdates"][-2:] == [
        "deleteMessage",
        "sendMessage",
    ]
    assert server.texts(42)[-1] == "Key saved: fingerprint 3f:9a:c1. Your message was deleted."
    assert sent(server, 42)[-1]["protect_content"] == "true"
    assert KEY not in str([c.params for c in server.calls if c.method != "getUpdates"])


async def test_key_intake_when_deletion_fails_advises_rotation(
    make: Factory, server: FakeTelegramServer, script: Script
) -> None:
    box: list[TelegramAdapter] = []
    intake_script(box, script, refuse=True)
    box.append(await make())
    server.fail("deleteMessage", 400, "Bad Request: message can't be deleted")
    server.push_update(message(42, ADA, "/key", message_id=5))
    await script.handled(1)
    server.push_update(message(42, ADA, KEY, message_id=6))
    await script.handled(2)
    assert server.texts(42)[-1] == (
        "Key saved. I could not delete your message: delete it and rotate the key."
    )
    assert script.errors == []


async def test_key_intake_for_someone_who_never_started_the_bot(
    make: Factory, server: FakeTelegramServer, script: Script
) -> None:
    box: list[TelegramAdapter] = []
    intake_script(box, script, refuse=False)
    box.append(await make())
    server.fail(
        "sendMessage", 403, "Forbidden: bot can't initiate conversation with a user", chat_id=43
    )
    server.push_update(message(GROUP_ID, BOB, "/key", message_id=80))
    await script.handled(1)
    (answer,) = sent(server, GROUP_ID)
    assert answer["reply_markup"] == {
        "inline_keyboard": [[{"text": "Open DM", "url": "https://t.me/byok_test_bot?start=key"}]]
    }
    assert sent(server, 43) == []
    assert box[0].unreachable_chats == frozenset({"43"})
    # Bob follows the link: Telegram sends /start key from his DM.
    server.push_update(message(43, BOB, "/start key", message_id=1))
    await script.handled(2)
    assert (script.events[1].command, script.events[1].args) == ("start", ("key",))
    assert box[0].unreachable_chats == frozenset()


async def test_open_dm_probes_with_a_chat_action(make: Factory, server: FakeTelegramServer) -> None:
    adapter = await make()
    server.fail("sendChatAction", 403, "Forbidden: bot was blocked by the user", chat_id=43)
    assert await adapter.open_dm(tg_ref(42)) == ChatRef(Platform.TELEGRAM, "42", is_direct=True)
    assert await adapter.open_dm(tg_ref(43)) is None
    assert server.calls_to("sendChatAction") == [{"chat_id": "42", "action": "typing"}]
    assert adapter.unreachable_chats == frozenset({"43"})


# ----- leak guard --------------------------------------------------------------------------


async def test_leak_guard_in_a_group_deletes_and_warns(
    make: Factory, server: FakeTelegramServer, script: Script
) -> None:
    async def on(event: Event) -> None:
        if "sk-ant-" in event.text:
            assert event.message_id is not None
            deleted = await adapter.delete(event.chat, event.message_id)
            warning = "That looked like an API key" + (
                "; I deleted it. Rotate it now." if deleted else ". Rotate it now."
            )
            await adapter.respond(event, Reply(warning))

    script.on = on
    adapter = await make()
    server.push_update(message(GROUP_ID, ADA, f"here you go {KEY}", message_id=90))
    await script.handled(1)
    event = script.events[0]
    assert (event.kind, event.addressed, event.message_id) == (EventKind.MESSAGE, False, "90")
    assert server.calls_to("deleteMessage") == [{"chat_id": str(GROUP_ID), "message_id": "90"}]
    assert server.texts(GROUP_ID) == ["That looked like an API key; I deleted it. Rotate it now."]


async def test_group_chat_only_mentions_and_replies_are_addressed(
    make: Factory, server: FakeTelegramServer, script: Script
) -> None:
    await make()
    bot_message = {
        "message_id": 5,
        "date": 1780000000,
        "chat": {"id": GROUP_ID, "type": "supergroup", "title": "Team"},
        "from": {"id": server.bot_id, "is_bot": True, "first_name": "BYOK"},
        "text": "previous answer",
    }
    server.push_update(message(GROUP_ID, ADA, "just chatting", message_id=10))
    server.push_update(message(GROUP_ID, ADA, "@byok_test_bot summarise", message_id=11))
    server.push_update(message(GROUP_ID, ADA, "more please", message_id=12, reply_to=bot_message))
    await script.handled(3)
    assert [(e.text, e.addressed) for e in script.events] == [
        ("just chatting", False),
        ("summarise", True),
        ("more please", True),
    ]


# ----- agent chat with streaming -----------------------------------------------------------


def ticking(clock: TickingClock, chunks: list[str], step: float) -> AsyncIterator[str]:
    async def gen() -> AsyncIterator[str]:
        for chunk in chunks:
            yield chunk
            clock.now += step

    return gen()


async def test_group_stream_edits_one_message_paced(
    make: Factory, server: FakeTelegramServer, script: Script, clock: TickingClock
) -> None:
    async def on(event: Event) -> None:
        chunks = ["Hel", "lo ", "wor", "ld", "!"]
        await adapter.stream(event, ticking(clock, chunks, 0.4))

    script.on = on
    adapter = await make(group_edit_interval=1.0)
    server.push_update(message(GROUP_ID, ADA, "@byok_test_bot hi", message_id=3))
    await script.handled(1)
    shown = [
        (c.method, c.params["text"])
        for c in server.calls
        if c.method in ("sendMessage", "editMessageText")
    ]
    # Shown at t=0 and t=1.2 (the pace is 1 s); the final state always.
    assert shown == [
        ("sendMessage", "Hel"),
        ("editMessageText", "Hello world"),
        ("editMessageText", "Hello world!"),
    ]
    # The first text went at once: the stream sends no typing ahead of it (the message flow
    # starts typing beside the agent's request).
    assert "sendChatAction" not in server.methods()
    assert server.texts(GROUP_ID) == ["Hello world!"]
    assert server.calls_to("sendMessage")[0]["reply_parameters"] == {
        "message_id": 3,
        "allow_sending_without_reply": True,
    }


async def test_a_stream_whose_message_the_person_deletes_goes_on_in_a_new_one(
    make: Factory, server: FakeTelegramServer, script: Script, clock: TickingClock
) -> None:
    async def on(event: Event) -> None:
        async def chunks() -> AsyncIterator[str]:
            for chunk in ["Hel", "lo ", "wor", "ld", "!"]:
                yield chunk
                if chunk == "Hel":
                    (first,) = [c.message_id for c in server.calls if c.method == "sendMessage"]
                    assert first is not None
                    server.user_deletes(GROUP_ID, first)
                clock.now += 0.4

        await adapter.stream(event, chunks())

    script.on = on
    adapter = await make(group_edit_interval=1.0)
    server.push_update(message(GROUP_ID, ADA, "@byok_test_bot hi", message_id=3))
    await script.handled(1)
    assert script.errors == []  # no "something went wrong": the answer is all there
    assert server.texts(GROUP_ID) == ["Hello world!"]
    assert next(c.status for c in server.calls if c.method == "editMessageText") == 400


async def test_dm_stream_uses_drafts_then_sends_the_final_message(
    make: Factory, server: FakeTelegramServer, script: Script, clock: TickingClock
) -> None:
    async def on(event: Event) -> None:
        chunks = ["**Hel", "lo**", " there"]
        ref = await adapter.stream(event, ticking(clock, chunks, 1.0))
        assert ref is not None

    script.on = on
    adapter = await make(edit_interval=1.0)
    server.push_update(message(42, ADA, "hi", message_id=3))
    await script.handled(1)
    drafts = server.calls_to("sendMessageDraft")
    assert [(d["text"], d["parse_mode"]) for d in drafts] == [
        ("**Hel", "HTML"),
        ("<b>Hello</b>", "HTML"),
        ("<b>Hello</b> there", "HTML"),
    ]
    assert len({d["draft_id"] for d in drafts}) == 1
    assert server.texts(42) == ["<b>Hello</b> there"]
    assert script.errors == []


# An older self-hosted Bot API server answers 404 for a method it does not know.
@pytest.mark.parametrize(
    ("status", "description"), [(404, "Not Found"), (400, "Bad Request: method is unavailable")]
)
async def test_dm_stream_falls_back_to_edits_when_drafts_are_refused(
    make: Factory,
    server: FakeTelegramServer,
    script: Script,
    clock: TickingClock,
    status: int,
    description: str,
) -> None:
    async def on(event: Event) -> None:
        await adapter.stream(event, ticking(clock, ["one", " two"], 2.0))

    script.on = on
    adapter = await make()
    server.fail("sendMessageDraft", status, description)
    server.push_update(message(42, ADA, "hi", message_id=3))
    await script.handled(1)
    assert [m for m in server.methods() if m.startswith(("send", "edit"))][-2:] == [
        "sendMessage",
        "editMessageText",
    ]
    assert server.texts(42) == ["one two"]


async def test_long_stream_is_split_between_words(
    make: Factory, server: FakeTelegramServer, script: Script, clock: TickingClock
) -> None:
    words = [f"w{i:04d}" for i in range(1000)]  # 5999 characters with spaces
    text = " ".join(words)
    chunks = [text[i : i + 1000] for i in range(0, len(text), 1000)]

    async def on(event: Event) -> None:
        await adapter.stream(event, ticking(clock, chunks, 5.0))

    script.on = on
    adapter = await make()
    server.push_update(message(GROUP_ID, ADA, "@byok_test_bot long", message_id=3))
    await script.handled(1)
    parts = server.texts(GROUP_ID)
    assert [len(p) <= 4096 for p in parts] == [True, True]
    assert " ".join(parts).split() == words
    assert [c.method for c in server.calls if c.method in ("sendMessage", "editMessageText")] == [
        "sendMessage",
        "editMessageText",
        "editMessageText",
        "editMessageText",
        "editMessageText",
        "sendMessage",
        "editMessageText",
    ]


async def test_stream_failure_keeps_what_was_shown_and_reraises(
    make: Factory, server: FakeTelegramServer, script: Script, clock: TickingClock
) -> None:
    async def chunks() -> AsyncIterator[str]:
        yield "partial answer"
        clock.now += 0.1
        yield " and more"
        raise RuntimeError("agent crashed")

    async def on(event: Event) -> None:
        await adapter.stream(event, chunks())

    script.on = on
    adapter = await make()
    server.push_update(message(42, ADA, "hi", message_id=3))
    await script.handled(1)
    assert [str(e) for e in script.errors] == ["agent crashed"]
    # The draft vanished, so what had arrived is persisted as a message.
    assert server.texts(42) == ["partial answer and more"]


async def test_markdown_refused_by_telegram_falls_back_to_plain_text(
    make: Factory, server: FakeTelegramServer, script: Script
) -> None:
    async def on(event: Event) -> None:
        await adapter.respond(event, Reply("**Bold** claim", format=TextFormat.MARKDOWN))

    script.on = on
    adapter = await make()
    server.fail("sendMessage", 400, "Bad Request: can't parse entities: unexpected end tag")
    server.push_update(message(42, ADA, "hi", message_id=3))
    await script.handled(1)
    assert server.texts(42) == ["**Bold** claim"]
    assert script.errors == []


async def test_typing_indicator(make: Factory, server: FakeTelegramServer) -> None:
    adapter = await make()
    await adapter.typing(ChatRef(Platform.TELEGRAM, str(GROUP_ID), is_direct=False, thread_id="7"))
    assert server.calls_to("sendChatAction") == [
        {"chat_id": str(GROUP_ID), "action": "typing", "message_thread_id": "7"}
    ]


# ----- rate limits and blocked users -------------------------------------------------------


async def test_429_storm_is_retried_without_loss(make: Factory, server: FakeTelegramServer) -> None:
    adapter = await make()
    server.fail(
        "sendMessage", 429, "Too Many Requests: retry after 0.05", times=4, retry_after=0.05
    )
    chats = [ChatRef(Platform.TELEGRAM, str(100 + i), is_direct=True) for i in range(6)]
    refs = await asyncio.gather(*(adapter.send(c, Reply(f"notice {c.id}")) for c in chats))
    assert all(r is not None for r in refs)
    assert [server.texts(c.id) for c in chats] == [[f"notice {c.id}"] for c in chats]
    assert len(server.calls_to("sendMessage", ok_only=False)) == 10


async def test_blocked_user_marks_the_chat_unreachable_without_crashing(
    make: Factory, server: FakeTelegramServer, script: Script
) -> None:
    adapter = await make()
    server.fail("sendMessage", 403, "Forbidden: bot was blocked by the user", chat_id=99)
    blocked = ChatRef(Platform.TELEGRAM, "99", is_direct=True)
    fine = ChatRef(Platform.TELEGRAM, "98", is_direct=True)
    assert await adapter.send(blocked, Reply("your agent is ready")) is None
    assert await adapter.send(fine, Reply("your agent is ready")) is not None
    assert adapter.unreachable_chats == frozenset({"99"})
    # A broadcast does not knock on the blocked chat again.
    assert await adapter.send(blocked, Reply("maintenance tonight")) is None
    assert len(server.calls_to("sendMessage", ok_only=False)) == 2
    # Cy unblocks the bot and writes: the chat is reachable again.
    server.push_update(message(99, tg_user(99, "Cy", "cy"), "I'm back", message_id=1))
    await script.handled(1)
    assert adapter.unreachable_chats == frozenset()
    assert await adapter.send(blocked, Reply("welcome back")) is not None
    assert server.texts(99) == ["welcome back"]


def tg_ref(user_id: int) -> UserRef:
    return UserRef(Platform.TELEGRAM, str(user_id), "x")


def bot_status(user: dict[str, Any], status: str) -> dict[str, Any]:
    new: dict[str, Any] = {
        "status": status,
        "user": {"id": 777000111, "is_bot": True, "first_name": "BYOK"},
    }
    if status == "kicked":
        new["until_date"] = 0
    return {
        "my_chat_member": {
            "chat": {"id": user["id"], "type": "private", "first_name": user["first_name"]},
            "from": user,
            "date": 1780000000,
            "old_chat_member": {**new, "status": "member"},
            "new_chat_member": new,
        }
    }


async def test_blocking_is_noticed_before_any_send_fails(
    make: Factory, server: FakeTelegramServer, script: Script
) -> None:
    adapter = await make()
    dm = ChatRef(Platform.TELEGRAM, "42", is_direct=True)
    server.push_update(bot_status(ADA, "kicked"))
    await server.wait_for(lambda: adapter.unreachable_chats == frozenset({"42"}))
    assert await adapter.send(dm, Reply("weekly summary")) is None
    server.push_update(bot_status(ADA, "member"))
    await server.wait_for(lambda: adapter.unreachable_chats == frozenset())
    assert await adapter.send(dm, Reply("weekly summary")) is not None
    assert script.events == []  # membership changes are not events for the router
    assert server.texts(42) == ["weekly summary"]


async def test_other_send_errors_are_wrapped(make: Factory, server: FakeTelegramServer) -> None:
    adapter = await make()
    server.fail("sendMessage", 400, "Bad Request: chat not found")
    with pytest.raises(TelegramRequestRejected) as info:
        await adapter.send(ChatRef(Platform.TELEGRAM, "5", is_direct=True), Reply("x"))
    assert str(info.value) == "sendMessage: Chat not found"


# ----- deduplication -----------------------------------------------------------------------


async def test_redelivered_update_is_processed_once(
    make: Factory, server: FakeTelegramServer, script: Script
) -> None:
    await make()
    body = message(42, ADA, "once", message_id=4)
    uid = server.push_update(body)
    await script.handled(1)
    server.redeliver(uid, body)
    server.push_update(message(42, ADA, "twice", message_id=5))
    await script.handled(2)
    await server.wait_calls("getUpdates", len(server.calls_to("getUpdates")) + 1)
    assert [e.text for e in script.events] == ["once", "twice"]


# ----- the token never shows -----------------------------------------------------------------


async def test_token_never_appears_in_logs_or_messages(
    make: Factory, server: FakeTelegramServer, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    # httpx at INFO (it prints request URLs), everything else at DEBUG; the handler level
    # follows the last call, so DEBUG comes last.
    caplog.set_level(logging.INFO, logger="httpx")
    caplog.set_level(logging.DEBUG)

    async def on(event: Event) -> None:
        await adapter.respond(event, Reply(f"you said {event.text}"))
        raise RuntimeError(f"handler blew up with {adapter!r}")

    script.on = on
    adapter = await make()
    server.fail("sendMessage", 429, "Too Many Requests", retry_after=0.05)
    server.push_update(message(42, ADA, "hello", message_id=1))
    await script.handled(1)
    server.fail("sendMessage", 403, "Forbidden: bot was blocked by the user", chat_id=77)
    assert await adapter.send(ChatRef(Platform.TELEGRAM, "77", is_direct=True), Reply("x")) is None
    server.fail("deleteMessage", 400, "Bad Request: message to delete not found")
    assert await adapter.delete(ChatRef(Platform.TELEGRAM, "42", is_direct=True), "1") is False
    logging.getLogger("telegram.ext.ExtBot").debug("bot is %r", adapter._bot)
    await adapter.stop()

    # A rejected token: python-telegram-bot's InvalidToken message quotes it.
    wrong = "5550001234:AAE-other-canary-token-rejected-0123"
    settings = PlatformSettings("telegram", True, {"api_base_url": server.base_url})
    rejected = TelegramAdapter(parse(settings, {"TELEGRAM_BOT_TOKEN": wrong}))
    with pytest.raises(TelegramLoginError) as info:
        await rejected.start(script)
    assert wrong not in str(info.value)

    assert '/getUpdates "HTTP/1.1 200 OK"' in caplog.text  # httpx request lines captured
    assert "Calling Bot API endpoint `getMe`" in caplog.text  # and the SDK DEBUG lines
    assert "sendMessage answered 429; retrying" in caplog.text  # so was the scheduler's retry
    outgoing = str([c.params for c in server.calls])
    for canary in (TOKEN, TOKEN.partition(":")[2], wrong, wrong.partition(":")[2]):
        assert canary not in caplog.text
        assert canary not in outgoing
    assert [str(e).startswith("handler blew up with TelegramAdapter(") for e in script.errors] == [
        True
    ]


async def test_image_with_a_short_text_is_one_captioned_photo(
    make: Factory, server: FakeTelegramServer
) -> None:
    adapter = await make()
    chat = ChatRef(Platform.TELEGRAM, "42", is_direct=True)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    reply = Reply("Scan **this**", format=TextFormat.MARKDOWN, image=png, sensitive=True)
    assert await adapter.send(chat, reply) is not None
    (photo,) = server.calls_to("sendPhoto")
    assert photo["caption"] == "Scan <b>this</b>"
    assert (photo["parse_mode"], photo["protect_content"]) == ("HTML", "true")
    assert photo["photo"]["size"] == len(png)
    assert server.calls_to("sendMessage") == []


async def test_group_upgraded_to_supergroup_is_followed(
    make: Factory, server: FakeTelegramServer
) -> None:
    adapter = await make()
    server.fail(
        "sendMessage",
        400,
        "Bad Request: group chat was upgraded to a supergroup chat",
        migrate_to=-1009999,
    )
    old = ChatRef(Platform.TELEGRAM, "-4242", is_direct=False)
    ref = await adapter.send(old, Reply("hello team"))
    assert ref == MessageRef(ChatRef(Platform.TELEGRAM, "-1009999", is_direct=False), ref.id)
    assert server.texts(-1009999) == ["hello team"]


async def test_typing_is_not_repeated_while_it_still_shows(
    make: Factory, server: FakeTelegramServer, clock: TickingClock
) -> None:
    adapter = await make()
    chat = ChatRef(Platform.TELEGRAM, "42", is_direct=True)
    await adapter.typing(chat)
    await adapter.typing(chat)
    clock.now += 4.5
    await adapter.typing(chat)
    assert len(server.calls_to("sendChatAction")) == 2


async def test_long_dm_stream_with_drafts_sends_each_part_once(
    make: Factory, server: FakeTelegramServer, script: Script, clock: TickingClock
) -> None:
    words = [f"w{i:04d}" for i in range(1000)]
    text = " ".join(words)
    chunks = [text[i : i + 1000] for i in range(0, len(text), 1000)]

    async def on(event: Event) -> None:
        await adapter.stream(event, ticking(clock, chunks, 5.0))

    script.on = on
    adapter = await make()
    server.push_update(message(42, ADA, "long please", message_id=3))
    await script.handled(1)
    parts = server.texts(42)
    assert [utf16_len(p) <= 4096 for p in parts] == [True, True]
    assert " ".join(parts).split() == words
    assert server.calls_to("editMessageText") == []
    draft_ids = [d["draft_id"] for d in server.calls_to("sendMessageDraft")]
    assert len(draft_ids) == 6  # one per chunk: every chunk came after the pace
    assert len(set(draft_ids)) == 2  # a new draft for the second message


async def test_group_stream_failure_keeps_everything_that_arrived(
    make: Factory, server: FakeTelegramServer, script: Script, clock: TickingClock
) -> None:
    async def chunks() -> AsyncIterator[str]:
        yield "first part"
        yield ", second part"
        raise RuntimeError("connection reset")

    async def on(event: Event) -> None:
        await adapter.stream(event, chunks())

    script.on = on
    adapter = await make()
    server.push_update(message(GROUP_ID, ADA, "@byok_test_bot go", message_id=3))
    await script.handled(1)
    assert [str(e) for e in script.errors] == ["connection reset"]
    assert server.texts(GROUP_ID) == ["first part, second part"]
    assert [p["text"] for p in server.calls_to("editMessageText")] == ["first part, second part"]


async def test_typing_is_refreshed_while_the_agent_thinks(
    make: Factory, server: FakeTelegramServer, script: Script
) -> None:
    def typing_calls() -> int:
        return len(server.calls_to("sendChatAction"))

    async def slow_agent() -> AsyncIterator[str]:
        # The first token only comes once "typing..." was shown three times.
        await server.wait_for(lambda: typing_calls() >= 3)
        yield "done thinking"

    async def on(event: Event) -> None:
        await adapter.stream(event, slow_agent())

    script.on = on
    adapter = await make(typing_refresh=0.05)
    server.push_update(message(GROUP_ID, ADA, "@byok_test_bot think hard", message_id=3))
    await script.handled(1)
    assert script.errors == []
    assert server.texts(GROUP_ID) == ["done thinking"]
    methods = [m for m in server.methods() if m in ("sendChatAction", "sendMessage")]
    assert methods[:4] == ["sendChatAction"] * 3 + ["sendMessage"]


async def test_edits_fall_back_to_plain_text_and_ignore_unchanged_text(
    make: Factory, server: FakeTelegramServer
) -> None:
    adapter = await make()
    chat = ChatRef(Platform.TELEGRAM, "42", is_direct=True)
    ref = await adapter.send(chat, Reply("draft"))
    assert ref is not None
    server.fail("editMessageText", 400, "Bad Request: can't parse entities: bad tag")
    await adapter.edit(ref, Reply("**final** text", format=TextFormat.MARKDOWN))
    assert server.texts(42) == ["**final** text"]
    server.fail("editMessageText", 400, "Bad Request: message is not modified")
    await adapter.edit(ref, Reply("**final** text"))
    server.fail("editMessageText", 400, "Bad Request: message to edit not found")
    with pytest.raises(TelegramRequestRejected):
        await adapter.edit(ref, Reply("gone"))


async def test_server_errors_are_wrapped_and_deletion_reports_false(
    make: Factory, server: FakeTelegramServer, caplog: pytest.LogCaptureFixture
) -> None:
    adapter = await make(rate_limit_retries=0)
    chat = ChatRef(Platform.TELEGRAM, "42", is_direct=True)
    server.fail("sendMessage", 502, "Bad Gateway")
    with pytest.raises(TelegramUnavailable):
        await adapter.send(chat, Reply("hello"))
    server.fail("sendMessage", 429, "Too Many Requests", retry_after=0.05)
    limited = REGISTRY.get_sample_value(
        "byokbot_platform_rate_limited_total", {"platform": "telegram"}
    )
    with pytest.raises(TelegramRateLimited):
        await adapter.send(chat, Reply("hello"))
    # One 429 answer, counted once (by the scheduler, not again when it is wrapped).
    assert (
        REGISTRY.get_sample_value("byokbot_platform_rate_limited_total", {"platform": "telegram"})
        == (limited or 0.0) + 1
    )
    server.fail("deleteMessage", 502, "Bad Gateway")
    caplog.set_level(logging.INFO, logger="adapters.telegram.adapter")
    assert await adapter.delete(chat, "7") is False
    assert "telegram: deleting message 7 in chat 42 failed: NetworkError" in caplog.text
    server.fail("sendChatAction", 403, "Forbidden: bot was blocked by the user")
    await adapter.typing(chat)  # logged, not raised
    assert adapter.unreachable_chats == frozenset({"42"})


async def test_text_held_back_by_the_pace_is_shown_when_its_turn_comes(
    make: Factory,
    server: FakeTelegramServer,
    script: Script,
    clock: TickingClock,
    sleep: HeldSleep,
) -> None:
    def edits() -> list[str]:
        return [p["text"] for p in server.calls_to("editMessageText")]

    async def chunks() -> AsyncIterator[str]:
        yield "Let me think"
        yield " about it..."  # too early for an edit: held back
        # The model pauses; a second passes.
        clock.now += 1.0
        sleep.release()
        await server.wait_for(lambda: edits() == ["Let me think about it..."])
        yield " Done."

    async def on(event: Event) -> None:
        await adapter.stream(event, chunks())

    script.on = on
    adapter = await make(group_edit_interval=1.0)
    server.push_update(message(GROUP_ID, ADA, "@byok_test_bot think", message_id=3))
    await script.handled(1)
    assert [p["text"] for p in sent(server, GROUP_ID)] == ["Let me think"]
    assert edits() == ["Let me think about it...", "Let me think about it... Done."]
