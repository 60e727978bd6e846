"""Pure translation, fed payloads shaped like the ones Slack sends (from Slack's samples)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from adapters.slack import translate as t
from core.chat import (
    OPEN_DM_PAYLOAD,
    Button,
    ButtonStyle,
    ChatRef,
    EventKind,
    Platform,
    Reply,
    SecretRequest,
    TextFormat,
)

BOT = "U0BOT"
DM = ChatRef(platform=Platform.SLACK, id="D024BE91L", is_direct=True)

SLASH = {
    "token": "gIkuvaNzQIHg97ATvDxqgjtO",
    "team_id": "T0001",
    "team_domain": "example",
    "enterprise_id": "E0001",
    "enterprise_name": "Globular Construct Inc",
    "channel_id": "C2147483705",
    "channel_name": "test",
    "user_id": "U2147483697",
    "user_name": "Steve",
    "command": "/byok",
    "text": "Key ADD anthropic",
    "response_url": "https://hooks.slack.com/commands/1234/5678",
    "trigger_id": "13345224609.738474920.8088930838d88f008e0",
    "api_app_id": "A123456",
}

MESSAGE_IM = {
    "client_msg_id": "5d2b6a8e-6c24-4c48-9e5e-2b7f7a6c1a11",
    "type": "message",
    "text": "what&#39;s up &lt;3 &amp; see <https://example.com|example.com>",
    "user": "U061F7AUR",
    "ts": "1515449522.000016",
    "team": "T061EG9R6",
    "channel": "D0PNCRP9N",
    "event_ts": "1515449522000016",
    "channel_type": "im",
}

MENTION = {
    "type": "app_mention",
    "user": "W021FGA1Z",
    "text": f"You can count on <@{BOT}> for it",
    "ts": "1515449483.000108",
    "channel": "C123ABC456",
    "event_ts": "1515449483000108",
}

BLOCK_ACTION = {
    "type": "block_actions",
    "team": {"id": "T9TK3CUKW", "domain": "example"},
    "user": {"id": "UA8RXUSPL", "username": "jtorrance", "team_id": "T9TK3CUKW"},
    "api_app_id": "AABA1ABCD",
    "token": "9s8d9as89d8as9d8as989",
    "container": {
        "type": "message_attachment",
        "message_ts": "1548261231.000200",
        "channel_id": "CBR2V3XEX",
        "is_ephemeral": False,
    },
    "trigger_id": "12321423423.333649436676.d8c1bb837935619ccad0f624c448ffb3",
    "channel": {"id": "CBR2V3XEX", "name": "review-updates"},
    "message": {"type": "message", "ts": "1548261231.000200", "thread_ts": "1548261000.000100"},
    "response_url": "https://hooks.slack.com/actions/AABA1ABCD/1232321423432/D09sSasdasdAS9",
    "actions": [
        {
            "action_id": "byok:r0:1",
            "block_id": "byok_r0_0",
            "text": {"type": "plain_text", "text": "Approve", "emoji": True},
            "value": "3fa2c1d0|plan:byok",
            "type": "button",
            "action_ts": "1548426417.840180",
        }
    ],
}


def request() -> SecretRequest:
    return SecretRequest(
        token="tok-abc",
        provider="anthropic",
        title="Add your Anthropic key please",
        prompt="Paste the key",
        expires_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_slash_command_becomes_a_command_event() -> None:
    event = t.command_event(SLASH, is_direct=False)
    assert event.kind is EventKind.COMMAND
    assert (event.command, event.args) == ("key", ("ADD", "anthropic"))
    assert event.text == "/byok Key ADD anthropic"
    assert (event.user.id, event.user.name, event.user.platform) == (
        "U2147483697",
        "Steve",
        Platform.SLACK,
    )
    assert event.chat == ChatRef(platform=Platform.SLACK, id="C2147483705", is_direct=False)
    assert event.event_id == "command:13345224609.738474920.8088930838d88f008e0"


def test_an_empty_slash_command_asks_for_help() -> None:
    event = t.command_event({**SLASH, "text": "  "}, is_direct=True)
    assert (event.command, event.args, event.chat.is_direct) == ("help", (), True)


def test_a_dm_message_is_addressed_and_unescaped() -> None:
    event = t.message_event(MESSAGE_IM, bot_user_id=BOT, event_id="Ev1")
    assert event is not None
    assert event.kind is EventKind.MESSAGE
    assert event.text == "what&#39;s up <3 & see https://example.com"
    assert (event.addressed, event.message_id, event.event_id) == (True, "1515449522.000016", "Ev1")
    assert event.chat == ChatRef(platform=Platform.SLACK, id="D0PNCRP9N", is_direct=True)


def test_a_mention_is_stripped_and_answered_in_a_thread() -> None:
    event = t.message_event(MENTION, bot_user_id=BOT, event_id="Ev2")
    assert event is not None
    assert (event.text, event.addressed) == ("You can count on  for it", True)
    assert event.chat.thread_id == "1515449483.000108"
    assert event.chat.is_direct is False


def test_channel_chatter_is_delivered_unaddressed_without_a_thread() -> None:
    chatter = {**MENTION, "type": "message", "text": "lunch?", "channel_type": "channel"}
    event = t.message_event(chatter, bot_user_id=BOT, event_id="Ev3")
    assert event is not None
    assert (event.addressed, event.chat.thread_id, event.text) == (False, None, "lunch?")


def test_a_reply_in_the_bots_thread_is_addressed() -> None:
    reply = {
        **MENTION,
        "type": "message",
        "text": "and then?",
        "channel_type": "channel",
        "thread_ts": "1515449000.000001",
        "parent_user_id": BOT,
    }
    event = t.message_event(reply, bot_user_id=BOT, event_id="Ev4")
    assert event is not None
    assert (event.addressed, event.chat.thread_id) == (True, "1515449000.000001")


def test_an_edit_reaches_the_leak_guard_but_not_the_agent() -> None:
    edit = {
        "type": "message",
        "subtype": "message_changed",
        "channel": "D0PNCRP9N",
        "channel_type": "im",
        "event_ts": "1515449600.000200",
        "ts": "1515449600.000200",
        "message": {"type": "message", "user": "U061F7AUR", "text": "now with key", "ts": "1.2"},
        "previous_message": {"type": "message", "user": "U061F7AUR", "text": "x", "ts": "1.2"},
    }
    event = t.message_event(edit, bot_user_id=BOT, event_id="Ev5")
    assert event is not None
    assert (event.text, event.addressed, event.message_id) == ("now with key", False, "1.2")
    assert t.message_dedup_key(edit) == "slack:message:D0PNCRP9N:1.2:edit:1515449600.000200"


def test_the_bots_own_streamed_edits_are_not_events() -> None:
    own_edit = {
        "type": "message",
        "subtype": "message_changed",
        "channel": "D0PNCRP9N",
        "channel_type": "im",
        "event_ts": "1.3",
        "message": {"type": "message", "user": BOT, "bot_id": "B1", "text": "Hello", "ts": "1.2"},
    }
    assert t.message_event(own_edit, bot_user_id=BOT, event_id="Ev6") is None


def test_bot_posts_and_system_messages_are_not_events() -> None:
    assert t.message_event({**MESSAGE_IM, "bot_id": "B1"}, bot_user_id=BOT, event_id="x") is None
    assert t.message_event({**MESSAGE_IM, "user": BOT}, bot_user_id=BOT, event_id="x") is None
    joined = {**MESSAGE_IM, "subtype": "channel_join"}
    assert t.message_event(joined, bot_user_id=BOT, event_id="x") is None
    deleted = {"type": "message", "subtype": "message_deleted", "channel": "C1", "ts": "1"}
    assert t.message_event(deleted, bot_user_id=BOT, event_id="x") is None


def test_message_and_mention_of_one_post_share_a_dedup_key() -> None:
    as_message = {**MENTION, "type": "message", "channel_type": "channel"}
    assert t.message_dedup_key(MENTION) == t.message_dedup_key(as_message)
    assert t.message_dedup_key(MENTION) == "slack:message:C123ABC456:1515449483.000108"


def test_a_button_press_carries_its_payload_exactly() -> None:
    chat = ChatRef(platform=Platform.SLACK, id="CBR2V3XEX", is_direct=False)
    event = t.action_event(BLOCK_ACTION, chat=chat)
    assert event is not None
    assert (event.kind, event.payload) == (EventKind.BUTTON, "3fa2c1d0|plan:byok")
    assert (event.user.id, event.user.name) == ("UA8RXUSPL", "jtorrance")
    assert event.message_id == "1548261231.000200"
    assert t.action_channel(BLOCK_ACTION) == "CBR2V3XEX"
    assert t.action_is_ephemeral(BLOCK_ACTION) is False


def test_a_home_shortcut_is_a_command_and_foreign_actions_are_ignored() -> None:
    shortcut = {**BLOCK_ACTION, "actions": [{"action_id": "byok_cmd:s0:1", "value": "key add"}]}
    event = t.action_event(shortcut, chat=DM)
    assert event is not None
    assert (event.kind, event.command, event.args) == (EventKind.COMMAND, "key", ("add",))
    foreign = {**BLOCK_ACTION, "actions": [{"action_id": "approve", "value": "1"}]}
    assert t.action_event(foreign, chat=DM) is None
    view_action = {**BLOCK_ACTION, "container": {"type": "view", "view_id": "V1"}}
    del view_action["channel"]
    assert t.action_channel(view_action) is None


def test_a_modal_submission_becomes_a_secret_event() -> None:
    modal = t.secret_modal(request())
    body = {
        "type": "view_submission",
        "user": {"id": "U1", "username": "ann"},
        "trigger_id": "trig1",
        "view": {
            **modal,
            "id": "VMHU10V25",
            "state": {"values": {t.SECRET_BLOCK: {t.SECRET_INPUT: {"value": " sk-x \n"}}}},
        },
    }
    event = t.secret_event(body, chat=DM)
    assert event is not None
    assert event.kind is EventKind.SECRET
    assert event.secret is not None
    assert event.secret.reveal() == "sk-x"
    assert (event.intake_token, event.via_modal) == ("tok-abc", True)
    assert "sk-x" not in repr(event)
    other = {**body, "view": {**body["view"], "callback_id": "someone_else"}}
    assert t.secret_event(other, chat=DM) is None


def test_home_opened_asks_for_status_and_usage_only_on_the_home_tab() -> None:
    opened = {"type": "app_home_opened", "user": "U1", "channel": "D1", "tab": "home"}
    assert t.home_opened(opened) == ("U1", "D1")
    assert t.home_opened({**opened, "tab": "messages"}) is None
    events = t.home_events("U1", "D1", event_id="Ev9")
    assert [(e.kind, e.command, e.chat.id, e.chat.is_direct, e.event_id) for e in events] == [
        (EventKind.COMMAND, "status", "D1", True, "Ev9:status"),
        (EventKind.COMMAND, "usage", "D1", True, "Ev9:usage"),
    ]


def test_reply_renders_text_and_buttons() -> None:
    reply = Reply(
        text="Pick <one> & go",
        buttons=(
            (Button("Yes", "t|yes", ButtonStyle.PRIMARY), Button("No", "t|no", ButtonStyle.DANGER)),
            (Button("x" * 100, "t|long"),),
        ),
    )
    kwargs = t.message_kwargs(reply)
    assert kwargs["text"] == "Pick &lt;one&gt; &amp; go"
    assert kwargs["blocks"][0] == {
        "type": "section",
        "text": {"type": "plain_text", "text": "Pick <one> & go", "emoji": True},
    }
    row0, row1 = kwargs["blocks"][1], kwargs["blocks"][2]
    assert [(b["action_id"], b["value"], b.get("style")) for b in row0["elements"]] == [
        ("byok:r0:0", "t|yes", "primary"),
        ("byok:r0:1", "t|no", "danger"),
    ]
    assert len(row1["elements"][0]["text"]["text"]) == 75


def test_the_open_dm_button_is_a_link() -> None:
    reply = Reply(text="DM me", buttons=((Button("Open DM", OPEN_DM_PAYLOAD),),))
    url = t.dm_link(team_id="T1", app_id="A1")
    [button] = t.message_kwargs(reply, dm_url=url)["blocks"][1]["elements"]
    assert button["url"] == "https://slack.com/app_redirect?app=A1&team=T1"
    assert button["action_id"].startswith(t.LINK_ACTION)
    assert "value" not in button


def test_markdown_becomes_mrkdwn_and_cannot_ping_everyone() -> None:
    md = "# Title\n**bold** and *it* and ~~gone~~ [docs](https://x.io)\n- item\n`a<b>` <!channel>"
    assert t.to_mrkdwn(md) == (
        "*Title*\n*bold* and _it_ and ~gone~ <https://x.io|docs>\n• item\n"
        "`a&lt;b&gt;` &lt;!channel&gt;"
    )
    reply = Reply(text="**hi**", format=TextFormat.MARKDOWN)
    assert t.message_kwargs(reply)["blocks"][0]["text"] == {"type": "mrkdwn", "text": "*hi*"}
    assert t.message_kwargs(reply, plain=True)["blocks"][0]["text"]["type"] == "plain_text"


def test_split_text_keeps_words_whole() -> None:
    text = "alpha beta gamma delta"
    assert t.split_text(text, 11) == ["alpha beta", "gamma delta"]
    assert t.split_text("line one\nline two", 12) == ["line one", "line two"]
    assert t.split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]
    assert t.split_text("short", 10) == ["short"]
    long_text = " ".join(["word"] * 2000)
    parts = t.split_text(long_text, 3000)
    assert all(len(p) <= 3000 for p in parts)
    assert " ".join(parts) == long_text


def test_long_replies_use_several_sections() -> None:
    blocks = t.message_kwargs(Reply(text="word " * 1000))["blocks"]
    assert [len(b["text"]["text"]) <= t.SECTION_LIMIT for b in blocks] == [True, True]


def test_the_key_modal_carries_the_token_only_in_private_metadata() -> None:
    modal = t.secret_modal(request())
    assert modal["title"]["text"] == "Add your Anthropic key p"  # Slack's 24-character cap
    assert json.loads(modal["private_metadata"]) == {"t": "tok-abc", "p": "anthropic"}
    shown = json.dumps({k: v for k, v in modal.items() if k != "private_metadata"})
    assert "tok-abc" not in shown
    assert modal["blocks"][-1]["block_id"] == t.SECRET_BLOCK
    assert t.modal_errors("bad") == {
        "response_action": "errors",
        "errors": {t.SECRET_BLOCK: "bad"},
    }


def test_the_dm_fallback_button_can_rebuild_the_modal() -> None:
    msg = t.secret_open_message(request())
    button = msg["blocks"][1]["elements"][0]
    assert button["action_id"] == t.SECRET_OPEN_ACTION
    assert t.parse_metadata(button["value"]) == {
        "t": "tok-abc",
        "p": "anthropic",
        "ti": "Add your Anthropic key please",
        "pr": "Paste the key",
    }
    assert "tok-abc" not in msg["text"]


def test_the_home_view_lists_status_and_shortcuts() -> None:
    status = Reply(text="Plan: byok", buttons=((Button("Change", "t|plan"),),))
    usage = Reply(text="Usage: 12 tokens")
    view = t.home_view([status, usage])
    assert view["type"] == "home"
    kinds = [b["type"] for b in view["blocks"]]
    assert kinds == ["section", "actions", "divider", "section", "divider", "actions"]
    refused = Reply(text="You need an account first.")
    assert len(t.home_view([refused, refused])["blocks"]) == 3  # shown once
    assert [e["value"] for e in view["blocks"][-1]["elements"]] == [
        "plan",
        "key add",
        "model",
        "usage",
        "help",
    ]
    action_ids = [
        e["action_id"] for b in view["blocks"] if b["type"] == "actions" for e in b["elements"]
    ]
    assert len(action_ids) == len(set(action_ids))


def test_stream_text_is_mrkdwn_with_a_thinking_placeholder() -> None:
    assert t.stream_kwargs("") == {"text": t.THINKING, "blocks": []}
    assert t.stream_kwargs("**a** <b>") == {"text": "*a* &lt;b&gt;", "blocks": []}
