"""Transcripts through the real router: the Discord adapter, discord.py and the fake Discord."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route
from discord.utils import escape_markdown

from adapters.discord.adapter import DiscordAdapter
from bot import texts
from bot.app import App
from core.config import Config, parse_config
from core.keys import fingerprint
from core.ports import ManualClock
from core.secret import Secret
from tests.canaries import anthropic_key
from tests.fakes.discord_harness import CANARY_TOKEN, make_config
from tests.fakes.discord_server import APP_ID, GUILD_CHANNEL_ID, FakeDiscord

CALLBACK = r"^/interactions/\d+/[^/]+/callback$"
EPHEMERAL = 64
ALICE_ID = "700000000000000001"
BOB_ID = "700000000000000002"


class ScriptedAgents:
    """The agent port, answering every message with the same chunks."""

    def __init__(self, chunks: list[str]) -> None:
        self.chunks = chunks
        self.messages: list[str] = []

    async def reply(
        self, tenant_id: str, conversation: str, text: str, **_: object
    ) -> AsyncIterator[str]:
        self.messages.append(text)
        for chunk in self.chunks:
            yield chunk

    async def cancel(self, tenant_id: str, conversation: str) -> bool:
        return False

    async def reset(self, tenant_id: str, conversation: str) -> None:
        return None

    async def reconfigure(self, tenant_id: str) -> None:
        return None

    async def forget(self, tenant_id: str) -> None:
        return None


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    monkeypatch.setattr(Route, "BASE", Route.BASE)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)
    async with FakeDiscord() as server:
        yield server


def app_config(
    tmp_path: Path, fake: FakeDiscord, *, enabled: bool, verify_live: bool = False
) -> Config:
    data: dict[str, Any] = {
        "core": {
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'byokbot.db'}",
            "master_key_file": str(tmp_path / "master.key"),
            "verify_keys_live": verify_live,
        },
        "discord": {
            "enabled": enabled,
            "api_base_url": fake.api_base,
            "gateway_url": fake.gateway_url,
            "edit_interval": 0.05,
        },
    }
    return parse_config(data, source="test.toml", base_dir=tmp_path)


class Discordland:
    """byokbot with the Discord adapter, and people clicking around in the fake Discord."""

    def __init__(self, fake: FakeDiscord, app: App) -> None:
        self.fake = fake
        self.app = app

    def callbacks(self) -> list[dict[str, Any]]:
        return [c.body for c in self.fake.find("POST", CALLBACK)]

    def follow_ups(self) -> list[dict[str, Any]]:
        return [c.body for c in self.fake.find("POST", rf"^/webhooks/{APP_ID}/")]

    def answers(self) -> list[tuple[str, bool]]:
        """(text, ephemeral) of every interaction answer and follow-up, in order."""
        out: list[tuple[str, bool]] = []
        for c in self.fake.calls:
            body = c.body or {}
            if c.method != "POST":
                continue
            if c.path.startswith("/interactions/") and body.get("type") == 4:
                data = body["data"]
                out.append((data["content"], bool(data.get("flags", 0) & EPHEMERAL)))
            elif c.path.startswith(f"/webhooks/{APP_ID}/"):
                out.append((body["content"], bool(body.get("flags", 0) & EPHEMERAL)))
        return out

    def button_ids(self) -> dict[str, str]:
        """label -> custom id of every button the bot has shown so far."""
        found: dict[str, str] = {}
        for c in self.fake.calls:
            body = c.body if isinstance(c.body, dict) else {}
            data = body.get("data", body) if c.path.startswith("/interactions/") else body
            for row in (data or {}).get("components") or ():
                for comp in row.get("components") or ():
                    if "custom_id" in comp:
                        found[comp["label"]] = comp["custom_id"]
        return found

    async def interact(self, payload: dict[str, Any], *, answers: int) -> None:
        """Send an interaction and wait until ``answers`` callbacks + follow-ups exist."""
        await self.fake.dispatch("INTERACTION_CREATE", payload)
        await self.fake.wait_for(lambda: len(self.callbacks()) + len(self.follow_ups()) >= answers)


@pytest.fixture
def verify_live() -> bool:
    return False


@pytest.fixture
def defer_after() -> float:
    # Long enough that a loaded CI machine never defers a quick flow by accident.
    return 2.0


@pytest.fixture
async def land(
    fake: FakeDiscord,
    tmp_path: Path,
    master_key_env: dict[str, str],
    verify_live: bool,
    defer_after: float,
) -> AsyncIterator[Discordland]:
    agents = ScriptedAgents(["Hello", " Alice,", " how can", " I help?"])
    adapter = DiscordAdapter(make_config(fake, defer_after=defer_after), guild_ready_timeout=0.05)
    app = App(
        app_config(tmp_path, fake, enabled=False, verify_live=verify_live),
        env=master_key_env,
        clock=ManualClock(datetime(2026, 1, 1, tzinfo=UTC)),
        agents=agents,
        extra_adapters=[adapter],
        platforms=False,
    )
    await app.start()
    try:
        yield Discordland(fake, app)
    finally:
        await app.stop()


async def sign_up_and_add_key(land: Discordland, key: str) -> None:
    fake = land.fake
    alice = fake.user(ALICE_ID, "alice")
    await land.interact(fake.slash(alice, "start"), answers=1)
    await land.interact(fake.button(alice, land.button_ids()["BYOK"]), answers=3)
    await land.interact(fake.button(alice, land.button_ids()["Anthropic"]), answers=4)
    assert land.callbacks()[-1]["type"] == 9  # the key form
    token_id = land.callbacks()[-1]["data"]["custom_id"]
    await land.interact(
        fake.modal_submit(alice, token_id, {"secret": key}, channel_id=None), answers=5
    )


async def test_onboarding_and_key_modal_through_the_router(
    land: Discordland, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.INFO)
    key = anthropic_key()
    await sign_up_and_add_key(land, key)
    fp = fingerprint(Secret(key))
    welcome, public = land.answers()[0]
    assert welcome.startswith(texts.WELCOME)
    assert public is False
    assert land.answers()[1:] == [
        (texts.SIGNED_UP.format(plan="BYOK"), False),
        (texts.BYOK_NEEDS_KEY.format(plan="BYOK"), False),
        # Discord markdown: a fingerprint's "_" arrives escaped, as the person reads it.
        (escape_markdown(texts.KEY_STORED.format(fingerprint=fp, provider="Anthropic")), True),
    ]
    assert [b["type"] for b in land.callbacks()] == [4, 4, 9, 4]
    modal = land.callbacks()[2]["data"]
    assert modal["title"] == texts.KEY_ASK_TITLE.format(provider="Anthropic")
    sent = json.dumps([(c.path, c.body) for c in land.fake.calls])
    assert key not in sent
    assert key not in caplog.text
    assert CANARY_TOKEN not in caplog.text
    tenant = await land.app.services.tenants.find(f"discord:{ALICE_ID}")
    assert tenant is not None
    stored = await land.app.services.credentials.reveal(tenant.id, "anthropic")
    assert stored is not None
    assert stored[1].reveal() == key


async def test_expired_key_form_is_answered_ephemerally(land: Discordland) -> None:
    fake = land.fake
    alice = fake.user(ALICE_ID, "alice")
    await land.interact(fake.slash(alice, "start"), answers=1)
    await land.interact(fake.button(alice, land.button_ids()["BYOK"]), answers=3)
    await land.interact(fake.button(alice, land.button_ids()["Anthropic"]), answers=4)
    token_id = land.callbacks()[-1]["data"]["custom_id"]
    clock = land.app.clock
    assert isinstance(clock, ManualClock)
    clock.advance(3600)
    await land.interact(
        fake.modal_submit(alice, token_id, {"secret": anthropic_key()}, channel_id=None),
        answers=5,
    )
    text, ephemeral = land.answers()[-1]
    assert ephemeral is True
    # Discord names the option: /key add provider:<provider>.
    assert text == texts.INTAKE_EXPIRED_GENERIC.replace("/key add ", "/key add provider:")


async def test_someone_elses_button_is_refused(land: Discordland) -> None:
    fake = land.fake
    alice, bob = fake.user(ALICE_ID, "alice"), fake.user(BOB_ID, "bob")
    await land.interact(fake.slash(alice, "start", channel_id=GUILD_CHANNEL_ID), answers=1)
    byok = land.button_ids()["BYOK"]
    await land.interact(fake.button(bob, byok, channel_id=GUILD_CHANNEL_ID), answers=2)
    # Only Bob sees the refusal (ephemeral): the channel is not told about his mistake.
    assert land.answers()[-1] == (texts.NOT_YOUR_BUTTON, True)
    assert await land.app.services.tenants.find(f"discord:{BOB_ID}") is None


async def test_agent_chat_in_dm_streams_through_the_router(land: Discordland) -> None:
    fake = land.fake
    await sign_up_and_add_key(land, anthropic_key())
    alice = fake.user(ALICE_ID, "alice")
    await fake.dispatch("MESSAGE_CREATE", fake.message(alice, "hi there"))
    dm = fake.dm_channels[ALICE_ID]

    def final() -> str | None:
        texts_by_id: dict[str, str] = {}
        for c in fake.calls:
            if c.path == f"/channels/{dm}/messages" and c.method == "POST":
                texts_by_id[c.result["id"]] = c.body["content"]
            elif c.path.startswith(f"/channels/{dm}/messages/") and c.method == "PATCH":
                texts_by_id[c.path.rsplit("/", 1)[1]] = c.body["content"]
        return next(iter(texts_by_id.values()), None) if len(texts_by_id) == 1 else None

    await fake.wait_for(lambda: final() == "Hello Alice, how can I help?")
    assert fake.find("POST", rf"^/channels/{dm}/typing$") != []
    agents = land.app.services.agents
    assert isinstance(agents, ScriptedAgents)
    assert agents.messages == ["hi there"]


async def test_key_pasted_in_a_channel_is_deleted_and_never_stored(land: Discordland) -> None:
    fake = land.fake
    alice = fake.user(ALICE_ID, "alice")
    key = anthropic_key()
    leak = fake.message(alice, f"here you go {key}", channel_id=GUILD_CHANNEL_ID)
    await fake.dispatch("MESSAGE_CREATE", leak)
    await fake.wait_for(lambda: len(fake.find("POST", r"^/channels/\d+/messages$")) == 1)
    assert [c.path for c in fake.find("DELETE", r"^/channels/")] == [
        f"/channels/{GUILD_CHANNEL_ID}/messages/{leak['id']}"
    ]
    warning = fake.find("POST", r"^/channels/\d+/messages$")[0].body["content"]
    assert warning.startswith("That message looked like it contained an API key")
    assert key not in json.dumps([(c.path, c.body) for c in fake.calls])
    agents = land.app.services.agents
    assert isinstance(agents, ScriptedAgents)
    assert agents.messages == []


async def test_enabled_discord_is_built_from_config_and_serves(
    fake: FakeDiscord, tmp_path: Path, master_key_env: dict[str, str]
) -> None:
    """The composition root's path: [discord] enabled + token env -> build -> start."""
    app = App(
        app_config(tmp_path, fake, enabled=True),
        env={**master_key_env, "DISCORD_BOT_TOKEN": CANARY_TOKEN},
    )
    await app.start()
    try:
        assert [a.platform.value for a in app.adapters] == ["discord"]
        alice = fake.user(ALICE_ID, "alice")
        await fake.dispatch("INTERACTION_CREATE", fake.slash(alice, "help"))
        await fake.wait_for(lambda: len(fake.find("POST", CALLBACK)) == 1)
    finally:
        await app.stop()
    body = fake.find("POST", CALLBACK)[0].body
    assert body["type"] == 4
    assert fake.find("PUT", rf"^/applications/{APP_ID}/commands$") != []


