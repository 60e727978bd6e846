"""The budget's SQLite write-ahead log stays bounded under a steady stream of reservations.

The request path commits on the event loop's thread and checkpoints on a worker thread. A
PASSIVE checkpoint never catches up with a writer that keeps committing meanwhile, so the log
was never started again: at ~500 requests a second it grew by megabytes a second, without end.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core import budget as budget_module
from core.budget import Budget, Cost
from core.ports import ManualClock
from core.rawdb import open_raw
from tests.test_budget import START, add_tenant, open_db, plans


async def test_the_log_is_started_again_while_reservations_keep_coming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(budget_module, "_CHECKPOINT_EVERY", 50)
    monkeypatch.setattr(budget_module, "_WAL_HOLD_BYTES", 2**20)
    url = f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"
    db = await open_db(url)
    for i in range(8):
        await add_tenant(db, f"t{i}")
    await db.dispose()
    raw = open_raw(url)
    assert raw is not None
    budget = Budget(raw, plans(tokens=10**12), ManualClock(START))
    wal = tmp_path / "b.db-wal"
    try:
        sizes = []
        settling = []
        for i in range(4000):
            reservation = await budget.reserve(f"t{i % 8}", "managed", Cost(100, 0))
            settling.append(budget.settle_soon(reservation, Cost(60, 0), plan_id="managed"))
            if i % 500 == 499:
                sizes.append(wal.stat().st_size)
                await asyncio.sleep(0)  # the loop keeps committing; checkpoints overlap it
        await asyncio.gather(*settling)
        # 4000 commits of ~3 pages each would be ~50 MB if the log were never started again;
        # once past 1 MiB, commits wait for a checkpoint, which catches up, and the log is
        # reused from its start.
        assert max(sizes) < 4 * 2**20, sizes
        row = await raw.fetchrow("SELECT sum(tokens_spent), sum(tokens_reserved) FROM budgets")
        assert row == (4000 * 60, 0)
    finally:
        await raw.close()
