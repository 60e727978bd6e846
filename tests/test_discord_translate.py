"""translate.py on recorded Discord payloads (INTERACTION_CREATE / MESSAGE_CREATE ``d``)."""

from __future__ import annotations

from typing import Any

import discord

from adapters.discord import translate
from core.chat import (
    Button,
    ButtonStyle,
    ChatRef,
    Event,
    EventKind,
    Platform,
    Reply,
    SecretRequest,
    TextFormat,
    UserRef,
)
from core.secret import Secret

BOT = "1300000000000000001"
ALICE = {"id": "1100000000000000001", "username": "alice", "global_name": "Alice", "bot": False}
GUILD = "1200000000000000001"
CHANNEL = "1200000000000000002"
DM = "1200000000000000003"

# Recorded from a guild channel (trimmed of fields translate does not read).
SLASH_KEY_ADD: dict[str, Any] = {
    "id": "1400000000000000001",
    "application_id": "1000000000000000001",
    "type": 2,
    "token": "aW50ZXJhY3Rpb24",
    "guild_id": GUILD,
    "channel_id": CHANNEL,
    "channel": {"id": CHANNEL, "type": 0, "guild_id": GUILD, "name": "general"},
    "member": {"user": ALICE, "roles": [], "permissions": "2147483647"},
    "data": {
        "id": "1500000000000000001",
        "name": "key",
        "type": 1,
        "options": [
            {
                "type": 1,
                "name": "add",
                "options": [{"type": 3, "name": "provider", "value": "anthropic"}],
            }
        ],
    },
}


def alice(name: str = "Alice") -> UserRef:
    return UserRef(platform=Platform.DISCORD, id=ALICE["id"], name=name)


def test_slash_command_with_subcommand_becomes_command_event() -> None:
    event = translate.interaction_to_event(SLASH_KEY_ADD)
    assert event == Event(
        kind=EventKind.COMMAND,
        user=alice(),
        chat=ChatRef(platform=Platform.DISCORD, id=CHANNEL, is_direct=False),
        command="key",
        args=("add", "anthropic"),
        text="/key add anthropic",
        event_id="discord:interaction:1400000000000000001",
    )


def test_slash_command_in_dm_with_free_text_option() -> None:
    payload = {
        "id": "1400000000000000002",
        "type": 2,
        "channel_id": DM,
        "channel": {"id": DM, "type": 1},
        "user": {"id": ALICE["id"], "username": "alice", "global_name": None},
        "data": {
            "name": "Persona",
            "type": 1,
            "options": [{"type": 3, "name": "text", "value": "a  terse pirate"}],
        },
    }
    event = translate.interaction_to_event(payload)
    assert event is not None
    assert (event.command, event.args, event.text) == (
        "persona",
        ("a", "terse", "pirate"),
        "/persona a terse pirate",
    )
    assert event.chat == ChatRef(platform=Platform.DISCORD, id=DM, is_direct=True)
    assert event.user == alice("alice")


def test_button_press_carries_payload_and_message_id() -> None:
    payload = {
        "id": "1400000000000000003",
        "type": 3,
        "channel_id": DM,
        "channel": {"id": DM, "type": 1},
        "user": ALICE,
        "message": {"id": "1600000000000000001"},
        "data": {"custom_id": "b:3f2a9c1d:plan:byok", "component_type": 2},
    }
    event = translate.interaction_to_event(payload)
    assert event is not None
    assert (event.kind, event.payload, event.message_id) == (
        EventKind.BUTTON,
        "3f2a9c1d:plan:byok",
        "1600000000000000001",
    )


def test_open_secret_button_and_autocomplete_are_not_events() -> None:
    press = {
        "id": "1",
        "type": 3,
        "channel_id": DM,
        "user": ALICE,
        "data": {"custom_id": "s:anthropic:tok", "component_type": 2},
    }
    auto = {"id": "2", "type": 4, "channel_id": DM, "user": ALICE, "data": {"name": "model"}}
    assert translate.interaction_to_event(press) is None
    assert translate.interaction_to_event(auto) is None


def test_modal_submit_becomes_secret_event() -> None:
    key = "sk-ant-api03-" + "x" * 93 + "AA"
    payload = {
        "id": "1400000000000000004",
        "type": 5,
        "channel_id": CHANNEL,
        "guild_id": GUILD,
        "member": {"user": ALICE},
        "data": {
            "custom_id": "k:intake-token-123",
            "components": [
                {
                    "type": 1,
                    "components": [{"type": 4, "custom_id": "secret", "value": f" {key}\n"}],
                }
            ],
        },
    }
    event = translate.interaction_to_event(payload)
    assert event is not None
    assert event.kind == EventKind.SECRET
    assert event.secret == Secret(key)
    assert (event.intake_token, event.via_modal) == ("intake-token-123", True)
    assert key not in repr(event)