class SlowVerifier:
    """A live key check that takes as long as the test wants."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, provider: str, key: Secret) -> list[str]:
        await self.release.wait()
        return ["claude-sonnet-4-5"]


@pytest.mark.parametrize(("verify_live", "defer_after"), [(True, 1.0)])
async def test_slow_key_check_is_deferred_then_confirmed_privately(land: Discordland) -> None:
    """Verifying the key with the provider takes long: "thinking", then an ephemeral answer."""
    fake = land.fake
    verifier = SlowVerifier()
    land.app.services.verify_key = verifier
    alice = fake.user(ALICE_ID, "alice")
    key = anthropic_key()
    await land.interact(fake.slash(alice, "start", channel_id=GUILD_CHANNEL_ID), answers=1)
    byok = land.button_ids()["BYOK"]
    await land.interact(fake.button(alice, byok, channel_id=GUILD_CHANNEL_ID), answers=3)
    anthropic = land.button_ids()["Anthropic"]
    await land.interact(fake.button(alice, anthropic, channel_id=GUILD_CHANNEL_ID), answers=4)
    token_id = land.callbacks()[-1]["data"]["custom_id"]
    submit = fake.modal_submit(alice, token_id, {"secret": key}, channel_id=GUILD_CHANNEL_ID)
    await land.interact(submit, answers=5)
    assert land.callbacks()[-1] == {"type": 5, "data": {"flags": EPHEMERAL}}  # thinking…
    verifier.release.set()
    await fake.wait_for(lambda: len(land.follow_ups()) == 2)
    assert land.answers()[-1] == (
        escape_markdown(
            texts.KEY_STORED.format(fingerprint=fingerprint(Secret(key)), provider="Anthropic")
        ),
        True,
    )
    assert [b["type"] for b in land.callbacks()] == [4, 4, 9, 5]
    assert fake.find("POST", r"^/channels/") == []
