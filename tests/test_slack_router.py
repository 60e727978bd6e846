"""The whole journey in Slack through the real router, flows, storage and vault (bot.app.App).

Alice onboards with ``/byok start`` and plan buttons, hands over her key in the modal (a bad
one first), sees her Home tab, chats with her agent, and pastes a key in a channel by mistake.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.slack import SlackAdapter
from bot import texts
from bot.app import App
from core.chat import name_commands
from core.config import parse_config
from tests import canaries
from tests.fakes.slack_server import (
    BOT_TOKEN,
    PROXY_VARS,
    FakeSlack,
    block_action,
    event_callback,
    home_opened,
    message,
    slack_env,
    slash,
    view_submission,
)


class ScriptedAgents:
    """An agent that answers every message with the same chunks."""

    def __init__(self, chunks: tuple[str, ...]) -> None:
        self.chunks = chunks
        self.heard: list[str] = []

    async def reply(
        self, tenant_id: str, conversation: str, text: str, **_: object
    ) -> AsyncIterator[str]:
        self.heard.append(text)
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


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    server = FakeSlack()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def agents() -> ScriptedAgents:
    return ScriptedAgents(("Hi Alice", ", how can", " I help?"))


@pytest.fixture
async def app(fake: FakeSlack, agents: ScriptedAgents, tmp_path: Path) -> AsyncIterator[App]:
    data: dict[str, Any] = {
        "core": {
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'byok.db'}",
            "master_key_file": str(tmp_path / "master.key"),
            "verify_keys_live": False,
        },
        "slack": {"enabled": True, "api_base_url": fake.base_url, "edit_interval": 0.0},
    }
    config = parse_config(data, source="config.toml", base_dir=tmp_path)
    running = App(config=config, env=slack_env(), agents=agents)
    await running.start()
    yield running
    await running.stop()


def slack_of(app: App) -> SlackAdapter:
    [adapter] = app.adapters
    assert isinstance(adapter, SlackAdapter)
    return adapter


def buttons_of(call: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for b in call.get("blocks", []) if b["type"] == "actions" for e in b["elements"]]


async def test_onboarding_key_modal_home_and_chat(
    fake: FakeSlack, app: App, agents: ScriptedAgents
) -> None:
    slack = slack_of(app)
    canary = canaries.anthropic_key()

    # Alice (in her DM with the app): /byok start
    await fake.envelope("slash_commands", slash("start", channel="DUALICE"))
    await slack.drain()
    welcome = fake.calls_to("chat.postMessage")[-1]
    assert welcome["text"].startswith("Hi! I'm byokbot.")
    plans = {b["text"]["text"]: b for b in buttons_of(welcome)}
    byok = next(b for label, b in plans.items() if label.startswith("BYOK"))

    # She presses the BYOK plan button: signed up, asked which provider
    await fake.envelope("interactive", block_action(byok["value"], action_id=byok["action_id"]))
    await slack.drain()
    said = [c["text"] for c in fake.calls_to("chat.postMessage")]
    assert texts.SIGNED_UP.format(plan="BYOK") in said
    ask = fake.calls_to("chat.postMessage")[-1]
    assert ask["text"] == texts.BYOK_NEEDS_KEY.format(plan="BYOK")
    anthropic = next(b for b in buttons_of(ask) if "Anthropic" in b["text"]["text"])

    # Pressing "Anthropic" opens the key modal from that press's trigger
    await fake.envelope(
        "interactive",
        block_action(anthropic["value"], action_id=anthropic["action_id"], trigger="trig.prov"),
    )
    await slack.drain()
    [opened] = fake.calls_to("views.open")
    assert opened["trigger_id"] == "trig.prov"
    view = opened["view"]
    assert view["title"]["text"] == texts.KEY_ASK_TITLE.format(provider="Anthropic")

    # A wrong key: the refusal shows inside the modal
    ack = await fake.envelope("interactive", view_submission(view, "sk-nope"))
    assert ack["response_action"] == "errors"
    shape_refusal = texts.KEY_BAD_SHAPE.split("{provider}")[0]
    assert ack["errors"]["byok_secret_block"].startswith(shape_refusal)
    assert "Anthropic" in ack["errors"]["byok_secret_block"]

    # The real one: the modal closes; the DM confirms with the fingerprint only
    ack = await fake.envelope("interactive", view_submission(view, canary))
    await slack.drain()
    assert ack == {}
    confirmation = next(
        c["text"] for c in fake.calls_to("chat.postMessage") if c["text"].startswith("Key saved")
    )
    assert canary[-4:] in confirmation
    assert canary not in fake.outgoing_text()
    tenant = await app.services.tenants.find("slack:UALICE")
    assert tenant is not None
    [stored] = await app.services.credentials.list(tenant.id)
    assert (stored.provider, stored.status.value) == ("anthropic", "active")
    assert stored.fingerprint in confirmation

    # The Home tab shows her plan and key
    published = len(fake.calls_to("views.publish"))
    await fake.envelope("events_api", event_callback(home_opened()))
    # The listener runs after the ack and spawns the Home work only once dedup has answered.
    for _ in range(500):
        if len(fake.calls_to("views.publish")) > published:
            break
        await asyncio.sleep(0.01)
    await slack.drain()
    home = fake.calls_to("views.publish")[-1]["view"]
    shown = "\n".join(b["text"]["text"] for b in home["blocks"] if b["type"] == "section")
    assert "Plan: BYOK" in shown
    assert canary[-4:] in shown
    assert canary not in fake.outgoing_text()

    # She talks to her agent in the DM: a placeholder, then the streamed answer
    await fake.envelope("events_api", event_callback(message("hello agent")))
    await slack.drain()
    assert agents.heard == ["hello agent"]
    assert fake.calls_to("chat.postMessage")[-1]["text"] == "_thinking…_"
    assert fake.calls_to("chat.update")[-1]["text"] == "Hi Alice, how can I help?"


async def test_leak_guard_through_the_router(fake: FakeSlack, app: App) -> None:
    slack = slack_of(app)
    canary = canaries.anthropic_key()
    fake.fail("chat.delete", "cant_delete_message")
    leak = message(f"here: {canary}", channel="C0GENERAL", channel_type="channel")
    await fake.envelope("events_api", event_callback(leak))
    await slack.drain()
    assert [
        (c.method, c.args.get("ts"), c.token) for c in fake.calls if c.method == "chat.delete"
    ] == [("chat.delete", "1700000100.000100", BOT_TOKEN)]
    [warning] = fake.calls_to("chat.postEphemeral")
    assert (warning["channel"], warning["user"]) == ("C0GENERAL", "UALICE")
    # Slack's own command syntax: the app has one slash command, /byok.
    assert warning["text"] == name_commands(
        texts.LEAK_WARNING.format(deleted=texts.LEAK_NOT_DELETED), "/byok"
    )
    assert "/byok key rotate" in warning["text"]
    assert fake.calls_to("chat.postMessage") == []
    assert canary not in fake.outgoing_text()


async def test_channel_chatter_gets_no_answer(fake: FakeSlack, app: App) -> None:
    slack = slack_of(app)
    chatter = message("lunch anyone?", channel="C0GENERAL", channel_type="channel")
    await fake.envelope("events_api", event_callback(chatter))
    await slack.drain()
    assert [c.method for c in fake.calls if c.method.startswith("chat.")] == []


async def test_help_in_a_channel_is_ephemeral(fake: FakeSlack, app: App) -> None:
    slack = slack_of(app)
    await fake.envelope(
        "slash_commands", slash("help", channel="C0GENERAL", response_url=fake.response_url("h"))
    )
    await slack.drain()
    [(name, body)] = fake.responses
    assert (name, body["response_type"]) == ("h", "ephemeral")
    assert body["text"].startswith(texts.HELP[:20].replace("<", "&lt;").replace(">", "&gt;"))