def test_modal_value_inside_label_component() -> None:
    data = {
        "components": [{"type": 18, "component": {"type": 4, "custom_id": "secret", "value": "v"}}]
    }
    assert translate.modal_value(data, "secret") == "v"


def message(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "1700000000000000001",
        "type": 0,
        "channel_id": CHANNEL,
        "guild_id": GUILD,
        "author": ALICE,
        "content": content,
        "mentions": [],
        **extra,
    }


def test_dm_message_is_addressed() -> None:
    payload = message("hello there")
    del payload["guild_id"]
    payload["channel_id"] = DM
    event = translate.message_to_event(payload, bot_id=BOT)
    assert event == Event(
        kind=EventKind.MESSAGE,
        user=alice(),
        chat=ChatRef(platform=Platform.DISCORD, id=DM, is_direct=True),
        text="hello there",
        message_id="1700000000000000001",
        addressed=True,
        event_id="discord:message:1700000000000000001",
    )


def test_guild_mention_is_addressed_and_stripped() -> None:
    payload = message(f"<@{BOT}> what is 2+2?", mentions=[{"id": BOT}])
    event = translate.message_to_event(payload, bot_id=BOT)
    assert event is not None
    assert (event.text, event.addressed, event.chat.is_direct) == ("what is 2+2?", True, False)


def test_guild_nickname_mention_and_reply_to_bot() -> None:
    nick = translate.message_to_event(message(f"hey <@!{BOT}>"), bot_id=BOT)
    assert nick is not None
    assert (nick.text, nick.addressed) == ("hey", True)
    reply = translate.message_to_event(
        message("and then?", type=19, referenced_message={"author": {"id": BOT}}), bot_id=BOT
    )
    assert reply is not None
    assert (reply.text, reply.addressed) == ("and then?", True)


def test_unaddressed_guild_message_is_still_an_event() -> None:
    event = translate.message_to_event(message("sk-ant-api03-leaked"), bot_id=BOT)
    assert event is not None
    assert (event.addressed, event.text, event.message_id) == (
        False,
        "sk-ant-api03-leaked",
        "1700000000000000001",
    )


def test_agent_channel_messages_are_addressed() -> None:
    event = translate.message_to_event(message("hi"), bot_id=BOT, agent_channels=[CHANNEL])
    assert event is not None
    assert event.addressed is True


def test_bots_system_messages_and_empty_text_are_dropped() -> None:
    assert (
        translate.message_to_event(message("x", author={**ALICE, "bot": True}), bot_id=BOT) is None
    )
    assert translate.message_to_event(message("x", webhook_id="9"), bot_id=BOT) is None
    assert translate.message_to_event(message("joined", type=7), bot_id=BOT) is None
    assert translate.message_to_event(message(""), bot_id=BOT) is None
    assert translate.message_to_event(message(f"<@{BOT}>"), bot_id=BOT) is None


def test_render_escapes_plain_text_and_keeps_markdown() -> None:
    assert translate.render(Reply(text="2*3*4 and _x_")) == "2\\*3\\*4 and \\_x\\_"
    assert translate.render(Reply(text="**bold**", format=TextFormat.MARKDOWN)) == "**bold**"


def test_split_text_cuts_between_words() -> None:
    text = " ".join(f"word{i:04d}" for i in range(500))  # 4499 characters
    pieces = translate.split_text(text)
    assert [len(p) <= 2000 for p in pieces] == [True, True, True]
    assert " ".join(pieces) == text
    assert all(not p.startswith(" ") and not p.endswith(" ") for p in pieces)


def test_split_text_prefers_newlines_and_hard_cuts_giant_words() -> None:
    assert translate.split_text("aaaa bbbb\ncccc dddd", limit=12) == ["aaaa bbbb", "cccc dddd"]
    assert translate.split_text("x" * 25, limit=10) == ["x" * 10, "x" * 10, "x" * 5]
    assert translate.split_text("") == [""]


def test_buttons_become_rows_with_custom_ids() -> None:
    view = translate.to_view(
        (
            (
                Button("BYOK", "t:plan:byok", ButtonStyle.PRIMARY),
                Button("Managed", "t:plan:managed"),
            ),
            (Button("Cancel", "t:cancel", ButtonStyle.DANGER),),
        )
    )
    assert view is not None
    assert view.to_components() == [
        {
            "type": 1,
            "components": [
                {
                    "type": 2,
                    "style": 1,
                    "label": "BYOK",
                    "custom_id": "b:t:plan:byok",
                    "disabled": False,
                },
                {
                    "type": 2,
                    "style": 2,
                    "label": "Managed",
                    "custom_id": "b:t:plan:managed",
                    "disabled": False,
                },
            ],
        },
        {
            "type": 1,
            "components": [
                {
                    "type": 2,
                    "style": 4,
                    "label": "Cancel",
                    "custom_id": "b:t:cancel",
                    "disabled": False,
                }
            ],
        },
    ]
    assert view.is_finished()  # never stored in discord.py's view registry
    assert translate.to_view(()) is None


