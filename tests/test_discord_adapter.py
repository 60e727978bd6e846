"""Scenario tests: the real discord.py client against the loopback fake Discord."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import discord
import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.discord.adapter import CommandCatalog, DiscordAdapter, DiscordLoginError
from core.chat import (
    Button,
    ButtonStyle,
    ChatRef,
    Event,
    EventKind,
    Outcome,
    Platform,
    Reply,
    SecretRequest,
    UserRef,
)
from tests.fakes.discord_harness import CANARY_TOKEN, make_config, running
from tests.fakes.discord_server import APP_ID, BOT_ID, GUILD_CHANNEL_ID, GUILD_ID, FakeDiscord

EPHEMERAL = 64


def request(token: str) -> SecretRequest:
    return SecretRequest(
        token=token,
        provider="anthropic",
        title="Anthropic key",
        prompt="Paste your Anthropic API key",
        expires_at=datetime(2030, 1, 1, tzinfo=UTC),
    )


PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    # The adapter points discord.py's class-level endpoints at the fake; restore them after.
    monkeypatch.setattr(Route, "BASE", Route.BASE)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)
    async with FakeDiscord() as server:
        yield server


async def test_login_ready_and_first_command_sync(fake: FakeDiscord) -> None:
    async with running(fake) as (adapter, _):
        assert adapter.client.is_ready()
        assert adapter.client.user is not None
        assert str(adapter.client.user.id) == "900000000000000002"
    paths = [(c.method, c.path) for c in fake.calls]
    assert paths[:4] == [
        ("GET", "/users/@me"),
        ("GET", "/oauth2/applications/@me"),
        ("GET", f"/applications/{APP_ID}/commands"),
        ("PUT", f"/applications/{APP_ID}/commands"),
    ]
    identify = [f for f in fake.gateway_frames if f["op"] == 2]
    assert len(identify) == 1
    # guilds | guild_messages | dm_messages | message_content
    assert identify[0]["d"]["intents"] == (1 << 0) | (1 << 9) | (1 << 12) | (1 << 15)
    names = sorted(c["name"] for c in fake.commands["global"])
    assert names == sorted(
        [
            "admin",
            "cancel",
            "compact",
            "delete",
            "help",
            "history",
            "key",
            "link",
            "mcp",
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


# -- helpers ----------------------------------------------------------------------------------

CALLBACK = r"^/interactions/\d+/[^/]+/callback$"
ALICE_ID = "700000000000000001"
BOB_ID = "700000000000000002"


def callbacks(fake: FakeDiscord) -> list[dict[str, Any]]:
    return [c.body for c in fake.find("POST", CALLBACK)]


def posted(fake: FakeDiscord, channel_id: str) -> list[str]:
    return [c.body["content"] for c in fake.find("POST", rf"^/channels/{channel_id}/messages$")]


def everything_sent(fake: FakeDiscord) -> str:
    return json.dumps([(c.path, c.query, c.body) for c in fake.calls])


def anthropic_canary() -> str:
    return "sk-ant-api03-" + secrets.token_urlsafe(70)[:93] + "AA"


async def test_unchanged_commands_are_not_synced_again(fake: FakeDiscord) -> None:
    async with running(fake):
        pass
    async with running(fake):
        pass
    assert len(fake.find("GET", rf"^/applications/{APP_ID}/commands$")) == 2
    assert len(fake.find("PUT", rf"^/applications/{APP_ID}/commands$")) == 1
    # A new provider changes the /key choices: the next start uploads again.
    async with running(fake, catalog=CommandCatalog(providers=("anthropic", "openai", "groq"))):
        pass
    assert len(fake.find("PUT", rf"^/applications/{APP_ID}/commands$")) == 2


async def test_guild_ids_sync_per_guild(fake: FakeDiscord) -> None:
    async with running(fake, guild_ids=(GUILD_ID,)):
        pass
    assert [(c.method, c.path) for c in fake.calls if "/commands" in c.path] == [
        ("GET", f"/applications/{APP_ID}/guilds/{GUILD_ID}/commands"),
        ("PUT", f"/applications/{APP_ID}/guilds/{GUILD_ID}/commands"),
    ]


async def test_onboarding_in_a_channel_is_ephemeral(fake: FakeDiscord) -> None:
    """/start in a channel -> plan buttons only Alice sees; she presses one -> private too."""
    alice = fake.user(ALICE_ID, "alice")

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        if event.kind is EventKind.COMMAND:
            await adapter.respond(
                event,
                Reply(
                    text="Pick a plan",
                    buttons=((Button("BYOK $15", "t1:plan:byok", ButtonStyle.PRIMARY),),),
                ),
            )
        elif event.kind is EventKind.BUTTON:
            await adapter.respond(event, Reply(text="You are on BYOK.", sensitive=True))

    async with running(fake) as (_adapter, script):
        script.behaviour = behaviour
        await fake.dispatch(
            "INTERACTION_CREATE", fake.slash(alice, "start", channel_id=GUILD_CHANNEL_ID)
        )
        await fake.wait_for(lambda: len(callbacks(fake)) == 1)
        await fake.dispatch(
            "INTERACTION_CREATE", fake.button(alice, "b:t1:plan:byok", channel_id=GUILD_CHANNEL_ID)
        )
        await fake.wait_for(lambda: len(callbacks(fake)) == 2)
    start, choice = callbacks(fake)
    assert start["type"] == 4
    assert start["data"]["content"] == "Pick a plan"
    assert start["data"].get("flags", 0) & EPHEMERAL == EPHEMERAL
    assert start["data"]["components"][0]["components"][0]["custom_id"] == "b:t1:plan:byok"
    assert choice["type"] == 4
    assert (choice["data"]["content"], choice["data"]["flags"]) == ("You are on BYOK.", EPHEMERAL)
    assert [(e.kind, e.command, e.payload) for e in script.events] == [
        (EventKind.COMMAND, "start", ""),
        (EventKind.BUTTON, "", "t1:plan:byok"),
    ]


async def test_key_add_modal_round_trip_never_posts_the_key(
    fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    """/key add anthropic -> a modal; the key comes back only inside the SECRET event."""
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.INFO)
    alice = fake.user(ALICE_ID, "alice")
    key = anthropic_canary()
    received: list[str] = []

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        if event.kind is EventKind.COMMAND:
            await adapter.ask_secret(event, request("tok-abc123"))
        elif event.kind is EventKind.SECRET:
            assert event.secret is not None
            received.append(event.secret.reveal())
            await adapter.respond(event, Reply(text="Saved sk-ant-…" + key[-4:], sensitive=True))

    async with running(fake) as (_adapter, script):
        script.behaviour = behaviour
        await fake.dispatch(
            "INTERACTION_CREATE",
            fake.slash(
                alice,
                "key",
                [
                    {
                        "type": 1,
                        "name": "add",
                        "options": [{"type": 3, "name": "provider", "value": "anthropic"}],
                    }
                ],
                channel_id=GUILD_CHANNEL_ID,
            ),
        )
        await fake.wait_for(lambda: len(callbacks(fake)) == 1)
        modal = callbacks(fake)[0]
        assert modal["type"] == 9
        assert modal["data"]["custom_id"] == "k:tok-abc123"
        assert modal["data"]["title"] == "Anthropic key"
        await fake.dispatch(
            "INTERACTION_CREATE",
            fake.modal_submit(alice, "k:tok-abc123", {"secret": key}, channel_id=GUILD_CHANNEL_ID),
        )
        await fake.wait_for(lambda: len(callbacks(fake)) == 2)
    confirm = callbacks(fake)[1]
    assert (confirm["type"], confirm["data"]["flags"]) == (4, EPHEMERAL)
    # Plain text reaches Discord Markdown-escaped (a key's tail may hold a "_").
    assert confirm["data"]["content"] == discord.utils.escape_markdown("Saved sk-ant-…" + key[-4:])
    assert received == [key]
    secret_event = script.events[1]
    assert (secret_event.kind, secret_event.intake_token, secret_event.via_modal) == (
        EventKind.SECRET,
        "tok-abc123",
        True,
    )
    assert key not in everything_sent(fake)
    assert fake.find("POST", r"^/channels/") == []  # nothing posted to any channel
    assert key not in caplog.text
    assert "tok-abc123" not in caplog.text
    assert CANARY_TOKEN not in caplog.text


async def test_expired_intake_gets_an_ephemeral_answer(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")

    async def behaviour(adapter: DiscordAdapter, event: Event) -> Outcome:
        return Outcome(secret_error="That form expired. Run /key add again.")

    async with running(fake) as (_, script):
        script.behaviour = behaviour
        await fake.dispatch(
            "INTERACTION_CREATE",
            fake.modal_submit(alice, "k:old-token", {"secret": "sk-whatever"}, channel_id=None),
        )
        await fake.wait_for(lambda: len(callbacks(fake)) == 1)
    answer = callbacks(fake)[0]
    assert answer["type"] == 4
    assert (answer["data"]["content"], answer["data"]["flags"]) == (
        "That form expired. Run /key add again.",
        EPHEMERAL,
    )


async def test_slow_flow_is_deferred_then_answered_by_follow_up(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")
    release = asyncio.Event()

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        await release.wait()
        await adapter.respond(event, Reply(text="Status: all good", sensitive=True))

    async with running(fake, defer_after=0.05) as (_, script):
        script.behaviour = behaviour
        await fake.dispatch(
            "INTERACTION_CREATE", fake.slash(alice, "status", channel_id=GUILD_CHANNEL_ID)
        )
        await fake.wait_for(lambda: len(callbacks(fake)) == 1)
        release.set()
        await fake.wait_for(lambda: len(fake.find("POST", r"^/webhooks/")) == 1)
    assert callbacks(fake) == [{"type": 5, "data": {"flags": EPHEMERAL}}]
    follow_up = fake.find("POST", rf"^/webhooks/{APP_ID}/itok-\d+$")[0]
    assert (follow_up.body["content"], follow_up.body["flags"]) == ("Status: all good", EPHEMERAL)


async def test_quick_flow_is_not_deferred(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        await adapter.respond(event, Reply(text="Help text"))
        await adapter.respond(event, Reply(text="More help"))

    async with running(fake) as (_, script):
        script.behaviour = behaviour
        await fake.dispatch("INTERACTION_CREATE", fake.slash(alice, "help"))
        await fake.wait_for(lambda: len(fake.find("POST", r"^/webhooks/")) == 1)
    assert [b["type"] for b in callbacks(fake)] == [4]
    assert callbacks(fake)[0]["data"]["content"] == "Help text"
    assert fake.find("POST", r"^/webhooks/")[0].body["content"] == "More help"


async def test_key_request_after_deferral_offers_a_button_that_opens_the_modal(
    fake: FakeDiscord,
) -> None:
    alice = fake.user(ALICE_ID, "alice")
    release = asyncio.Event()

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        await release.wait()
        await adapter.ask_secret(event, request("tok-late"))

    async with running(fake, defer_after=0.05) as (_, script):
        script.behaviour = behaviour
        await fake.dispatch(
            "INTERACTION_CREATE",
            fake.slash(
                alice,
                "key",
                [{"type": 1, "name": "add", "options": []}],
                channel_id=GUILD_CHANNEL_ID,
            ),
        )
        await fake.wait_for(lambda: len(callbacks(fake)) == 1)
        release.set()
        await fake.wait_for(lambda: len(fake.find("POST", r"^/webhooks/")) == 1)
        offer = fake.find("POST", r"^/webhooks/")[0].body
        assert offer["flags"] == EPHEMERAL
        button = offer["components"][0]["components"][0]
        assert (button["custom_id"], button["label"]) == ("s:tok-late", "Anthropic key")
        await fake.dispatch(
            "INTERACTION_CREATE", fake.button(alice, "s:tok-late", channel_id=GUILD_CHANNEL_ID)
        )
        await fake.wait_for(lambda: len(callbacks(fake)) == 2)
    modal = callbacks(fake)[1]
    assert (modal["type"], modal["data"]["custom_id"], modal["data"]["title"]) == (
        9,
        "k:tok-late",
        "Anthropic key",
    )
    assert len(script.events) == 1  # opening the form is the adapter's job, not an event


async def test_key_request_from_a_channel_message_goes_to_dm(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")

    reached: list[bool] = []

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        reached.append(await adapter.ask_secret(event, request("tok-dm")))

    async with running(fake) as (_, script):
        script.behaviour = behaviour
        await fake.dispatch(
            "MESSAGE_CREATE",
            fake.message(
                alice,
                f"<@{BOT_ID}> add my key",
                channel_id=GUILD_CHANNEL_ID,
                mentions=[fake.user(BOT_ID, "byokbot")],
            ),
        )
        await fake.wait_for(lambda: len(fake.find("POST", r"^/channels/\d+/messages$")) == 1)
    dm = fake.dm_channels[ALICE_ID]
    assert [c.path for c in fake.calls if c.method == "POST"] == [
        "/users/@me/channels",
        f"/channels/{dm}/messages",
    ]
    body = fake.find("POST", rf"^/channels/{dm}/messages$")[0].body
    assert body["content"] == "Paste your Anthropic API key"
    assert body["components"][0]["components"][0]["custom_id"] == "s:tok-dm"
    assert reached == [True]


async def test_key_request_reports_when_no_dm_can_be_opened(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")
    reached: list[bool] = []

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        reached.append(await adapter.ask_secret(event, request("tok-closed")))

    fake.fail_next(
        "POST",
        r"^/users/@me/channels$",
        403,
        {"code": 50007, "message": "Cannot send messages to this user"},
    )
    async with running(fake) as (_, script):
        script.behaviour = behaviour
        bot = fake.user(BOT_ID, "byokbot")
        await fake.dispatch(
            "MESSAGE_CREATE",
            fake.message(
                alice, f"<@{BOT_ID}> key please", channel_id=GUILD_CHANNEL_ID, mentions=[bot]
            ),
        )
        await fake.wait_for(lambda: len(reached) == 1)
    assert reached == [False]
    assert fake.find("POST", r"^/channels/") == []


async def test_leak_guard_deletes_and_warns_by_dm(fake: FakeDiscord) -> None:
    """A key pasted in a channel: the router deletes it and warns Alice privately."""
    alice = fake.user(ALICE_ID, "alice")
    key = anthropic_canary()
    deleted: list[bool] = []

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        assert event.message_id is not None
        deleted.append(await adapter.delete(event.chat, event.message_id))
        await adapter.respond(event, Reply(text="Rotate that key now.", sensitive=True))

    async with running(fake) as (adapter, script):
        script.behaviour = behaviour
        leak = fake.message(alice, f"my key is {key}", channel_id=GUILD_CHANNEL_ID)
        await fake.dispatch("MESSAGE_CREATE", leak)
        await fake.wait_for(
            lambda: (
                ALICE_ID in fake.dm_channels
                and len(fake.find("POST", r"^/channels/\d+/messages$")) == 1
            )
        )
        dm = fake.dm_channels[ALICE_ID]
        # Where the bot lacks the permission, delete reports it.
        fake.forbidden_deletes.add("42")
        assert await adapter.delete(script.events[0].chat, "42") is False
    assert deleted == [True]
    assert script.events[0].addressed is False
    assert [c.path for c in fake.find("DELETE", r"^/channels/")] == [
        f"/channels/{GUILD_CHANNEL_ID}/messages/{leak['id']}",
        f"/channels/{GUILD_CHANNEL_ID}/messages/42",
    ]
    assert posted(fake, dm) == ["Rotate that key now."]
    assert posted(fake, GUILD_CHANNEL_ID) == []
    assert key not in everything_sent(fake)


async def test_duplicate_interaction_after_resume_is_processed_once(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        await adapter.respond(event, Reply(text=f"ok {event.command}"))

    async with running(fake) as (_, script):
        script.behaviour = behaviour
        usage = fake.slash(alice, "usage")
        await fake.dispatch("INTERACTION_CREATE", usage)
        await fake.wait_for(lambda: len(callbacks(fake)) == 1)
        await fake.request_reconnect()
        async with asyncio.timeout(5):
            await fake.resumed.wait()
        await fake.dispatch("INTERACTION_CREATE", usage)  # replayed after the resume
        await fake.dispatch("INTERACTION_CREATE", fake.slash(alice, "status"))
        await fake.wait_for(lambda: len(callbacks(fake)) == 2)
    assert [f["op"] for f in fake.gateway_frames if f["op"] in (2, 6)] == [2, 6]
    assert [e.command for e in script.events] == ["usage", "status"]
    assert [b["data"]["content"] for b in callbacks(fake)] == ["ok usage", "ok status"]


async def test_autocomplete_offers_configured_models(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")
    catalog = CommandCatalog(models=("claude-sonnet-4-5", "gpt-4.1-mini", "o4-mini"))
    async with running(fake, catalog=catalog) as (_, script):
        await fake.dispatch(
            "INTERACTION_CREATE",
            fake.autocomplete(
                alice, "model", [{"type": 3, "name": "name", "value": "mini", "focused": True}]
            ),
        )
        await fake.wait_for(lambda: len(callbacks(fake)) == 1)
    assert callbacks(fake)[0] == {
        "type": 8,
        "data": {
            "choices": [
                {"name": "gpt-4.1-mini", "value": "gpt-4.1-mini"},
                {"name": "o4-mini", "value": "o4-mini"},
            ]
        },
    }
    assert script.events == []


async def test_unknown_button_is_acknowledged_silently(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")
    async with running(fake) as (_, script):
        await fake.dispatch("INTERACTION_CREATE", fake.button(alice, "legacy-view:42"))
        await fake.wait_for(lambda: len(callbacks(fake)) == 1)
    assert callbacks(fake) == [{"type": 6}]
    assert script.events == []


async def test_command_without_answer_clears_the_thinking_state(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")
    async with running(fake) as (_, script):
        await fake.dispatch(
            "INTERACTION_CREATE", fake.slash(alice, "pause", channel_id=GUILD_CHANNEL_ID)
        )
        await fake.wait_for(lambda: len(fake.find("DELETE", r"^/webhooks/")) == 1)
    assert callbacks(fake) == [{"type": 5, "data": {"flags": EPHEMERAL}}]
    assert [e.command for e in script.events] == ["pause"]


async def test_answers_after_the_interaction_token_expired_use_the_channel(
    fake: FakeDiscord,
) -> None:
    alice = fake.user(ALICE_ID, "alice")
    now = [1000.0]
    release = asyncio.Event()

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        await release.wait()
        now[0] += 15 * 60  # the flow took 15 minutes
        await adapter.respond(event, Reply(text="Done at last"))
        await adapter.respond(event, Reply(text="Your usage", sensitive=True))

    async with running(fake, defer_after=0.05, clock=lambda: now[0]) as (_, script):
        script.behaviour = behaviour
        await fake.dispatch(
            "INTERACTION_CREATE", fake.slash(alice, "usage", channel_id=GUILD_CHANNEL_ID)
        )
        await fake.wait_for(lambda: len(callbacks(fake)) == 1)
        release.set()
        await fake.wait_for(
            lambda: (
                ALICE_ID in fake.dm_channels
                and len(fake.find("POST", r"^/channels/\d+/messages$")) == 2
            )
        )
    assert fake.find("POST", r"^/webhooks/") == []
    # An answer to a command in a server is personal: without the interaction, the DM.
    assert posted(fake, GUILD_CHANNEL_ID) == []
    assert posted(fake, fake.dm_channels[ALICE_ID]) == ["Done at last", "Your usage"]


async def test_rate_limited_edit_is_retried_by_the_library(fake: FakeDiscord) -> None:
    async with running(fake) as (adapter, _):
        chat = ChatRef(platform=Platform.DISCORD, id=GUILD_CHANNEL_ID, is_direct=False)
        ref = await adapter.send(chat, Reply(text="v1"))
        assert ref is not None
        fake.fail_next(
            "PATCH",
            r"^/channels/\d+/messages/\d+$",
            429,
            {"message": "You are being rate limited.", "retry_after": 0.05, "global": False},
        )
        await adapter.edit(ref, Reply(text="v2"))
    edits = fake.find("PATCH", rf"^/channels/{GUILD_CHANNEL_ID}/messages/{ref.id}$")
    assert [c.body["content"] for c in edits] == ["v2", "v2"]


async def test_long_replies_are_split_with_buttons_on_the_last_piece(fake: FakeDiscord) -> None:
    text = " ".join(f"w{i:03d}" for i in range(600))  # 2999 characters
    async with running(fake) as (adapter, _):
        chat = ChatRef(platform=Platform.DISCORD, id=GUILD_CHANNEL_ID, is_direct=False)
        await adapter.send(chat, Reply(text=text, buttons=((Button("OK", "ok"),),)))
    bodies = [c.body for c in fake.find("POST", rf"^/channels/{GUILD_CHANNEL_ID}/messages$")]
    assert [len(b["content"]) <= 2000 for b in bodies] == [True, True]
    assert " ".join(b["content"] for b in bodies) == text
    assert [bool(b.get("components")) for b in bodies] == [False, True]


async def test_failing_handler_is_logged_without_its_message_and_acknowledged(
    fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    alice = fake.user(ALICE_ID, "alice")
    key = anthropic_canary()

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        raise RuntimeError(f"flow broke on {key}")

    async with running(fake) as (_, script):
        script.behaviour = behaviour
        await fake.dispatch(
            "INTERACTION_CREATE", fake.slash(alice, "status", channel_id=GUILD_CHANNEL_ID)
        )
        await fake.wait_for(lambda: len(fake.find("DELETE", r"^/webhooks/")) == 1)
    assert callbacks(fake) == [{"type": 5, "data": {"flags": EPHEMERAL}}]
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert failures == [f"discord: handler failed for {script.events[0].event_id}: RuntimeError"]
    assert key not in caplog.text


async def test_without_message_content_intent(fake: FakeDiscord) -> None:
    async with running(fake, message_content_intent=False):
        pass
    identify = next(f for f in fake.gateway_frames if f["op"] == 2)
    assert identify["d"]["intents"] == (1 << 0) | (1 << 9) | (1 << 12)


async def test_image_is_attached_to_the_reply(fake: FakeDiscord) -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    async with running(fake) as (adapter, _):
        chat = ChatRef(platform=Platform.DISCORD, id=GUILD_CHANNEL_ID, is_direct=False)
        await adapter.send(chat, Reply(text="Your usage", image=png))
    body = fake.find("POST", rf"^/channels/{GUILD_CHANNEL_ID}/messages$")[0].body
    assert (body["content"], body["_files"]) == ("Your usage", ["files[0]"])


async def test_buttons_and_key_form_buttons_work_after_a_restart(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")
    chat = ChatRef(platform=Platform.DISCORD, id=GUILD_CHANNEL_ID, is_direct=False)
    async with running(fake) as (adapter, _):
        await adapter.send(
            chat, Reply(text="Pick", buttons=((Button("Managed", "t9|plan:managed"),),))
        )
        reached = await adapter.ask_secret(
            Event(kind=EventKind.MESSAGE, user=UserRef(Platform.DISCORD, ALICE_ID), chat=chat),
            request("tok-before-restart"),
        )
        assert reached is True
    async with running(fake) as (_, script):  # a new process: nothing in memory
        await fake.dispatch(
            "INTERACTION_CREATE",
            fake.button(alice, "b:t9|plan:managed", channel_id=GUILD_CHANNEL_ID),
        )
        await fake.dispatch("INTERACTION_CREATE", fake.button(alice, "s:tok-before-restart"))
        await fake.wait_for(lambda: len(callbacks(fake)) == 2 and len(script.events) == 1)
    assert [(e.kind, e.payload) for e in script.events] == [(EventKind.BUTTON, "t9|plan:managed")]
    modal = next(b for b in callbacks(fake) if b["type"] == 9)
    assert modal["data"]["custom_id"] == "k:tok-before-restart"


async def test_a_key_pasted_by_editing_reaches_the_leak_guard_once(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")
    key = anthropic_canary()
    async with running(fake) as (_, script):
        original = fake.message(alice, "my key is coming", channel_id=GUILD_CHANNEL_ID)
        await fake.dispatch("MESSAGE_CREATE", original)
        edit = {
            **original,
            "content": f"my key is {key}",
            "edited_timestamp": "2026-01-01T00:01:00+00:00",
        }
        await fake.dispatch("MESSAGE_UPDATE", edit)
        await fake.dispatch("MESSAGE_UPDATE", edit)  # the same edit delivered again
        await fake.dispatch("MESSAGE_UPDATE", {**original, "edited_timestamp": None})  # a preview
        await fake.dispatch(
            "MESSAGE_CREATE", fake.message(alice, "marker", channel_id=GUILD_CHANNEL_ID)
        )
        await fake.wait_for(lambda: any(e.text == "marker" for e in script.events))
    assert [(e.text, e.addressed, e.message_id) for e in script.events] == [
        ("my key is coming", False, original["id"]),
        (f"my key is {key}", False, original["id"]),
        ("marker", False, script.events[-1].message_id),
    ]


async def test_ephemeral_answers_are_edited_through_the_interaction_webhook(
    fake: FakeDiscord,
) -> None:
    alice = fake.user(ALICE_ID, "alice")
    refs: list[Any] = []

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        first = await adapter.respond(event, Reply(text="Usage: 1 request", sensitive=True))
        second = await adapter.respond(event, Reply(text="Cap: 100", sensitive=True))
        assert first is not None
        assert second is not None
        await adapter.edit(first, Reply(text="Usage: 2 requests", sensitive=True))
        await adapter.edit(second, Reply(text="Cap: 200", sensitive=True))
        refs.extend([first, second])

    async with running(fake) as (_, script):
        script.behaviour = behaviour
        await fake.dispatch(
            "INTERACTION_CREATE", fake.slash(alice, "usage", channel_id=GUILD_CHANNEL_ID)
        )
        await fake.wait_for(lambda: len(refs) == 2)
    follow_up_id = fake.find("POST", r"^/webhooks/")[0].result["id"]
    assert [
        (c.path.split("/")[-1], c.body["content"]) for c in fake.find("PATCH", r"^/webhooks/")
    ] == [
        ("@original", "Usage: 2 requests"),
        (follow_up_id, "Cap: 200"),
    ]
    assert fake.find("PATCH", r"^/channels/") == []  # ephemeral messages have no channel edit


async def test_a_gateway_that_never_gets_ready_stops_start_up(fake: FakeDiscord) -> None:
    fake.send_ready = False
    adapter = DiscordAdapter(make_config(fake), guild_ready_timeout=0.05, ready_timeout=0.3)

    async def handler(event: Event) -> Outcome:
        return Outcome()

    with pytest.raises(DiscordLoginError) as info:
        await adapter.start(handler)
    assert str(info.value) == "Discord gateway connection failed (no READY in time)"
    await adapter.stop()


async def test_answers_in_servers_quote_the_message_they_answer(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")
    bot = fake.user(BOT_ID, "byokbot")

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        await adapter.respond(event, Reply(text="Here I am"))

    async with running(fake) as (_, script):
        script.behaviour = behaviour
        question = fake.message(
            alice, f"<@{BOT_ID}> you there?", channel_id=GUILD_CHANNEL_ID, mentions=[bot]
        )
        await fake.dispatch("MESSAGE_CREATE", question)
        await fake.wait_for(lambda: len(posted(fake, GUILD_CHANNEL_ID)) == 1)
    body = fake.find("POST", rf"^/channels/{GUILD_CHANNEL_ID}/messages$")[0].body
    reference = body["message_reference"]
    assert (reference["message_id"], reference["fail_if_not_exists"]) == (
        int(question["id"]),
        False,
    )
    assert body["allowed_mentions"] == {"parse": []}  # replies do not ping by default


async def test_an_interaction_discord_forgot_is_answered_in_the_chat_instead(
    fake: FakeDiscord,
) -> None:
    alice = fake.user(ALICE_ID, "alice")
    done: list[bool] = []

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        await adapter.respond(event, Reply(text="Public answer"))
        await adapter.respond(event, Reply(text="Private answer", sensitive=True))
        done.append(True)

    fake.fail_next("POST", CALLBACK, 404, {"code": 10062, "message": "Unknown interaction"})
    async with running(fake) as (_, script):
        script.behaviour = behaviour
        await fake.dispatch(
            "INTERACTION_CREATE", fake.slash(alice, "status", channel_id=GUILD_CHANNEL_ID)
        )
        await fake.wait_for(lambda: done == [True])
    assert posted(fake, GUILD_CHANNEL_ID) == []
    assert posted(fake, fake.dm_channels[ALICE_ID]) == ["Public answer", "Private answer"]
    assert len(fake.find("POST", CALLBACK)) == 1  # no second try on a dead interaction


async def test_key_form_falls_back_to_dm_when_the_interaction_is_gone(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")
    reached: list[bool] = []

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        reached.append(await adapter.ask_secret(event, request("tok-gone")))

    fake.fail_next("POST", CALLBACK, 404, {"code": 10062, "message": "Unknown interaction"})
    async with running(fake) as (_, script):
        script.behaviour = behaviour
        await fake.dispatch(
            "INTERACTION_CREATE",
            fake.slash(
                alice,
                "key",
                [{"type": 1, "name": "add", "options": []}],
                channel_id=GUILD_CHANNEL_ID,
            ),
        )
        await fake.wait_for(lambda: len(reached) == 1)
    assert reached == [True]
    dm = fake.dm_channels[ALICE_ID]
    offer = fake.find("POST", rf"^/channels/{dm}/messages$")[0].body
    assert offer["components"][0]["components"][0]["custom_id"] == "s:tok-gone"
    assert posted(fake, GUILD_CHANNEL_ID) == []


async def test_refused_command_sync_is_logged_and_the_bot_still_serves(
    fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail_next("PUT", r"/commands$", 400, {"code": 50035, "message": "Invalid Form Body"})
    async with running(fake) as (adapter, _):
        assert adapter.client.is_ready()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["discord: slash command sync refused: HTTP 400 code 50035"]


def _slow_duplicate_check(adapter: DiscordAdapter, seconds: float) -> None:
    """The adapter's duplicate check (a database write waiting its turn) takes ``seconds``."""
    checked = adapter._dedup

    class SlowCheck:
        async def first_time(self, key: str) -> bool:
            await asyncio.sleep(seconds)
            return await checked.first_time(key)

    adapter._dedup = SlowCheck()  # type: ignore[assignment]


