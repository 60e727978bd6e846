"""core.changes: NOTIFY on commit reaches a listener; job leases; the cache's generation."""

from __future__ import annotations

import asyncio

import pytest

from core.cache import TTLCache
from core.changes import FLOW, ChangeFeed, JobLeases, announce
from core.db import Database, upgrade
from core.flowstate import FlowStates
from core.ports import SystemClock
from core.scheduler import Job, Scheduler
from tests.fakes.agents import eventually


def test_a_value_read_before_an_invalidation_is_not_cached_after_it() -> None:
    cache: TTLCache[str, bool] = TTLCache(ttl=60)
    since = cache.generation
    cache.invalidate("ada")  # another replica's change arrives while we read
    cache.put("ada", True, since=since)
    assert cache.get("ada") == (False, None)
    cache.put("ada", True, since=cache.generation)
    assert cache.get("ada") == (True, True)


async def _announce_and_roll_back(db: Database) -> None:
    async with db.session() as s, s.begin():
        await announce(s, FLOW, "telegram:1")
        raise RuntimeError("rolled back")


async def test_a_committed_change_reaches_every_listener_and_a_rolled_back_one_none(
    db_url: str,
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("NOTIFY is PostgreSQL's; SQLite sends nothing")
    await upgrade(db_url)
    db = Database(db_url)
    feeds = [ChangeFeed(db_url), ChangeFeed(db_url)]
    heard: list[list[str]] = [[], []]
    try:
        for feed, got in zip(feeds, heard, strict=True):
            feed.on(FLOW, got.append)
            await feed.start()
            assert feed.connected.is_set()
        with pytest.raises(RuntimeError):
            await _announce_and_roll_back(db)
        async with db.session() as s, s.begin():
            await announce(s, FLOW, "telegram:4242")
        await eventually(lambda: all(h == ["telegram:4242"] for h in heard))
        assert heard == [["telegram:4242"], ["telegram:4242"]]
    finally:
        for feed in feeds:
            await feed.stop()
        await db.dispose()


async def test_a_flow_set_by_another_process_is_seen_despite_a_cached_none(db_url: str) -> None:
    await upgrade(db_url)
    a, b = Database(db_url), Database(db_url)
    clock = SystemClock()
    mine, theirs = FlowStates(a, clock), FlowStates(b, clock)
    feed = ChangeFeed(db_url) if not db_url.startswith("sqlite") else None
    try:
        if feed is not None:
            feed.on(FLOW, mine.changed)
            await feed.start()
        assert await mine.get("telegram:7") is None  # cached: no flow
        await theirs.set("telegram:7", "keys", "await_key")
        if feed is None:
            # SQLite: one process; a second one would see it after the cache's 5 seconds.
            assert await mine.get("telegram:7") is None
            return
        await eventually(lambda: feed.heard >= 1)
        state = await mine.get("telegram:7")
        assert state is not None and state.step == "await_key"
    finally:
        if feed is not None:
            await feed.stop()
        await a.dispose()
        await b.dispose()


async def test_of_two_replicas_ticking_one_job_only_the_lease_holder_runs_it(
    db_url: str,
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("leases are for replicas, which need PostgreSQL")
    await upgrade(db_url)
    db = Database(db_url)
    try:
        a, b = JobLeases(db.session, "a:1"), JobLeases(db.session, "b:2")
        assert await a.take("billing", 0.5)
        assert not await b.take("billing", 0.5)
        assert not await a.take("billing", 0.5)
        assert await b.take("expire-intake", 0.5)  # leases are per job
        await asyncio.sleep(0.6)  # the lease's length: it has run out now
        assert await b.take("billing", 0.5)

        runs: list[str] = []

        async def tick() -> None:
            runs.append("ran")

        scheduler = Scheduler([Job("run-tasks", 60, tick, once=True)], leases=a)
        once = dict(scheduler_jobs(scheduler))["run-tasks"]
        other = dict(scheduler_jobs(Scheduler([Job("run-tasks", 60, tick, once=True)], leases=b)))
        await once()
        await other["run-tasks"]()
        assert runs == ["ran"]
    finally:
        await db.dispose()


def scheduler_jobs(scheduler: Scheduler) -> list[tuple[str, object]]:
    return [(job.name, scheduler._runner(job)) for job in scheduler.jobs]
