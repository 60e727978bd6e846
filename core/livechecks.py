"""A bound on live key checks, so the bot is no oracle for testing other people's keys.

Each live check is one authenticated call to a provider with a key someone typed. Without a
bound, anyone could test attacker-chosen keys at the speed of opening key requests (3 tries
each, unlimited requests). ``LiveChecks.admit`` allows at most ``per_identity`` checks per
person per rolling hour and ``platform`` checks per hour for everyone together; the counts live
in the database, so they hold across restarts and replicas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

from sqlalchemy import delete, func, select, text

from core.db import Database
from core.db.models import LiveCheckRow
from core.ports import Clock

WINDOW: Final = timedelta(hours=1)
_PG_LOCK: Final = 0x6279_6F6B_6C63  # any constant: serialises admissions across replicas


class LiveCheckScope(StrEnum):
    """Which bound refused a check."""

    PERSON = "person"
    PLATFORM = "platform"


@dataclass(frozen=True, slots=True)
class LiveCheckRefused:
    """A check not made: which bound, its size, and how long until a check is free again."""

    scope: LiveCheckScope
    limit: int
    retry_after: timedelta

    @property
    def minutes(self) -> int:
        return max(1, math.ceil(self.retry_after.total_seconds() / 60))


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # SQLite drops the zone


class LiveChecks:
    """Counts live key checks per identity and in total over a rolling hour."""

    def __init__(self, db: Database, clock: Clock, *, per_identity: int, platform: int) -> None:
        self._db = db
        self._clock = clock
        self.per_identity = per_identity
        self.platform = platform

    async def admit(self, identity: str) -> LiveCheckRefused | None:
        """Record a check for ``identity`` and return None, or say why it may not happen."""
        now = self._clock.now()
        since = now - WINDOW
        async with self._db.session() as s, s.begin():
            if not self._db.is_sqlite:
                # SQLite serialises writers already; PostgreSQL needs the count and the insert
                # to be one step, or concurrent checks could pass the bound together.
                await s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
            await s.execute(delete(LiveCheckRow).where(LiveCheckRow.at <= since))
            mine = select(func.count(), func.min(LiveCheckRow.at)).where(
                LiveCheckRow.identity == identity, LiveCheckRow.at > since
            )
            count, oldest = (await s.execute(mine)).one()
            if count >= self.per_identity and oldest is not None:
                return LiveCheckRefused(
                    LiveCheckScope.PERSON, self.per_identity, _aware(oldest) + WINDOW - now
                )
            everyone = select(func.count(), func.min(LiveCheckRow.at)).where(
                LiveCheckRow.at > since
            )
            total, first = (await s.execute(everyone)).one()
            if total >= self.platform and first is not None:
                return LiveCheckRefused(
                    LiveCheckScope.PLATFORM, self.platform, _aware(first) + WINDOW - now
                )
            s.add(LiveCheckRow(identity=identity, at=now))
        return None
