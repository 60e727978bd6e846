"""Budget leases on SQLite and PostgreSQL: room for a tenant's next requests in one row.

The caps and the rate limit hold exactly as with one reservation per request (SECURITY 12);
usage is committed within a tick; idle and closed leases are given back; a dead process's
lease is swept like any reservation.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.budget import Budget, CapReached, Cost, RateLimitExceeded, Reservation
from core.db import Database
from core.db.models import BudgetRow, ReservationRow
from core.ports import ManualClock
from tests.test_budget import START, add_tenant, open_db, plans

LEASE = 32


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await open_db(db_url)
    await add_tenant(database, "t1")
    yield database
    await database.dispose()


async def open_rows(db: Database) -> int:
    async with db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(ReservationRow)) or 0)


async def budget_row(db: Database, tenant: str) -> BudgetRow:
    async with db.session() as s:
        row = await s.get(BudgetRow, tenant)
        assert row is not None
        return row


async def test_requests_after_the_first_share_one_lease_and_everything_is_given_back(
    db: Database,
) -> None:
    budget = Budget(db, plans(tokens=1_000_000), ManualClock(START), lease_requests=LEASE)
    held = []
    for _ in range(20):
        r = await budget.reserve("t1", "managed", Cost(100, 0))
        held.append(r)
        await budget.settle(r, Cost(60, 0), plan_id="managed")
    assert held[0].lease is None  # nothing known of the tenant yet: reserved alone
    assert all(r.lease is held[1].lease is not None for r in held[1:])
    assert await open_rows(db) == 1  # the lease, holding room for its next requests
    row = await budget_row(db, "t1")
    assert row.tokens_spent == 20 * 60  # an awaited settle has committed
    assert row.tokens_reserved == LEASE * 100 - 19 * 60  # less what its requests used
    s = await budget.summary("t1", "managed")  # gives the idle lease back
    assert (s.spent.tokens, s.tokens_reserved) == (1_200, 0)
    assert await open_rows(db) == 0
    assert (await budget_row(db, "t1")).window_requests == 20  # unused slots given back


async def test_an_idle_lease_is_given_back_by_itself(db: Database) -> None:
    budget = Budget(db, plans(tokens=1_000_000), ManualClock(START), lease_requests=LEASE)
    for _ in range(3):
        r = await budget.reserve("t1", "managed", Cost(100, 0))
        budget.settle_soon(r, Cost(100, 0), plan_id="managed")  # as the proxy settles
    await asyncio.sleep(0.2)
    assert await open_rows(db) == 1
    assert (await budget_row(db, "t1")).tokens_spent == 100  # leased usage: not yet committed
    await asyncio.sleep(1.2)  # unused for longer than a lease is kept
    row = await budget_row(db, "t1")
    assert (row.tokens_spent, row.tokens_reserved, row.window_requests) == (300, 0, 3)
    assert await open_rows(db) == 0


async def test_a_leased_cap_is_spent_to_the_last_request_and_never_past_it(
    db: Database,
) -> None:
    """SECURITY 12 with leases: the room a lease holds comes back when the cap is near."""
    budget = Budget(db, plans(tokens=10_000), ManualClock(START), lease_requests=LEASE)
    admitted = refused = 0
    for _ in range(150):
        try:
            r = await budget.reserve("t1", "managed", Cost(100, 0))
        except CapReached:
            refused += 1
            continue
        admitted += 1
        budget.settle_soon(r, Cost(100, 0), plan_id="managed")
    assert (admitted, refused) == (100, 50)
    s = await budget.summary("t1", "managed")
    assert (s.spent.tokens, s.tokens_reserved) == (10_000, 0)


async def test_a_lease_gives_its_free_room_back_while_its_requests_are_in_flight(
    db: Database,
) -> None:
    """A large request near the cap gets the room a lease holds, with a leased stream open."""
    budget = Budget(db, plans(tokens=10_000), ManualClock(START), lease_requests=LEASE)
    first = await budget.reserve("t1", "managed", Cost(100, 0))
    await budget.settle(first, Cost(100, 0), plan_id="managed")
    streaming = await budget.reserve("t1", "managed", Cost(100, 0))
    assert streaming.lease is not None
    assert (await budget_row(db, "t1")).tokens_reserved > 1_000  # the lease's room
    large = await asyncio.wait_for(budget.reserve("t1", "managed", Cost(9_000, 0)), 1.0)
    row = await budget_row(db, "t1")
    assert (row.tokens_spent, row.tokens_reserved) == (100, 9_100)
    await budget.settle(streaming, Cost(80, 0), plan_id="managed")
    await budget.settle(large, Cost(8_000, 0), plan_id="managed")
    await budget.drain()
    row = await budget_row(db, "t1")
    assert (row.tokens_spent, row.tokens_reserved) == (8_180, 0)
    assert await open_rows(db) == 0


async def test_racing_requests_on_leases_never_overshoot_the_cap(db: Database) -> None:
    """Two budgets (as two proxy processes) with leases, 300 requests each held open."""
    a = Budget(db, plans(tokens=20_000), ManualClock(START), lease_requests=LEASE)
    b = Budget(db, plans(tokens=20_000), ManualClock(START), lease_requests=LEASE)
    for budget in (a, b):  # each has seen the tenant once: leases from here on
        r = await budget.reserve("t1", "managed", Cost(100, 0))
        await budget.settle(r, Cost(100, 0), plan_id="managed")

    async def one(budget: Budget) -> Reservation | None:
        try:
            return await budget.reserve("t1", "managed", Cost(100, 0))
        except CapReached:
            return None

    sides = [budget for _ in range(300) for budget in (a, b)]
    got = await asyncio.gather(*(one(budget) for budget in sides))
    held = [(budget, r) for budget, r in zip(sides, got, strict=True) if r is not None]
    assert any(r.lease is not None for _, r in held)
    assert 200 + 100 * len(held) <= 20_000
    row = await budget_row(db, "t1")
    assert row.tokens_spent + row.tokens_reserved <= 20_000
    for budget, r in held:
        budget.settle_soon(r, Cost(100, 0), plan_id="managed")
    await a.drain()
    await b.drain()
    row = await budget_row(db, "t1")
    assert (row.tokens_spent, row.tokens_reserved) == (200 + 100 * len(held), 0)
    assert await open_rows(db) == 0


async def test_the_rate_limit_holds_with_leases_and_unused_requests_come_back(
    db: Database,
) -> None:
    clock = ManualClock(START)
    budget = Budget(db, plans(tokens=10**9, rpm=64), clock, lease_requests=LEASE)
    for _ in range(64):
        r = await budget.reserve("t1", "managed", Cost(10, 0))
        budget.settle_soon(r, Cost(10, 0), plan_id="managed")
    with pytest.raises(RateLimitExceeded):
        await budget.reserve("t1", "managed", Cost(10, 0))
    clock.advance(60)  # the next minute
    for _ in range(10):
        r = await budget.reserve("t1", "managed", Cost(10, 0))
        budget.settle_soon(r, Cost(10, 0), plan_id="managed")
    await budget.summary("t1", "managed")
    row = await budget_row(db, "t1")
    assert (row.window_requests, row.tokens_spent, row.tokens_reserved) == (10, 740, 0)


async def test_a_lease_outliving_its_ttl_is_swept_and_a_late_settle_counts_once(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock(START)
    budget = Budget(
        db,
        plans(tokens=100_000),
        clock,
        reservation_ttl=timedelta(seconds=60),
        lease_requests=LEASE,
    )
    first = await budget.reserve("t1", "managed", Cost(100, 0))
    await budget.settle(first, Cost(100, 0), plan_id="managed")
    arm = Budget._arm
    monkeypatch.setattr(Budget, "_arm", lambda self, delay=0.0: None)  # as if stuck: no renewal
    slow = await budget.reserve("t1", "managed", Cost(1_000, 0))
    assert slow.lease is not None
    clock.advance(61)
    assert await budget.sweep_orphans() == 1
    assert (await budget_row(db, "t1")).tokens_reserved == 0
    monkeypatch.setattr(Budget, "_arm", arm)
    await budget.settle(slow, Cost(700, 0), plan_id="managed")
    s = await budget.summary("t1", "managed")
    assert (s.spent.tokens, s.tokens_reserved) == (800, 0)
    assert await open_rows(db) == 0


async def test_a_trial_cap_is_not_served_from_a_lease_taken_under_the_plan(
    db: Database,
) -> None:
    budget = Budget(db, plans(tokens=1_000_000), ManualClock(START), lease_requests=LEASE)
    for _ in range(2):
        r = await budget.reserve("t1", "managed", Cost(100, 0))
        budget.settle_soon(r, Cost(100, 0), plan_id="managed")
    assert r.lease is not None
    with pytest.raises(CapReached):
        await budget.reserve("t1", "managed", Cost(100, 0), token_cap=250)
    await budget.drain()
    s = await budget.summary("t1", "managed")
    assert (s.spent.tokens, s.tokens_reserved) == (200, 0)


_LEASE_WORKER = """
import asyncio, sys
from datetime import datetime, UTC
from core.budget import Budget, Cost
from core.config import PlanSettings
from core.db import Database
from core.ports import ManualClock

