"""Token usage per tenant, day and model: recorded after each reply, summarised for ``usage``.

A managed tenant's voice notes are rows of their own, model ``voice:<transcription model>``,
whose ``input_tokens`` count seconds of audio: kept out of the token sums, shown as a line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from core.db import Database
from core.db.models import UsageRow
from core.ports import Clock

VOICE_PREFIX = "voice:"
_NOT_VOICE = UsageRow.model.not_like(VOICE_PREFIX + "%")


@dataclass(frozen=True, slots=True)
class DayUsage:
    """Tokens on one day."""

    day: date
    input_tokens: int
    output_tokens: int
    requests: int


class UsageLedger:
    """Upserts one row per (tenant, day, model); one statement per reply."""

    # A reply's usage is written after the reply (core.bookkeeping): a read waits this long
    # for writes still queued, so /usage right after a reply counts it.
    SETTLE_SECONDS = 2.0

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self.pending_writes: Callable[[], Awaitable[None]] | None = None

    async def settled(self) -> None:
        """Wait (boundedly) for this process's queued usage writes; reads call it first."""
        if self.pending_writes is not None:
            try:
                await asyncio.wait_for(self.pending_writes(), self.SETTLE_SECONDS)
            except TimeoutError:
                return  # a slow database: show what is stored, the rest comes later

    async def record(
        self, tenant_id: str, model: str, input_tokens: int, output_tokens: int
    ) -> None:
        insert = sqlite_insert if self._db.is_sqlite else pg_insert
        stmt = insert(UsageRow).values(
            tenant_id=tenant_id,
            day=self._clock.now().date(),
            model=model[:200],
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            requests=1,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant_id", "day", "model"],
            set_={
                "input_tokens": UsageRow.input_tokens + stmt.excluded.input_tokens,
                "output_tokens": UsageRow.output_tokens + stmt.excluded.output_tokens,
                "requests": UsageRow.requests + 1,
            },
        )
        async with self._db.session() as s, s.begin():
            await s.execute(stmt)

    async def record_voice(self, tenant_id: str, model: str, seconds: int) -> None:
        """One transcribed voice note of ``seconds`` (as billed) with ``model``."""
        await self.record(tenant_id, VOICE_PREFIX + model, seconds, 0)

    async def voice_month(self, tenant_id: str) -> tuple[int, int]:
        """``(voice notes, seconds of audio)`` transcribed this calendar month."""
        start = self._clock.now().date().replace(day=1)
        await self.settled()
        async with self._db.session() as s:
            row = (
                await s.execute(
                    select(func.sum(UsageRow.requests), func.sum(UsageRow.input_tokens)).where(
                        UsageRow.tenant_id == tenant_id,
                        UsageRow.day >= start,
                        UsageRow.model.like(VOICE_PREFIX + "%"),
                    )
                )
            ).first()
        return (int(row[0] or 0), int(row[1] or 0)) if row is not None else (0, 0)

    async def month(self, tenant_id: str) -> list[DayUsage]:
        """Per-day totals for the current calendar month, oldest first."""
        today = self._clock.now().date()
        start = today.replace(day=1)
        await self.settled()
        async with self._db.session() as s:
            rows = await s.execute(
                select(
                    UsageRow.day,
                    func.sum(UsageRow.input_tokens),
                    func.sum(UsageRow.output_tokens),
                    func.sum(UsageRow.requests),
                )
                .where(UsageRow.tenant_id == tenant_id, UsageRow.day >= start)
                .group_by(UsageRow.day)
                .order_by(UsageRow.day)
            )
            return [DayUsage(d, int(i or 0), int(o or 0), int(r or 0)) for d, i, o, r in rows.all()]


@dataclass(frozen=True, slots=True)
class ModelDay:
    """Tokens of one model on one day (for the chart's cost estimate)."""

    day: date
    model: str
    input_tokens: int
    output_tokens: int


async def model_days(ledger: UsageLedger, tenant_id: str, start: date, end: date) -> list[ModelDay]:
    """Per-day, per-model totals with ``start <= day < end``, oldest first."""
    await ledger.settled()
    async with ledger._db.session() as s:
        rows = await s.execute(
            select(
                UsageRow.day,
                UsageRow.model,
                func.sum(UsageRow.input_tokens),
                func.sum(UsageRow.output_tokens),
            )
            .where(
                UsageRow.tenant_id == tenant_id,
                UsageRow.day >= start,
                UsageRow.day < end,
                _NOT_VOICE,
            )
            .group_by(UsageRow.day, UsageRow.model)
            .order_by(UsageRow.day)
        )
        return [ModelDay(d, str(m), int(i or 0), int(o or 0)) for d, m, i, o in rows.all()]
