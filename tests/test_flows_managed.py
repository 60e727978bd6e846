"""The managed plan end to end: router -> tenant's agent process -> metering proxy -> upstream."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import texts
from core.chat import Platform
from core.config import parse_config
from tests.canaries import anthropic_key, openai_key
from tests.fakes.llm_server import FakeLLMServer
from tests.harness import Person, World


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


PLATFORM_ANTHROPIC = anthropic_key()
PLATFORM_OPENAI = openai_key()


@pytest.fixture
async def world(
    db_url: str, tmp_path: Path, master_key_env: dict[str, str], fake: FakeLLMServer
) -> AsyncIterator[World]:
    config = parse_config(
        {
            "core": {"database_url": db_url, "admins": ["telegram:900"], "verify_keys_live": True},
            "providers": {
                "anthropic": {"base_url": fake.anthropic_url},
                "openai": {"base_url": fake.openai_url},
            },
            "plans": {
                "byok": {},
                # Tool definitions would add ~600 tokens to each request's estimate: this cap
                # is sized for plain requests.
                "managed": {
                    "monthly_token_cap": 600,
                    "monthly_usd_cap": 100.0,
                    "tools": {
                        "web_fetch": False,
                        "web_search": False,
                        "notes": False,
                        "tasks": False,
                    },
                },
            },
            # A managed plan is never free: a trial stands in for the payment here.
            "billing": {"plans": {"managed": {"trial_days": 30}}},
            "proxy": {
                "enabled": True,
                "port": _free_port(),
                "default_max_tokens": 20,
                "upstreams": {
                    "anthropic": {
                        "kind": "anthropic",
                        "base_url": fake.anthropic_url,
                        "key_env": "PLATFORM_ANTHROPIC",
                    },
                    "openai": {
                        "kind": "openai-compatible",
                        "base_url": fake.openai_url,
                        "key_env": "PLATFORM_OPENAI",
                    },
                },
            },
            "agent": {"max_reply_tokens": 20},
        },
        source="test.toml",
        base_dir=tmp_path,
    )
    env = {
        **master_key_env,
        "PLATFORM_ANTHROPIC": PLATFORM_ANTHROPIC,
        "PLATFORM_OPENAI": PLATFORM_OPENAI,
    }
    w = await World.create(db_url, tmp_path, env, runtime=True, config=config)
    await w.app.start_proxy()
    yield w
    await w.close()


def _streamed(person: Person) -> list[str]:
    return [s.reply.text for s in person.sent if s.kind == "stream"]


async def test_managed_tenant_talks_through_the_proxy_until_the_cap(
    world: World, fake: FakeLLMServer
) -> None:
    ada = world.person()
    await ada.command("/plan managed")
    assert ada.last == texts.MANAGED_READY
    await ada.say("hello")
    assert _streamed(ada) == ["echo: hello"]
    # The upstream saw the platform's key, never a tenant key; the agent held only a token.
    assert set(fake.keys()) == {PLATFORM_ANTHROPIC}
    assert fake.requests[-1].body["model"] == "claude-sonnet-4-5"

    await ada.command("/usage")
    assert "Plan allowance this month:" in ada.last
    assert "of 600 tokens" in ada.last

    await ada.command("/model")
    await ada.press("gpt-4.1-mini (managed)")
    await ada.say("via openai")
    assert _streamed(ada)[-1] == "echo: via openai"
    assert fake.requests[-1].path == "/v1/chat/completions"
    assert fake.requests[-1].key == PLATFORM_OPENAI

    # Spend the allowance: alerts at 50/80/100 % arrive once each, then the agent says why.
    # (/reset keeps each request small, so the reservation tracks real use closely.)
    for i in range(300):
        await ada.command("/reset")
        await ada.say(f"message number {i} with some words to count")
        if ada.last == texts.AGENT_UNAVAILABLE["cap_reached"]:
            break
    alerts = [t for t in ada.transcript() if t.startswith(("Heads-up", "Your plan's allowance"))]
    # 50% first; 80% only if a reply still fitted between 80% and the point where the next
    # reservation no longer fits; then the 100% notice, each exactly once.
    percents = [a.split("%")[0].split()[-1] for a in alerts if a.startswith("Heads-up")]
    assert percents in (["50"], ["50", "80"])
    assert alerts[-1].startswith("Your plan's allowance for this month is used up")
    assert len(alerts) == len(percents) + 1
    assert ada.last == texts.AGENT_UNAVAILABLE["cap_reached"]

    op = world.person(uid="900", name="Op")
    await op.command("/admin tenant telegram:1")
    assert "This month:" in op.last
    await op.command("/admin stats")
    assert "Managed usage this month:" in op.last
    await op.command("/admin models")
    assert "managed: claude-sonnet-4-5 via anthropic" in op.last


async def test_a_byok_tenant_never_reaches_the_proxy(world: World, fake: FakeLLMServer) -> None:
    bob = world.person(Platform.DISCORD, "2", "Bob")
    key = anthropic_key()
    await bob.command("/plan byok")
    await bob.command("/key add anthropic")
    await bob.submit_secret(key, via_modal=True)
    await bob.say("direct please")
    assert _streamed(bob) == ["echo: direct please"]
    assert set(fake.keys()) == {key}
    server = world.app.proxy_server
    assert server is not None
    assert await world.app.budget.totals() is not None
    assert (await world.app.budget.totals()).tenants == 0  # nothing was metered


async def test_leaving_the_managed_plan_revokes_the_agents_token(world: World) -> None:
    ada = world.person()
    await ada.command("/plan managed")
    await ada.say("hi")
    tenant = await world.app.services.tenants.find(ada.user.identity)
    assert tenant is not None
    token = await world.app.proxy_tokens.issue(tenant.id)
    assert await world.app.proxy_tokens.resolve(token.reveal()) == tenant.id
    await ada.command("/plan byok")
    assert await world.app.proxy_tokens.resolve(token.reveal()) is None