async def main() -> None:
    db = Database(sys.argv[1])
    plan = PlanSettings(id="managed", name="M", price_usd=39.0, byok=False, models=("m",),
                        requests_per_minute=1000, monthly_token_cap=100_000)
    budget = Budget(db, {"managed": plan}, ManualClock(datetime(2026, 3, 10, 12, tzinfo=UTC)),
                    lease_requests=32)
    first = await budget.reserve("t1", "managed", Cost(100, 0))
    await budget.settle(first, Cost(100, 0), plan_id="managed")
    leased = await budget.reserve("t1", "managed", Cost(1_000, 0))
    assert leased.lease is not None
    print("leased", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_process_killed_while_holding_a_lease_leaks_nothing_after_the_sweep(
    db: Database, db_url: str
) -> None:
    root = Path(__file__).resolve().parents[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _LEASE_WORKER,
        db_url,
        stdout=asyncio.subprocess.PIPE,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line == b"leased\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert (await budget_row(db, "t1")).tokens_reserved > 1_000  # the lease's room, held
    clock = ManualClock(START)
    budget = Budget(db, plans(tokens=100_000), clock, reservation_ttl=timedelta(minutes=15))
    clock.advance(3600)
    assert await budget.sweep_orphans(clock.now()) == 1
    s = await budget.summary("t1", "managed")
    assert (s.spent.tokens, s.tokens_reserved) == (100, 0)
    assert await open_rows(db) == 0
