"""The billing job's round (``Billing.tick``) as the number of subscriptions grows.

Each run fills a fresh SQLite database with N active subscriptions whose periods end weeks
from now (nothing due) plus 10 that are due (their period ended: cancelled by the round), and
times rounds of the job. Baselines in the same run: N = 100, and at each N the read the job
made before ``due_at`` (migration 0015): every live subscription, loaded as the old round did.
With the indexed ``due_at`` a round costs what is due, so the ratio of the large N to N = 100
stays near 1 while the old read grows with N.

    python bench/billing_tick.py           # N = 100 and 20,000; 15 rounds each
    python bench/billing_tick.py --quick   # N = 100 and 2,000; 5 rounds (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _common import machine, median, table
from sqlalchemy import select

from core.billing import Billing, SubState
from core.config import parse_config
from core.credentials import Credentials
from core.db import Database, upgrade
from core.db.models import SubscriptionRow, TenantRow
from core.plans import PlanCatalog
from core.ports import ManualClock
from core.tenants import Tenants
from core.vault import MasterKeyRing, Vault

START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DUE = 10


async def fill(db: Database, n: int, clock: ManualClock) -> None:
    now = clock.now()
    async with db.session() as s, s.begin():
        for i in range(n + DUE):
            tid = f"t{i:07d}"
            s.add(
                TenantRow(id=tid, plan="managed", status="active", created_at=now, updated_at=now)
            )
        await s.flush()  # no ORM relationship orders the inserts: tenants first (foreign key)
        for i in range(n + DUE):
            tid = f"t{i:07d}"
            ends = now + (timedelta(hours=-1) if i < DUE else timedelta(days=20 + i % 10))
            s.add(
                SubscriptionRow(
                    tenant_id=tid,
                    plan="managed",
                    state="active",
                    provider="grant",
                    period_start=now - timedelta(days=10),
                    period_end=ends,
                    auto_renew=False,
                    updated_at=now,
                    due_at=ends,
                )
            )


LIVE = [SubState.TRIAL.value, SubState.ACTIVE.value, SubState.PAST_DUE.value]


async def read_all_live(db: Database) -> int:
    """The baseline: the read of the round before ``due_at``, every live subscription."""
    async with db.session() as s:
        rows = (
            await s.scalars(select(SubscriptionRow).where(SubscriptionRow.state.in_(LIVE)))
        ).all()
        return len(rows)


async def measure(n: int, rounds: int) -> tuple[float, float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'b.db'}"
        await upgrade(url)
        cfg = parse_config({"proxy": {"enabled": True}}, source="bench.toml", base_dir=Path(tmp))
        db = Database(url)
        clock = ManualClock(START)
        creds = Credentials(db, Vault(MasterKeyRing({1: bytes(32)}, primary=1)), clock)
        tenants = Tenants(db, creds, PlanCatalog(cfg.plans), clock, cache_seconds=0)
        billing = Billing(db, tenants, cfg, clock)
        try:
            await fill(db, n, clock)
            t0 = time.perf_counter()
            moved = await billing.tick()  # the round with DUE transitions
            first = (time.perf_counter() - t0) * 1000
            times, old = [], []
            for _ in range(rounds):  # nothing due: what every later round costs
                t0 = time.perf_counter()
                assert await billing.tick() == 0
                times.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                assert await read_all_live(db) == n
                old.append((time.perf_counter() - t0) * 1000)
            return first, median(times), median(old), moved
        finally:
            await db.dispose()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    big, rounds = (2_000, 5) if args.quick else (20_000, 15)
    print(machine())
    rows = []
    idle: dict[int, float] = {}
    old: dict[int, float] = {}
    for n in (100, big):
        first, idle[n], old[n], moved = await measure(n, rounds)
        if moved != DUE:
            raise SystemExit(f"the due round moved {moved} subscriptions, not {DUE}")
        rows.append([n, DUE, moved, f"{first:.2f}", f"{idle[n]:.3f}", f"{old[n]:.3f}"])
    print(
        table(
            [
                "subscriptions",
                "due",
                "moved",
                "due round ms",
                "idle round ms (median)",
                "baseline: read all live ms (median)",
            ],
            rows,
        )
    )
    print(f"idle round, N={big} / N=100: {idle[big] / idle[100]:.2f}")
    print(f"baseline read, N={big} / N=100: {old[big] / old[100]:.2f}")
    print(f"idle round / baseline read at N={big}: {idle[big] / old[big]:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
