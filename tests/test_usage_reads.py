"""Usage is written after the reply; a read right after it still counts that reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from core.bookkeeping import DeferredUsage, WriteBehind
from core.db import Database, upgrade
from core.ports import ManualClock
from core.usage import UsageLedger


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    await upgrade(db_url)
    database = Database(db_url)
    yield database
    await database.dispose()


class SlowLedger(UsageLedger):
    """Writes take a while, as on a busy database."""

    async def record(
        self, tenant_id: str, model: str, input_tokens: int, output_tokens: int
    ) -> None:
        await asyncio.sleep(0.3)
        await super().record(tenant_id, model, input_tokens, output_tokens)


async def test_a_read_waits_for_the_usage_still_queued(db: Database) -> None:
    clock = ManualClock(datetime(2026, 3, 10, 12, tzinfo=UTC))
    ledger = SlowLedger(db, clock)
    writer = WriteBehind()
    ledger.pending_writes = writer.drained
    await DeferredUsage(ledger, writer).record("t1", "m", 10, 5)
    days = await ledger.month("t1")  # at once, while the write is still queued
    assert [(d.input_tokens, d.output_tokens) for d in days] == [(10, 5)]
    await writer.close()


async def test_a_stuck_write_delays_a_read_only_boundedly(db: Database) -> None:
    clock = ManualClock(datetime(2026, 3, 10, 12, tzinfo=UTC))
    ledger = UsageLedger(db, clock)
    ledger.SETTLE_SECONDS = 0.2
    never = asyncio.Event()
    ledger.pending_writes = never.wait
    assert await ledger.month("t1") == []
