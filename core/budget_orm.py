"""Budget statements through SQLAlchemy, for a database with no raw driver path.

That is an in-memory or URI SQLite database (tests, a throwaway bot): the one connection the
engine holds is the database, so nothing else may open it. Every file-backed SQLite and
asyncpg database goes the raw way (``core.budget._RawStore``), in the bot as in the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db import Database
from core.db.models import BudgetRow, ReservationRow, TenantRow

if TYPE_CHECKING:
    from core.budget import BudgetState, Reservation
    from core.config import PlanSettings

_SQLITE_WRITERS: weakref.WeakKeyDictionary[Database, asyncio.Lock] = weakref.WeakKeyDictionary()


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _micros(usd: float) -> int:
    return round(usd * 1_000_000)


class OrmStore:
    """The budget's statements as SQLAlchemy Core, in transactions of the engine."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = _SQLITE_WRITERS.setdefault(db, asyncio.Lock()) if db.is_sqlite else None

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction. On SQLite, writers of this process take turns first.

        SQLite admits one writer at a time anyway; a writer that finds the lock held sleeps in
        the busy handler (up to ~100 ms a round), which at concurrency costs far more than
        queueing here.
        """
        if self._lock is None:
            async with self._db.engine.begin() as conn:
                yield conn
            return
        async with self._lock, self._db.engine.begin() as conn:
            yield conn

    # --- the request path (no fast writer for this database) ---------------------------------

    async def reserve(
        self,
        plan: PlanSettings,
        r: Reservation,
        period: date,
        minute: int,
        now: datetime,
        ttl: timedelta,
        *,
        alone: bool = False,
    ) -> tuple[int, int, int] | None:
        conds = [
            BudgetRow.tenant_id == r.tenant_id,
            BudgetRow.period_start == period,
            or_(
                BudgetRow.window_minute != minute,
                BudgetRow.window_requests < plan.requests_per_minute,
            ),
        ]
        if plan.monthly_token_cap is not None:
            conds.append(
                BudgetRow.tokens_spent + BudgetRow.tokens_reserved + r.tokens
                <= plan.monthly_token_cap
            )
        if plan.monthly_usd_cap is not None:
            conds.append(
                BudgetRow.usd_micros_spent + BudgetRow.usd_micros_reserved + r.usd_micros
                <= _micros(plan.monthly_usd_cap)
            )
        stmt = (
            update(BudgetRow)
            .where(*conds)
            .values(
                tokens_reserved=BudgetRow.tokens_reserved + r.tokens,
                usd_micros_reserved=BudgetRow.usd_micros_reserved + r.usd_micros,
                # SET expressions read the row's old values on both databases.
                window_requests=case(
                    (BudgetRow.window_minute == minute, BudgetRow.window_requests + 1), else_=1
                ),
                window_minute=minute,
                updated_at=now,
            )
            .returning(
                BudgetRow.tokens_spent + BudgetRow.tokens_reserved,
                BudgetRow.usd_micros_spent + BudgetRow.usd_micros_reserved,
                BudgetRow.window_requests,
            )
        )
        async with self._write() as s:
            got = (await s.execute(stmt)).first()
            if got is None:
                return None
            await s.execute(
                insert(ReservationRow).values(
                    id=r.id,
                    tenant_id=r.tenant_id,
                    tokens=r.tokens,
                    usd_micros=r.usd_micros,
                    created_at=now,
                    expires_at=now + ttl,
                )
            )
            return int(got[0]), int(got[1]), int(got[2])

    async def settle(
        self, r: Reservation, tokens: int, micros: int, now: datetime
    ) -> tuple[int, int, int, date] | None:
        async with self._write() as s:
            gone = await s.execute(delete(ReservationRow).where(ReservationRow.id == r.id))
            if not _rowcount(gone) and tokens == 0 and micros == 0:
                return None
            # Only the one who deleted the row gives the reservation back (the sweeper may have).
            held_t, held_u = (r.tokens, r.usd_micros) if _rowcount(gone) else (0, 0)
            row = (
                await s.execute(
                    update(BudgetRow)
                    .where(BudgetRow.tenant_id == r.tenant_id)
                    .values(
                        tokens_reserved=BudgetRow.tokens_reserved - held_t,
                        usd_micros_reserved=BudgetRow.usd_micros_reserved - held_u,
                        tokens_spent=BudgetRow.tokens_spent + tokens,
                        usd_micros_spent=BudgetRow.usd_micros_spent + micros,
                        updated_at=now,
                    )
                    .returning(
                        BudgetRow.tokens_spent,
                        BudgetRow.usd_micros_spent,
                        BudgetRow.alerted_pct,
                        BudgetRow.period_start,
                    )
                )
            ).first()
        if row is None:
            return None
        return int(row[0]), int(row[1]), int(row[2]), row[3]

    # --- the rest ----------------------------------------------------------------------------

    async def row(self, tenant_id: str) -> BudgetState | None:
        from core.budget import BudgetState

        async with self._db.session() as s:
            row = await s.get(BudgetRow, tenant_id)
        if row is None:
            return None
        return BudgetState(
            row.tenant_id,
            row.period_start,
            row.tokens_spent,
            row.usd_micros_spent,
            row.tokens_reserved,
            row.usd_micros_reserved,
            row.window_minute,
            row.window_requests,
        )

    async def plan_of(self, tenant_id: str) -> str | None:
        async with self._db.session() as s:
            return await s.scalar(select(TenantRow.plan).where(TenantRow.id == tenant_id))

    async def prepare(self, tenant_id: str, period: date, now: datetime) -> None:
        insert_ = sqlite_insert if self._db.is_sqlite else pg_insert
        async with self._write() as s:
            created = await s.execute(
                insert_(BudgetRow)
                .values(
                    tenant_id=tenant_id,
                    period_start=period,
                    tokens_spent=0,
                    usd_micros_spent=0,
                    tokens_reserved=0,
                    usd_micros_reserved=0,
                    alerted_pct=0,
                    window_minute=0,
                    window_requests=0,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["tenant_id"])
            )
            if _rowcount(created) == 0:
                await s.execute(_roll_stmt(period, now, tenant_id=tenant_id))

    async def release(self, rid: str, tenant_id: str, tokens: int, micros: int) -> bool:
        async with self._write() as s:
            gone = await s.execute(delete(ReservationRow).where(ReservationRow.id == rid))
            if not _rowcount(gone):
                return False
            await s.execute(
                update(BudgetRow)
                .where(BudgetRow.tenant_id == tenant_id)
                .values(
                    tokens_reserved=BudgetRow.tokens_reserved - tokens,
                    usd_micros_reserved=BudgetRow.usd_micros_reserved - micros,
                )
            )
            return True

    async def claim_alert(self, tenant_id: str, threshold: int, period: date) -> bool:
        async with self._write() as s:
            claimed = await s.execute(
                update(BudgetRow)
                .where(
                    BudgetRow.tenant_id == tenant_id,
                    BudgetRow.alerted_pct < threshold,
                    BudgetRow.period_start == period,
                )
                .values(alerted_pct=threshold)
            )
        return bool(_rowcount(claimed))

    async def expired(self, at: datetime, limit: int) -> list[tuple[str, str, int, int]]:
        async with self._db.session() as s:
            rows = (
                await s.execute(
                    select(
                        ReservationRow.id,
                        ReservationRow.tenant_id,
                        ReservationRow.tokens,
                        ReservationRow.usd_micros,
                    )
                    .where(ReservationRow.expires_at < at)
                    .limit(limit)
                )
            ).all()
        return [(str(a), str(b), int(c), int(d)) for a, b, c, d in rows]

    async def roll(self, period: date, now: datetime) -> int:
        async with self._write() as s:
            return _rowcount(await s.execute(_roll_stmt(period, now)))

    async def totals(self, period: date) -> tuple[int, int, int, int, int]:
        async with self._db.session() as s:
            n, tokens, micros, reserved = (
                await s.execute(
                    select(
                        func.count(),
                        func.coalesce(func.sum(BudgetRow.tokens_spent), 0),
                        func.coalesce(func.sum(BudgetRow.usd_micros_spent), 0),
                        func.coalesce(func.sum(BudgetRow.tokens_reserved), 0),
                    ).where(BudgetRow.period_start == period)
                )
            ).one()
            open_count = await s.scalar(select(func.count()).select_from(ReservationRow))
        return int(n), int(tokens), int(micros), int(reserved), int(open_count or 0)


def _roll_stmt(period: date, now: datetime, *, tenant_id: str | None = None) -> Any:
    conds = [BudgetRow.period_start < period]
    if tenant_id is not None:
        conds.append(BudgetRow.tenant_id == tenant_id)
    # Reservations in flight stay reserved; they settle into the new period.
    return (
        update(BudgetRow)
        .where(*conds)
        .values(
            period_start=period, tokens_spent=0, usd_micros_spent=0, alerted_pct=0, updated_at=now
        )
    )
