"""Scenarios in Socket Mode: the real slack-bolt app against the loopback fake, as transcripts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any

import pytest

from adapters.slack import SlackAdapter, SlackStartError
from adapters.slack.config import parse
from core.chat import (
    OPEN_DM_PAYLOAD,
    Button,
    ChatRef,
    Event,
    EventKind,
    Outcome,
    Platform,
    Reply,
)
from core.config import PlatformSettings
from tests.fakes.slack_server import (
    APP_TOKEN,
    BOT_TOKEN,
    BOT_USER,
    PROXY_VARS,
    USER_TOKEN,
    FakeSlack,
    ManualSleep,
    ScriptedBot,
    anthropic_key,
    block_action,
    event_callback,
    home_opened,
    message,
    slack_env,
    slash,
    view_submission,
)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    server = FakeSlack(valid_tokens={BOT_TOKEN, APP_TOKEN, USER_TOKEN})
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def bot() -> ScriptedBot:
    return ScriptedBot()


def make_adapter(fake: FakeSlack, bot: ScriptedBot, **options: Any) -> SlackAdapter:
    settings = PlatformSettings(
        name="slack",
        enabled=True,
        options=MappingProxyType(
            {"api_base_url": fake.base_url, "user_token_env": "SLACK_USER_TOKEN", **options}
        ),
    )
    adapter = SlackAdapter(parse(settings, slack_env()), monotonic=bot.now, sleep=ManualSleep())
    bot.messenger = adapter
    return adapter


@pytest.fixture
async def adapter(fake: FakeSlack, bot: ScriptedBot) -> AsyncIterator[SlackAdapter]:
    slack = make_adapter(fake, bot)
    await slack.start(bot)
    yield slack
    await slack.stop()


async def test_start_checks_the_token_and_opens_a_socket(
    fake: FakeSlack, adapter: SlackAdapter
) -> None:
    assert fake.connected.is_set()
    assert fake.methods()[:2] == ["auth.test", "apps.connections.open"]
    assert [c.token for c in fake.calls[:2]] == [BOT_TOKEN, APP_TOKEN]
    assert adapter.bot_user_id == BOT_USER


async def test_a_refused_bot_token_stops_start_up_with_a_clear_error(
    fake: FakeSlack, bot: ScriptedBot
) -> None:
    fake.fail("auth.test", "invalid_auth")
    slack = make_adapter(fake, bot)
    with pytest.raises(
        Exception, match="Slack refused the bot token in SLACK_BOT_TOKEN: invalid_auth"
    ):
        await slack.start(bot)


async def test_onboarding_in_the_app_dm_with_plan_buttons(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    # Alice: /byok start   (in her DM with the app)
    ack = await fake.envelope("slash_commands", slash("start", channel="DUALICE"))
    await adapter.drain()
    assert ack == {}
    assert [(e.kind, e.command, e.chat.is_direct) for e in bot.events] == [
        (EventKind.COMMAND, "start", True)
    ]
    posted = fake.calls_to("chat.postMessage")
    assert len(posted) == 1
    assert posted[0]["channel"] == "DUALICE"
    assert posted[0]["text"] == "Welcome! Pick a plan:"
    buttons = posted[0]["blocks"][1]["elements"]
    assert [(b["text"]["text"], b["value"], b.get("style")) for b in buttons] == [
        ("BYOK $15", "plan:byok", "primary"),
        ("Managed $39", "plan:managed", None),
    ]
    # Alice presses "BYOK $15"
    await fake.envelope("interactive", block_action("plan:byok", action_id=buttons[0]["action_id"]))
    await adapter.drain()
    assert (bot.events[-1].kind, bot.events[-1].payload) == (EventKind.BUTTON, "plan:byok")
    assert bot.events[-1].message_id == "1700000000.000001"
    assert fake.calls_to("chat.postMessage")[-1]["text"] == "You are on byok."


async def test_a_slash_command_in_a_channel_is_answered_ephemerally(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    await fake.envelope(
        "slash_commands", slash("START", channel="C0GENERAL", response_url=fake.response_url("r1"))
    )
    await adapter.drain()
    assert bot.events[0].chat.is_direct is False
    assert bot.events[0].command == "start"
    assert fake.calls_to("chat.postMessage") == []
    [(name, body)] = fake.responses
    assert name == "r1"
    assert body["response_type"] == "ephemeral"
    assert body["text"] == "Welcome! Pick a plan:"


async def test_key_modal_round_trip(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    canary = anthropic_key("Q")
    # Alice: /byok key add anthropic
    await fake.envelope("slash_commands", slash("key add anthropic", trigger="trig.key1"))
    await adapter.drain()
    [opened] = fake.calls_to("views.open")
    assert opened["trigger_id"] == "trig.key1"
    view = opened["view"]
    assert view["callback_id"] == "byok_secret"
    assert view["title"]["text"] == "Add Anthropic key"
    assert "intake-token-123" in view["private_metadata"]
    # She pastes something that is not a key: the modal shows the error and stays open
    ack = await fake.envelope(
        "interactive", view_submission(view, "hello"), accepts_response_payload=True
    )
    assert ack == {
        "response_action": "errors",
        "errors": {"byok_secret_block": "That is not an Anthropic key (sk-ant-…)."},
    }
    # Then a valid key: the modal closes and the DM confirms with the fingerprint only
    ack = await fake.envelope(
        "interactive", view_submission(view, f"  {canary}\n"), accepts_response_payload=True
    )
    await adapter.drain()
    assert ack == {}
    secret_events = [e for e in bot.events if e.kind is EventKind.SECRET]
    assert [e.intake_token for e in secret_events] == ["intake-token-123"] * 2
    assert all(e.via_modal for e in secret_events)
    assert secret_events[1].secret is not None
    assert secret_events[1].secret.reveal() == canary
    assert fake.calls_to("chat.postMessage")[-1]["text"] == "Key saved: sk-ant-…QQQQ"
    assert fake.calls_to("chat.postMessage")[-1]["channel"] == "DUALICE"
    assert canary not in fake.outgoing_text()


async def test_a_saved_key_the_dm_cannot_confirm_is_confirmed_in_the_form(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    canary = anthropic_key("Q")
    await fake.envelope("slash_commands", slash("key add anthropic", trigger="trig.key1"))
    await adapter.drain()
    [opened] = fake.calls_to("views.open")
    fake.fail("chat.postMessage", "channel_not_found")  # the DM will not take the answer
    ack = await fake.envelope(
        "interactive", view_submission(opened["view"], canary), accepts_response_payload=True
    )
    await adapter.drain()
    assert ack["response_action"] == "update"
    assert ack["view"]["blocks"][0]["text"]["text"] == "Key saved: sk-ant-…QQQQ"
    assert canary not in fake.outgoing_text()


async def test_a_slow_key_check_updates_the_modal_instead_of_timing_out(
    fake: FakeSlack, bot: ScriptedBot
) -> None:
    bot.secret_delay = 0.2
    slack = make_adapter(fake, bot)
    slack._ack_budget = 0.05
    await slack.start(bot)
    try:
        await fake.envelope("slash_commands", slash("key add anthropic"))
        await slack.drain()
        view = {**fake.calls_to("views.open")[0]["view"], "id": "V0042"}
        ack = await fake.envelope(
            "interactive", view_submission(view, "nope"), accepts_response_payload=True
        )
        assert ack["response_action"] == "update"
        assert ack["view"]["blocks"][0]["text"]["text"] == "Checking your key…"
        await slack.drain()
        [update] = fake.calls_to("views.update")
        assert update["view_id"] == "V0042"
        blocks = update["view"]["blocks"]
        assert [b["type"] for b in blocks] == ["section", "context", "input"]
        assert blocks[1]["elements"][0]["text"] == "That is not an Anthropic key (sk-ant-…)."
    finally:
        await slack.stop()


async def test_a_slow_refusal_after_the_modal_was_closed_reopens_it_from_the_dm(
    fake: FakeSlack, bot: ScriptedBot
) -> None:
    bot.secret_delay = 0.2
    slack = make_adapter(fake, bot)
    slack._ack_budget = 0.05
    await slack.start(bot)
    try:
        await fake.envelope("slash_commands", slash("key add anthropic"))
        await slack.drain()
        view = {**fake.calls_to("views.open")[0]["view"], "id": "V0042"}
        fake.fail("views.update", "not_found")  # the person closed the "checking" window
        await fake.envelope(
            "interactive", view_submission(view, "nope"), accepts_response_payload=True
        )
        await slack.drain()
        dm = fake.calls_to("chat.postMessage")[-1]
        assert dm["channel"] == "DUALICE"
        assert "That is not an Anthropic key (sk-ant-…)." in dm["text"]
        assert dm["blocks"][1]["elements"][0]["action_id"] == "byok_secret_open"
    finally:
        await slack.stop()


async def test_closing_the_key_modal_ends_the_request_for_that_person(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    await fake.envelope("slash_commands", slash("key add anthropic"))
    await adapter.drain()
    view = {**fake.calls_to("views.open")[0]["view"], "id": "V0042"}
    assert view["notify_on_close"] is True  # else Slack never says the modal was closed
    closed = {
        "type": "view_closed",
        "user": {"id": "UALICE", "username": "ualice"},
        "api_app_id": "A0BYOK",
        "view": view,
        "is_cleared": False,
    }
    await fake.envelope("interactive", closed, accepts_response_payload=True)
    await adapter.drain()
    event = bot.events[-1]
    assert event.kind is EventKind.SECRET_CANCELLED
    assert event.user.id == "UALICE" and event.chat.id == "DUALICE"
    assert event.intake_token == "intake-token-123"


async def test_without_a_trigger_the_key_form_is_offered_by_a_dm_button(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    fake.fail("views.open", "expired_trigger_id")
    await fake.envelope("slash_commands", slash("key add anthropic"))
    await adapter.drain()
    dm = fake.calls_to("chat.postMessage")[-1]
    assert dm["channel"] == "DUALICE"
    button = dm["blocks"][1]["elements"][0]
    assert button["action_id"] == "byok_secret_open"
    assert "intake-token-123" not in dm["text"]
    # Pressing it opens the modal with the same intake token
    await fake.envelope(
        "interactive",
        block_action(button["value"], action_id="byok_secret_open", trigger="trig.open"),
    )
    await adapter.drain()
    opened = fake.calls_to("views.open")[-1]
    assert opened["trigger_id"] == "trig.open"
    assert '"t":"intake-token-123"' in opened["view"]["private_metadata"]
    assert [e.kind for e in bot.events] == [EventKind.COMMAND]


async def test_a_key_form_asked_for_in_a_channel_that_goes_to_the_dm_says_so_there(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    fake.fail("views.open", "expired_trigger_id")
    await fake.envelope(
        "slash_commands",
        slash("key add anthropic", channel="C0GENERAL", response_url=fake.response_url("k")),
    )
    await adapter.drain()
    dm = fake.calls_to("chat.postMessage")[-1]
    assert dm["channel"] == "DUALICE"
    assert dm["blocks"][1]["elements"][0]["action_id"] == "byok_secret_open"
    assert any("sent you a button in our DM" in str(r) for r in fake.responses)


async def test_a_key_button_whose_form_cannot_open_says_to_press_again(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    fake.fail("views.open", "expired_trigger_id", times=2)
    await fake.envelope("slash_commands", slash("key add anthropic"))
    await adapter.drain()
    button = fake.calls_to("chat.postMessage")[-1]["blocks"][1]["elements"][0]
    await fake.envelope(
        "interactive",
        block_action(button["value"], action_id="byok_secret_open", trigger="trig.late"),
    )
    await adapter.drain()
    told = fake.calls_to("chat.postMessage")[-1]
    assert told["channel"] == "DUALICE"
    assert "Press *Enter key privately* again" in told["text"]


async def test_app_home_is_published_and_refreshed_after_a_change(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    opened = event_callback(home_opened(), event_id="Ev0HOME")
    await fake.envelope("events_api", opened)
    await adapter.drain()
    assert [(e.command, e.chat.id) for e in bot.events] == [
        ("status", "DUALICE"),
        ("usage", "DUALICE"),
    ]
    [first] = fake.calls_to("views.publish")  # one view with every answer
    assert first["user_id"] == "UALICE"
    assert first["view"]["type"] == "home"
    sections = [b["text"]["text"] for b in first["view"]["blocks"] if b["type"] == "section"]
    assert sections == ["Plan: none\nKey: none", "Usage: 0 tokens this month"]
    shortcuts = first["view"]["blocks"][-1]["elements"]
    assert [s["value"] for s in shortcuts] == ["plan", "key add", "model", "usage", "help"]
    # A plan button pressed in the DM changes the plan; the Home tab follows
    await fake.envelope("interactive", block_action("plan:managed"))
    await adapter.drain()
    publishes = fake.calls_to("views.publish")
    assert len(publishes) == 2
    assert publishes[1]["view"]["blocks"][0]["text"]["text"] == "Plan: managed\nKey: none"
    # A redelivered app_home_opened is not answered twice
    await fake.envelope("events_api", opened)
    await adapter.drain()
    assert len(fake.calls_to("views.publish")) == 2


async def test_a_home_shortcut_opens_the_key_modal_from_the_home_tab(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    await fake.envelope(
        "interactive",
        block_action("key add", action_id="byok_cmd:s0:1", channel=None, trigger="trig.home"),
    )
    await adapter.drain()
    event = bot.events[0]
    assert (event.kind, event.command, event.args) == (EventKind.COMMAND, "key", ("add",))
    assert (event.chat.id, event.chat.is_direct) == ("DUALICE", True)
    assert fake.calls_to("views.open")[0]["trigger_id"] == "trig.home"


async def test_leak_guard_in_a_channel(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    canary = anthropic_key("L")
    fake.fail("chat.delete", "cant_delete_message")  # the bot token may not delete Alice's post
    leaked = message(f"my key is {canary}", channel="C0GENERAL", channel_type="channel")
    await fake.envelope("events_api", event_callback(leaked))
    await adapter.drain()
    event = bot.events[0]
    assert (event.addressed, event.chat.is_direct, event.message_id) == (
        False,
        False,
        "1700000100.000100",
    )
    deletes = [(c.args["ts"], c.token) for c in fake.calls if c.method == "chat.delete"]
    assert deletes == [("1700000100.000100", BOT_TOKEN), ("1700000100.000100", USER_TOKEN)]
    assert bot.deleted == [True]
    [warning] = fake.calls_to("chat.postEphemeral")
    assert (warning["channel"], warning["user"]) == ("C0GENERAL", "UALICE")
    assert warning["text"] == "That was an API key: I deleted it. Rotate it now."
    assert fake.calls_to("chat.postMessage") == []
    assert canary not in fake.outgoing_text()


async def test_leak_guard_reports_a_refused_deletion(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail("chat.delete", "cant_delete_message", times=2)
    caplog.set_level(logging.INFO, logger="adapters.slack")
    leaked = message(anthropic_key("M"), channel="C0GENERAL", channel_type="channel")
    await fake.envelope("events_api", event_callback(leaked))
    await adapter.drain()
    assert bot.deleted == [False]
    assert "Slack refused to delete a message in C0GENERAL (cant_delete_message)" in caplog.text


async def test_agent_chat_in_the_dm_streams_with_paced_edits(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    # The scripted agent yields a chunk every 0.4 s of (fake) time; edits are 1 s apart.
    bot.chunks = ("One", " two", " three", " four", " five", " six")
    await fake.envelope("events_api", event_callback(message("hi there")))
    await adapter.drain()
    assert bot.events[0].text == "hi there"
    [placeholder] = fake.calls_to("chat.postMessage")
    assert (placeholder["channel"], placeholder["text"]) == ("DUALICE", "_thinking…_")
    assert "thread_ts" not in placeholder
    edits = [u["text"] for u in fake.calls_to("chat.update")]
    assert edits == [
        "One",  # t=0.4: first text shows at once
        "One two three four",  # t=1.6
        "One two three four five six",  # the final edit
    ]


async def test_a_mention_in_a_channel_is_answered_in_a_thread_once(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    text = f"<@{BOT_USER}> what is 2 &amp; 2?"
    ts = "1700000200.000200"
    mention = message(text, channel="C0GENERAL", ts=ts, kind="app_mention")
    plain = message(text, channel="C0GENERAL", ts=ts, channel_type="channel")
    await fake.envelope("events_api", event_callback(mention))
    await fake.envelope("events_api", event_callback(plain))  # the same post, as message.channels
    await adapter.drain()
    assert [(e.text, e.addressed, e.chat.thread_id) for e in bot.events] == [
        ("what is 2 & 2?", True, ts)
    ]
    assert {c["thread_ts"] for c in fake.calls_to("chat.postMessage")} == {ts}


async def test_a_redelivered_event_is_processed_once(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    body = event_callback(message("hello"), event_id="Ev0SAME")
    await fake.envelope("events_api", body)
    await fake.envelope("events_api", body)
    await adapter.drain()
    assert len(bot.events) == 1


async def test_bot_own_messages_and_system_subtypes_are_ignored(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    own = message("echo", user=BOT_USER)
    joined = {
        **message("joined", channel="C0GENERAL", channel_type="channel"),
        "subtype": "channel_join",
    }
    await fake.envelope("events_api", event_callback(own))
    await fake.envelope("events_api", event_callback(joined))
    await adapter.drain()
    assert bot.events == []


async def test_rate_limited_calls_are_retried_after_retry_after(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    fake.fail("chat.postMessage", "ratelimited", status=429, headers={"Retry-After": "0"})
    await fake.envelope("slash_commands", slash("start", channel="DUALICE"))
    await adapter.drain()
    posts = fake.calls_to("chat.postMessage")
    assert len(posts) == 2
    assert posts[1]["text"] == "Welcome! Pick a plan:"


async def test_the_open_dm_button_links_to_the_app_dm(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    await fake.envelope("slash_commands", slash("help", channel="DUALICE"))  # names the app
    await adapter.drain()
    reply = Reply(text="Open our DM", buttons=((Button("Open DM", OPEN_DM_PAYLOAD),),))
    await adapter.send(ChatRef(platform=Platform.SLACK, id="C0GENERAL", is_direct=False), reply)
    [link] = fake.calls_to("chat.postMessage")[-1]["blocks"][1]["elements"]
    assert link["url"] == "https://slack.com/app_redirect?app=A0BYOK&team=T0TEST"
    # Slack reports the press of a link button too; it is acknowledged and not an event
    ack = await fake.envelope("interactive", block_action("", action_id=link["action_id"]))
    await adapter.drain()
    assert ack == {}
    assert [e.command for e in bot.events] == ["help"]


async def test_a_refused_app_token_stops_start_up_instead_of_retrying_forever(
    fake: FakeSlack, bot: ScriptedBot
) -> None:
    fake.fail("apps.connections.open", "invalid_auth")
    slack = make_adapter(fake, bot)
    with pytest.raises(SlackStartError) as caught:
        await slack.start(bot)
    assert str(caught.value) == "Slack refused the app token in SLACK_APP_TOKEN: invalid_auth"
    assert fake.methods() == ["auth.test", "apps.connections.open"]
    await slack.stop()


async def test_every_request_is_acknowledged_before_the_work_is_done(
    fake: FakeSlack, bot: ScriptedBot
) -> None:
    release = asyncio.Event()
    seen: list[str] = []

    async def slow(event: Event) -> Outcome:
        seen.append(event.command)
        await release.wait()  # the handler is still busy when Slack gets its ack
        return Outcome()

    slack = make_adapter(fake, bot)
    await slack.start(slow)
    try:
        ack = await fake.envelope("slash_commands", slash("status"))
        assert ack == {}
        assert seen == ["status"]
        assert len(slack._tasks) == 1
        release.set()
        await slack.drain()
        assert slack._tasks == set()
    finally:
        await slack.stop()


async def test_a_refused_response_url_falls_back_to_an_ephemeral_message(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    fake.respond_status = 404  # response URLs expire after 30 minutes
    caplog.set_level(logging.INFO, logger="adapters.slack")
    await fake.envelope(
        "slash_commands", slash("help", channel="C0GENERAL", response_url=fake.response_url("x"))
    )
    await adapter.drain()
    assert len(fake.responses) == 1  # tried once, then not again in this turn
    (posted,) = fake.calls_to("chat.postEphemeral")
    assert posted["channel"] == "C0GENERAL"
    assert "Slack response_url failed: http_404" in caplog.text
    assert "Slack event handling failed" not in caplog.text


async def test_an_ephemeral_answer_the_channel_refuses_goes_to_the_dm(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter
) -> None:
    fake.respond_status = 404
    fake.fail("chat.postEphemeral", "not_in_channel")
    await fake.envelope(
        "slash_commands", slash("help", channel="C0GENERAL", response_url=fake.response_url("x"))
    )
    await adapter.drain()
    dms = [p for p in fake.calls_to("chat.postMessage") if str(p["channel"]).startswith("D")]
    assert len(dms) == 1