async def test_the_defer_window_counts_from_the_interactions_arrival(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow duplicate check (a database write waiting its turn) eats into Discord's 3 s: the
    adapter defers ``defer_after`` after the interaction arrived, not after the check."""
    monkeypatch.setattr(Route, "BASE", Route.BASE)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)
    release = asyncio.Event()

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        await release.wait()
        await adapter.respond(event, Reply(text="Status: all good", sensitive=True))

    async with FakeDiscord(strict=True, interaction_window=2.0) as fake:
        alice = fake.user(ALICE_ID, "alice")
        async with running(fake, defer_after=1.0) as (adapter, script):
            _slow_duplicate_check(adapter, 1.6)
            script.behaviour = behaviour
            await fake.dispatch(
                "INTERACTION_CREATE", fake.slash(alice, "status", channel_id=GUILD_CHANNEL_ID)
            )
            await fake.wait_for(lambda: len(callbacks(fake)) == 1, limit=10)
            release.set()
            await fake.wait_for(lambda: len(fake.find("POST", r"^/webhooks/")) == 1, limit=10)
        # Deferred at 1.6 s, inside the 2 s window (at 1.6 + 1.0 s it would have been refused).
        assert [c.status for c in fake.find("POST", CALLBACK)] == [200]
        assert callbacks(fake) == [{"type": 5, "data": {"flags": EPHEMERAL}}]


async def test_an_interaction_past_discords_window_is_answered_by_message_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deferral came too late (Discord says "Unknown interaction"): the answer goes
    straight to the person's DM, without a follow-up Discord would refuse as well."""
    monkeypatch.setattr(Route, "BASE", Route.BASE)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        await asyncio.sleep(0.3)  # the adapter has deferred meanwhile
        await adapter.respond(event, Reply(text="Status: all good", sensitive=True))

    async with FakeDiscord(strict=True, interaction_window=1.0) as fake:
        alice = fake.user(ALICE_ID, "alice")
        async with running(fake, defer_after=0.5) as (adapter, script):
            _slow_duplicate_check(adapter, 1.3)  # past the fake's 1 s window
            script.behaviour = behaviour
            await fake.dispatch(
                "INTERACTION_CREATE", fake.slash(alice, "status", channel_id=GUILD_CHANNEL_ID)
            )
            dm = fake.dm_channel(ALICE_ID)
            await fake.wait_for(
                lambda: bool(fake.find("POST", rf"^/channels/{dm}/messages$")), limit=10
            )
        assert [c.status for c in fake.find("POST", CALLBACK)] == [404]
        assert fake.find("POST", r"^/webhooks/") == []
        [sent] = fake.find("POST", rf"^/channels/{dm}/messages$")
        assert sent.body["content"] == "Status: all good"


async def test_a_refused_key_past_discords_window_is_explained_in_the_dm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The form's interaction is gone when the key is refused: the reason still reaches the
    person (their DM, privately), not a follow-up Discord would refuse."""
    monkeypatch.setattr(Route, "BASE", Route.BASE)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)

    async def behaviour(adapter: DiscordAdapter, event: Event) -> Outcome:
        await asyncio.sleep(0.3)  # the adapter has tried to defer meanwhile
        return Outcome(secret_error="That key was refused by Anthropic.")

    async with FakeDiscord(strict=True, interaction_window=1.0) as fake:
        alice = fake.user(ALICE_ID, "alice")
        async with running(fake, defer_after=0.5) as (adapter, script):
            _slow_duplicate_check(adapter, 1.3)  # past the fake's 1 s window
            script.behaviour = behaviour
            await fake.dispatch(
                "INTERACTION_CREATE",
                fake.modal_submit(
                    alice, "k:tok-late", {"secret": "sk-whatever"}, channel_id=GUILD_CHANNEL_ID
                ),
            )
            dm = fake.dm_channel(ALICE_ID)
            await fake.wait_for(
                lambda: bool(fake.find("POST", rf"^/channels/{dm}/messages$")), limit=10
            )
        assert [c.status for c in fake.find("POST", CALLBACK)] == [404]
        assert fake.find("POST", r"^/webhooks/") == []
        [sent] = fake.find("POST", rf"^/channels/{dm}/messages$")
        assert sent.body["content"] == discord.utils.escape_markdown(
            "That key was refused by Anthropic."
        )


async def test_a_silent_command_past_discords_window_clears_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flow that says nothing gets its interaction acknowledged and the "thinking…" cleared;
    once Discord has forgotten the interaction there is nothing to clear, so nothing is tried."""
    monkeypatch.setattr(Route, "BASE", Route.BASE)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)
    async with FakeDiscord(strict=True, interaction_window=1.0) as fake:
        alice = fake.user(ALICE_ID, "alice")
        async with running(fake, defer_after=0.5) as (adapter, script):
            _slow_duplicate_check(adapter, 1.3)  # past the fake's 1 s window
            await fake.dispatch(
                "INTERACTION_CREATE", fake.slash(alice, "status", channel_id=GUILD_CHANNEL_ID)
            )
            await fake.wait_for(lambda: len(fake.find("POST", CALLBACK)) == 1, limit=10)
            await asyncio.sleep(0.3)
        assert [c.status for c in fake.find("POST", CALLBACK)] == [404]
        assert fake.find("DELETE", r"^/webhooks/") == []
        assert len(script.events) == 1
