"""The scheduled-task store's verdicts (``DatabaseTasks.add``) and claiming, on a real database."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from core.chat import Platform, UserRef
from core.config import Config
from core.credentials import Credentials
from core.db import Database, upgrade
from core.db.models import TaskRow
from core.plans import PlanCatalog
from core.ports import ManualClock
from core.tasks import DatabaseTasks
from core.tenants import Tenants
from core.vault import MasterKeyRing, Vault

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)  # 18:00 in Tokyo, a Wednesday


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    await upgrade(db_url)
    database = Database(db_url)
    yield database
    await database.dispose()


async def store(db: Database) -> tuple[DatabaseTasks, str, ManualClock]:
    clock = ManualClock(NOW)
    ring = MasterKeyRing.parse(base64.b64encode(os.urandom(32)).decode(), source="t")
    credentials = Credentials(db, Vault(ring), clock)
    tenants = Tenants(db, credentials, PlanCatalog(Config().plans), clock)
    tenant = await tenants.sign_up(UserRef(Platform.TELEGRAM, "1"), "byok", dm_chat_id=None)
    return DatabaseTasks(db, credentials, clock), tenant.id, clock


async def test_add_says_what_it_did_and_refusals_store_nothing(db: Database) -> None:
    tasks, tid, _ = await store(db)
    # Without a zone: kept and waiting (counted), but a malformed schedule is refused already.
    first = await tasks.add(tid, "c", "2026-12-03T09:00", "tea", limit=3)
    assert (first.outcome, first.waiting, first.next_run) == ("needs_timezone", 1, None)
    assert (await tasks.add(tid, "c", "0 8 * * *", "news", limit=3)).waiting == 2
    bad_cron = await tasks.add(tid, "c", "0 25 * * *", "x", limit=3)
    assert bad_cron.outcome == "bad" and "cron" in bad_cron.reason
    assert (await tasks.add(tid, "c", "tomorrow", "x", limit=3)).outcome == "bad"
    assert await tasks.set_timezone(tid, "Asia/Tokyo") == 2

    full = await tasks.add(tid, "c", "2026-12-04T09:00", "x", limit=2)
    assert full.outcome == "limit"
    cron = next(t for t in await tasks.of(tid) if t.when == "0 8 * * *")
    await tasks.cancel(tid, cron.id)
    kept = await tasks.add(tid, "c", "2026-12-04T09:00", "walk", limit=2)
    assert (kept.outcome, kept.tz) == ("added", "Asia/Tokyo")
    assert kept.next_run == datetime(2026, 12, 4, 0, 0, tzinfo=UTC)  # 09:00 Tokyo
    past = await tasks.add(tid, "c", "2026-12-02T17:59", "x", limit=5)
    assert (past.outcome, past.tz) == ("past", "Asia/Tokyo")
    never = await tasks.add(tid, "c", "0 0 30 2 *", "x", limit=5)
    assert (never.outcome, never.reason) == ("bad", "that cron expression never fires")
    assert sorted(t.when for t in await tasks.of(tid)) == ["2026-12-03T09:00", "2026-12-04T09:00"]


async def test_a_claimed_cron_with_no_later_time_is_deleted(db: Database) -> None:
    tasks, tid, clock = await store(db)
    await tasks.set_timezone(tid, "Asia/Tokyo")
    daily = await tasks.add(tid, "c", "0 8 * * *", "news", limit=5)
    assert daily.outcome == "added"
    # A row whose cron cannot fire again (stored by hand: add refuses such a schedule).
    odd = await tasks.add(tid, "c", "0 9 * * *", "odd", limit=5)
    assert odd.next_run is not None
    async with db.session() as s, s.begin():
        await s.execute(
            update(TaskRow).where(TaskRow.when == "0 9 * * *").values(when="0 0 30 2 *")
        )
    clock.advance(timedelta(days=1).total_seconds())
    claimed = sorted(t.prompt for t in await tasks.claim_due())
    assert claimed == ["news", "odd"]
    left = await tasks.of(tid)
    assert [(t.when, t.next_run is not None) for t in left] == [("0 8 * * *", True)]
