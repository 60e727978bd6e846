"""Scenario tests: the real discord.py client against the loopback fake Discord."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.discord.adapter import CommandCatalog, DiscordAdapter
from core.chat import Button, ButtonStyle, Event, EventKind, Outcome, Reply, SecretRequest
from tests.fakes.discord_harness import CANARY_TOKEN, running
from tests.fakes.discord_server import APP_ID, GUILD_CHANNEL_ID, GUILD_ID, FakeDiscord

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
            "delete",
            "help",
            "key",
            "link",
            "model",
            "pause",
            "persona",
            "plan",
            "reset",
            "resume",
            "start",
            "status",
            "stop",
            "usage",
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


async def test_onboarding_with_buttons_and_ephemeral_choice(fake: FakeDiscord) -> None:
    """/start in a channel -> plan buttons; Alice presses one -> a private confirmation."""
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

    async with running(fake) as (adapter, script):
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
    assert start["data"].get("flags", 0) & EPHEMERAL == 0
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

    async with running(fake) as (adapter, script):
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
    assert confirm["data"]["content"] == "Saved sk-ant-…" + key[-4:]
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
