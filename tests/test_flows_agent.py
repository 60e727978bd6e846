"""Talking to a real agent process through the router, against a loopback fake provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import texts
from core.chat import Platform
from core.config import parse_config
from core.keys import fingerprint
from core.secret import Secret
from tests.canaries import anthropic_key, openai_key
from tests.fakes.llm_server import FakeLLMServer
from tests.harness import Person, World


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
async def world(
    sqlite_url: str, tmp_path: Path, master_key_env: dict[str, str], fake: FakeLLMServer
) -> AsyncIterator[World]:
    config = parse_config(
        {
            "core": {
                "database_url": sqlite_url,
                "admins": ["telegram:900"],
                "verify_keys_live": True,
            },
            "providers": {
                "anthropic": {"base_url": fake.anthropic_url},
                "openai": {"base_url": fake.openai_url},
            },
            "agent": {"request_timeout_seconds": 2},
        },
        source="test.toml",
        base_dir=tmp_path,
    )
    w = await World.create(sqlite_url, tmp_path, master_key_env, runtime=True, config=config)
    yield w
    await w.close()


async def _byok(person: Person, key: str, provider: str = "anthropic") -> None:
    await person.command("/plan byok")
    await person.command(f"/key add {provider}")
    await person.say(key)
    assert "Key saved" in person.last


def _streamed(person: Person) -> list[str]:
    return [s.reply.text for s in person.sent if s.kind == "stream"]


async def test_a_whole_conversation(world: World, fake: FakeLLMServer) -> None:
    ada = world.person()
    key = anthropic_key()
    await _byok(ada, key)
    await ada.say("hello")
    assert _streamed(ada) == ["echo: hello"]
    assert ada.messenger.typing_in == [ada.dm.id]

    await ada.command("/model")
    assert ada.last == texts.MODEL_CHOOSE.format(current="claude-sonnet-4-5")
    assert [label for label, _ in ada.buttons()] == [
        "model-large (anthropic)",
        "model-small (anthropic)",
    ]
    await ada.press("model-small (anthropic)")
    assert ada.last == texts.MODEL_SET.format(model="model-small")
    await ada.command("/persona You answer like a pirate.")
    await ada.say("and now?")
    body = fake.requests[-1].body
    assert body["model"] == "model-small"
    # The persona comes first; the person's clock follows while schedule_task is offered.
    assert body["system"].split("\n\n")[0] == "You answer like a pirate."
    assert "Now it is 2026-01-01T00:00 (Thursday) UTC" in body["system"]
    assert [m["content"] for m in body["messages"]] == ["hello", "echo: hello", "and now?"]

    # Memory is stored encrypted under the tenant's data key: no plaintext in the row.
    from sqlalchemy import select

    from core.db.models import MemoryRow

    async with world.app.db.session() as session:
        blobs = (await session.scalars(select(MemoryRow.blob))).all()
    assert len(blobs) == 1
    assert b"and now?" not in blobs[0]
    assert b"pirate" not in blobs[0]

    await ada.command("/reset")
    assert ada.last == texts.RESET_DONE
    await ada.say("fresh start")
    assert [m["content"] for m in fake.requests[-1].body["messages"]] == ["fresh start"]
    # Usage is booked after each reply, off the reply path (issue 13).
    await world.app.bookkeeping.drained()
    await ada.command("/usage")
    assert "over 3 requests" in ada.last
    assert set(fake.keys()) == {key}


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (
            {"status": 429, "error_type": "rate_limit_error", "retry_after": "7"},
            texts.AGENT_UNAVAILABLE["rate_limited"].format(retry="in 7 seconds"),
        ),
        ({"status": 529, "error_type": "overloaded_error"}, texts.AGENT_UNAVAILABLE["overloaded"]),
        (
            {"status": 404, "error_type": "not_found_error"},
            texts.AGENT_UNAVAILABLE["model_not_found"].format(model="you chose"),
        ),
        ({"status": 200, "mode": "stall"}, texts.AGENT_UNAVAILABLE["timeout"]),
        ({"status": 200, "mode": "malformed"}, texts.AGENT_UNAVAILABLE["bad_response"]),
    ],
)
async def test_each_failure_has_its_answer(
    world: World, fake: FakeLLMServer, failure: dict[str, object], expected: str
) -> None:
    ada = world.person()
    await _byok(ada, anthropic_key())
    fake.fail(**failure)  # type: ignore[arg-type]
    await ada.say("hello")
    assert ada.last == expected
    await ada.say("hello again")  # and the next message works
    assert _streamed(ada)[-1] == "echo: hello again"


async def test_a_revoked_key_is_marked_dead_and_the_tenant_told_to_rotate(
    world: World, fake: FakeLLMServer
) -> None:
    ada = world.person()
    key = anthropic_key()
    await _byok(ada, key)
    fake.fail(401, error_type="authentication_error", times=5)
    await ada.say("hello")
    assert ada.last == texts.AGENT_UNAVAILABLE["invalid_key"]
    await ada.command("/key list")
    assert f"anthropic: {fingerprint(Secret(key))} — dead" in ada.last
    await ada.say("still there?")
    assert ada.last == texts.AGENT_UNAVAILABLE["invalid_key"]
    fake.failures.clear()
    await ada.command("/key rotate anthropic")
    await ada.say(anthropic_key())
    await ada.say("back?")
    assert _streamed(ada)[-1] == "echo: back?"


async def test_live_check_refuses_a_dead_key_and_reports_an_unreachable_provider(
    world: World, fake: FakeLLMServer
) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/key add anthropic")
    fake.fail(401, error_type="authentication_error")
    await ada.say(anthropic_key())
    assert ada.last.endswith(
        texts.KEY_REJECTED_LIVE.format(
            provider="Anthropic",
            reason="invalid or revoked",
            attempts_left=texts.ATTEMPTS_LEFT.format(n=2),
        )
    )
    fake.fail(529, error_type="overloaded_error")
    await ada.say(anthropic_key())
    assert "I couldn't reach Anthropic to check the key (overloaded)" in ada.last
    key = anthropic_key()
    await ada.say(key)
    assert "Key saved" in ada.last


async def test_two_tenants_at_once_each_with_their_own_key(
    world: World, fake: FakeLLMServer
) -> None:
    ada, bob = world.person(uid="1"), world.person(Platform.DISCORD, "2", "Bob")
    ada_key, bob_key = anthropic_key(), openai_key()
    await _byok(ada, ada_key)
    await bob.command("/plan byok")
    await bob.command("/key add openai")
    await bob.submit_secret(bob_key, via_modal=True)
    fake.requests.clear()
    await asyncio.gather(
        *(ada.say(f"ada {i}") for i in range(4)), *(bob.say(f"bob {i}") for i in range(4))
    )
    for r in fake.requests:
        last = r.body["messages"][-1]["content"]
        assert r.key == (ada_key if last.startswith("ada") else bob_key)
    assert len(fake.requests) == 8
    assert sorted(_streamed(bob)) == [f"echo: bob {i}" for i in range(4)]


async def test_pause_and_delete_stop_the_agent(world: World) -> None:
    ada = world.person()
    await _byok(ada, anthropic_key())
    await ada.say("hi")
    supervisor = world.app.supervisor
    assert supervisor is not None
    assert [s.tenant_id for s in supervisor.status()] != []
    await ada.command("/pause")
    assert supervisor.status() == []
    await ada.command("/resume")
    await ada.say("hi again")
    assert _streamed(ada)[-1] == "echo: hi again"
    await ada.command("/delete")
    await ada.press(texts.DELETE_YES)
    assert supervisor.status() == []


def test_usage_chart_is_a_png_with_this_month_last_month_and_caps() -> None:
    import struct
    from datetime import date

    from bot.charts import ChartSpec, previous_month, render, series

    this, priced = series(
        date(2026, 2, 1), [(date(2026, 2, 3), 150, 0.5), (date(2026, 2, 10), 15, None)]
    )
    last, _ = series(date(2026, 1, 1), [(date(2026, 1, 30), 99, None)])
    assert priced and this.tokens == {3: 150, 10: 15} and this.usd == {3: 0.5}
    assert last.tokens == {30: 99} and previous_month(date(2026, 1, 15)) == date(2025, 12, 1)
    png = render(ChartSpec(this, last, today=10, token_cap=5000, usd_cap=3.0, usd_label="spend"))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", png[16:24]) == (800, 600)
    # Without caps or prices the chart still draws (no dollar axis).
    bare = render(ChartSpec(this, last, today=10, priced=False))
    assert bare.startswith(b"\x89PNG") and bare != png


def test_list_prices_match_the_longest_prefix() -> None:
    from core.prices import cost_usd, price_of

    assert price_of("gpt-4.1-mini-2025-04-14") == (0.4, 1.6)
    assert price_of("gpt-4.1-2025") == (2.0, 8.0)
    assert price_of("some-unknown-model") is None
    assert cost_usd("claude-sonnet-4-5", 1_000_000, 0) == 3.0


async def test_managed_tenant_without_a_proxy_is_told_what_to_do(world: World) -> None:
    ada = world.person()
    # Without the metering proxy the managed plan is not offered, and asking for it is refused.
    outcome = await ada.command("/plan managed")
    assert outcome.refused
    assert ada.last == texts.PLAN_MANAGED_OFF.format(plan="Managed", byok="byok")
    assert world.config.proxy.enabled is False
    await ada.command("/plan byok")
    # A tenant put on it anyway (by an operator, or before the proxy was switched off).
    admin = world.person(uid="900", name="Op")
    await admin.command("/admin comp telegram:1 managed 30")
    assert "managed" in admin.last.lower()
    await ada.say("hello")
    assert ada.last == texts.AGENT_UNAVAILABLE["proxy_off"]


def test_a_failure_on_the_managed_path_is_told_as_ours() -> None:
    from bot.flows.agent import unavailable_text
    from core.errors import AgentUnavailable

    for reason in ("network", "timeout", "overloaded", "invalid_key", "bad_response"):
        said = unavailable_text(AgentUnavailable(reason), managed=True)
        assert "our side" in said, reason
        assert "your provider" not in said.lower() and "/key" not in said, reason
        assert unavailable_text(AgentUnavailable(reason)) == texts.AGENT_UNAVAILABLE[reason]
    capped = unavailable_text(AgentUnavailable("cap_reached"), managed=True)
    assert capped == texts.AGENT_UNAVAILABLE["cap_reached"]