def test_secret_modal_and_button_carry_the_token() -> None:
    from datetime import UTC, datetime

    request = SecretRequest(
        token="tok123456",
        provider="anthropic",
        title="Anthropic key",
        prompt="Paste your Anthropic API key; it is stored encrypted and never shown again.",
        expires_at=datetime(2026, 1, 1, tzinfo=UTC),
        label="Anthropic API key",
    )
    modal = translate.secret_modal(
        request.token, title=request.title, prompt=request.prompt, label=request.label
    )
    body = modal.to_dict()
    assert body["custom_id"] == "k:tok123456"
    assert body["title"] == "Anthropic key"
    field = body["components"][0]["components"][0]
    assert (field["custom_id"], field["style"], field["required"]) == ("secret", 1, True)
    assert field["label"] == "Anthropic API key"  # the short label, not the cut prompt
    assert field["placeholder"] == request.prompt
    button = translate.secret_button(request).to_components()[0]["components"][0]
    assert (button["custom_id"], button["label"]) == ("s:tok123456", "Anthropic key")


def test_command_definitions_cover_the_command_set() -> None:
    defs = translate.command_definitions(("anthropic", "openai"))
    assert [d["name"] for d in defs] == sorted(
        [
            "admin",
            "cancel",
            "compact",
            "delete",
            "help",
            "history",
            "key",
            "link",
            "memory",
            "model",
            "new",
            "pause",
            "persona",
            "plan",
            "reset",
            "resume",
            "start",
            "status",
            "stop",
            "tasks",
            "timezone",
            "usage",
            "whoami",
        ]
    )
    key = next(d for d in defs if d["name"] == "key")
    add = next(o for o in key["options"] if o["name"] == "add")
    assert add["options"][0]["choices"] == [
        {"name": "anthropic", "value": "anthropic"},
        {"name": "openai", "value": "openai"},
    ]
    model = next(d for d in defs if d["name"] == "model")
    assert model["options"][0]["autocomplete"] is True


def test_canonical_commands_ignore_server_added_fields() -> None:
    local = translate.command_definitions(("anthropic",))
    remote = [
        {
            **d,
            "id": "1",
            "application_id": "2",
            "version": "3",
            "default_member_permissions": None,
            "nsfw": False,
            "options": [{**o, "name_localizations": None} for o in d["options"]],
        }
        for d in reversed(local)
    ]
    assert translate.canonical_commands(remote) == translate.canonical_commands(local)
    changed = translate.command_definitions(("anthropic", "openai"))
    assert translate.canonical_commands(changed) != translate.canonical_commands(local)


def test_focused_option_and_autocomplete_choices() -> None:
    data = {
        "options": [
            {
                "type": 1,
                "name": "add",
                "options": [{"name": "provider", "value": "op", "focused": True}],
            }
        ]
    }
    assert translate.focused_option(data) == ("provider", "op")
    assert translate.focused_option({"options": []}) is None
    models = ["gpt-4.1-mini", "claude-sonnet-4-5", "o4-mini", "kimi"]
    assert translate.autocomplete_choices("mini", models) == ["gpt-4.1-mini", "o4-mini"]
    assert translate.autocomplete_choices("o4", models) == ["o4-mini"]
    assert len(translate.autocomplete_choices("", [f"m{i}" for i in range(40)])) == 25


def test_button_styles_map_to_discord() -> None:
    assert translate._STYLES[ButtonStyle.DEFAULT] is discord.ButtonStyle.secondary


def test_open_dm_button_is_a_link_to_the_bot() -> None:
    from core.chat import OPEN_DM_PAYLOAD

    view = translate.to_view(((Button("Open a DM", OPEN_DM_PAYLOAD),),), bot_id=BOT)
    assert view is not None
    assert view.to_components()[0]["components"] == [
        {
            "type": 2,
            "style": 5,
            "label": "Open a DM",
            "url": f"https://discord.com/users/{BOT}",
            "disabled": False,
        }
    ]


def test_edits_are_delivered_unaddressed_for_the_leak_guard() -> None:
    edited = message(
        f"<@{BOT}> oops sk-ant-api03-leak", edited_timestamp="2026-01-01T00:01:00+00:00"
    )
    event = translate.edit_to_event(edited, bot_id=BOT)
    assert event is not None
    assert (event.addressed, event.text, event.event_id) == (
        False,
        "oops sk-ant-api03-leak",
        "discord:edit:1700000000000000001:2026-01-01T00:01:00+00:00",
    )
    assert (
        translate.edit_to_event(message("link preview", edited_timestamp=None), bot_id=BOT) is None
    )
