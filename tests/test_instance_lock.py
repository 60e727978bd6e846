"""The instance lock: serving bots share it; master-key maintenance takes it alone."""

from __future__ import annotations

from core.db import Database
from core.db.instance import InstanceLock, wait_shared


async def test_bots_share_and_maintenance_waits_for_none(db_url: str) -> None:
    dbs = [Database(db_url) for _ in range(3)]
    first, second, maintenance = (InstanceLock(db) for db in dbs)
    try:
        assert await first.hold_shared()
        assert await second.hold_shared()
        assert not await maintenance.try_exclusive()
        await first.release()
        assert not await maintenance.try_exclusive()
        await second.release()
        assert await maintenance.try_exclusive()
        # A bot starting during maintenance waits, then gives up with a clear answer.
        assert not await wait_shared(InstanceLock(dbs[0]), within=0.3)
        await maintenance.release()
        await maintenance.release()  # idempotent
        late = InstanceLock(dbs[0])
        assert await wait_shared(late, within=0.3)
        await late.release()
    finally:
        for db in dbs:
            await db.dispose()


async def test_an_in_memory_database_needs_no_lock() -> None:
    db = Database("sqlite+aiosqlite:///:memory:")
    try:
        assert await InstanceLock(db).try_exclusive()
        assert await InstanceLock(db).try_exclusive()
    finally:
        await db.dispose()
