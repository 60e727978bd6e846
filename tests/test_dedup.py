"""Delivery deduplication in the database: across processes (replicas, restarts), with a TTL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from core.db import Database, upgrade
from core.db.models import DeliveryRow
from core.dedup import DatabaseDeduplicator, InMemoryDeduplicator
from core.ports import ManualClock


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    await upgrade(db_url)
    database = Database(db_url)
    yield database
    await database.dispose()


async def _rows(db: Database) -> int:
    async with db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(DeliveryRow)) or 0)


async def test_two_replicas_share_what_was_handled(db: Database) -> None:
    clock = ManualClock()
    one, two = DatabaseDeduplicator(db, clock), DatabaseDeduplicator(db, clock)
    assert await one.first_time("telegram:update:1")
    assert not await one.first_time("telegram:update:1")  # same process: memory
    assert not await two.first_time("telegram:update:1")  # another replica or a restart
    assert await two.first_time("telegram:update:2")
    assert not await one.first_time("telegram:update:2")


async def test_concurrent_deliveries_of_one_id_run_once(db: Database) -> None:
    clock = ManualClock()
    replicas = [DatabaseDeduplicator(db, clock) for _ in range(5)]
    results = await asyncio.gather(*(r.first_time("slack:event:Ev1") for r in replicas))
    assert sorted(results) == [False, False, False, False, True]


async def test_the_window_expires_and_old_rows_are_swept(db: Database) -> None:
    clock = ManualClock()
    first = DatabaseDeduplicator(db, clock, ttl_seconds=60, sweep_every=3)
    assert await first.first_time("a")
    clock.advance(61)
    later = DatabaseDeduplicator(db, clock, ttl_seconds=60, sweep_every=3)
    assert await later.first_time("a")  # past the window: a new delivery, the row is reused
    assert not await DatabaseDeduplicator(db, clock, ttl_seconds=60).first_time("a")
    assert await later.first_time("b")
    clock.advance(61)
    assert await later.first_time("c")  # the third insert sweeps "a" and "b"
    assert await _rows(db) == 1


async def test_long_ids_are_stored_hashed(db: Database) -> None:
    clock = ManualClock()
    key = "slack:message:" + "x" * 400
    assert await DatabaseDeduplicator(db, clock).first_time(key)
    assert not await DatabaseDeduplicator(db, clock).first_time(key)
    assert await DatabaseDeduplicator(db, clock).first_time(key + "y")


async def test_in_memory_deduplicator_still_works() -> None:
    dedup = InMemoryDeduplicator(max_items=2)
    assert await dedup.first_time("a")
    assert not await dedup.first_time("a")
