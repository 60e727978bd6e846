"""Router mechanics: the per-conversation lock, /stop bypassing it, rate limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import router as router_module
from bot.flows.base import Turn
from bot.router import RateLimiter
from core.chat import Outcome, Platform
from tests.harness import World


@pytest.fixture
async def world(
    sqlite_url: str, tmp_path: Path, master_key_env: dict[str, str]
) -> AsyncIterator[World]:
    w = await World.create(sqlite_url, tmp_path, master_key_env)
    yield w
    await w.close()


async def test_one_turn_at_a_time_per_conversation(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    order: list[str] = []

    async def slow(turn: Turn) -> Outcome | None:
        key = turn.event.conversation_key
        running[key] = running.get(key, 0) + 1
        peak[key] = max(peak.get(key, 0), running[key])
        order.append(turn.event.text)
        await asyncio.sleep(0.01)
        running[key] -= 1
        return None

    monkeypatch.setitem(router_module.COMMANDS, "help", slow)
    ada = world.person()
    bob = world.person(uid="2")
    await asyncio.gather(
        *(ada.command(f"/help {i}") for i in range(5)),
        *(bob.command(f"/help {i}") for i in range(5)),
    )
    assert peak == {
        ada.user.identity + "@" + ada.dm.id: 1,
        bob.user.identity + "@" + bob.dm.id: 1,
    }
    assert [t for t in order if t.startswith("/help")] == order
    assert len(order) == 10
    assert world.app.router._locks._locks == {}  # no lock outlives its conversation's turns


async def test_stop_is_not_queued_behind_a_streaming_reply(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    stopped = asyncio.Event()

    async def long_reply(turn: Turn) -> Outcome | None:
        await release.wait()
        return None

    async def stop(turn: Turn) -> Outcome | None:
        stopped.set()
        release.set()
        return None

    monkeypatch.setitem(router_module.COMMANDS, "help", long_reply)
    monkeypatch.setitem(router_module.COMMANDS, "stop", stop)
    ada = world.person(Platform.DISCORD)
    busy = asyncio.create_task(ada.command("/help"))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(ada.command("/stop"), timeout=5)
    await asyncio.wait_for(busy, timeout=5)
    assert stopped.is_set()


def test_rate_limiter_buckets_are_per_person() -> None:
    limiter = RateLimiter(per_minute=2)
    assert limiter.allow("a") == (True, False)
    assert limiter.allow("a") == (True, False)
    assert limiter.allow("a") == (False, True)
    assert limiter.allow("a") == (False, False)
    assert limiter.allow("b") == (True, False)


async def test_a_key_split_over_two_messages_is_caught_within_the_window(world: World) -> None:
    from tests.canaries import anthropic_key

    key = anthropic_key()
    ada = world.person()
    bob = world.person(uid="2")
    first = await ada.say(key[:13])  # a lone word that starts a key: never sent on
    assert first.refused
    # Someone else's message in between does not break the pair: the window is per chat.
    await bob.say("unrelated")
    second = await ada.say(key[13:])
    assert second.refused
    assert len(ada.messenger.deleted) == 2

    # Past the window the pair is not joined (the rest alone carries no key shape).
    world.app.router._recent = router_module._RecentTexts(window=0.0)
    other = anthropic_key()
    await ada.say(other[:54])
    await ada.say(other[54:])
    assert len(ada.messenger.deleted) == 3  # the first half only


def test_recent_texts_are_bounded() -> None:
    recent = router_module._RecentTexts(window=60.0, max_items=3)
    assert recent.swap("a", "1") == ""
    assert recent.swap("a", "2") == "1"
    for key in "bcd":
        recent.swap(key, key)
    assert len(recent._texts) <= 3
    assert recent.swap("a", "3") == ""  # "a" was the oldest and was dropped
