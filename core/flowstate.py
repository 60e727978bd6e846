"""Persisted flow state: where each person is in a multi-step flow, surviving restarts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete

from core.cache import LISTENING_SECONDS, TTLCache
from core.changes import FLOW, announce
from core.db import Database
from core.db.models import FlowStateRow
from core.ports import Clock

EXPIRED_KEPT_SECONDS = 86_400.0
"""How long an expired flow stays readable with ``get(expired=True)`` before the sweep."""


@dataclass(frozen=True, slots=True)
class FlowState:
    """A person's current step; ``data`` holds ids and choices, never a secret."""

    flow: str
    step: str
    data: Mapping[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None


class FlowStates:
    """Reads and writes one state per person (identity)."""

    def __init__(self, db: Database, clock: Clock, *, cache_seconds: float = 5.0) -> None:
        self._db = db
        self._clock = clock
        # Most messages come from people in no flow at all; remember that for a few seconds
        # (this process's own writes invalidate at once).
        self._none: TTLCache[str, bool] = TTLCache(ttl=cache_seconds)
        # While the change feed listens every flow change is heard: kept longer then.
        self.listening: Callable[[], bool] = lambda: False
        self.listening_seconds = LISTENING_SECONDS

    async def get(self, identity: str, *, expired: bool = False) -> FlowState | None:
        """The person's flow; an expired one too when ``expired`` is true.

        Expired flows are kept a day, so an answer that comes too late is told so rather than
        taken for something else (a key after its request expired is not a leak).
        """
        hit, _ = self._none.get(identity, ttl=self.listening_seconds if self.listening() else None)
        if hit:
            return None
        since = self._none.generation
        async with self._db.session() as s:
            row = await s.get(FlowStateRow, identity)
        if row is None:
            self._none.put(identity, True, since=since)
            return None
        expires = row.expires_at
        if expires is not None:
            expires = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
            if expires <= self._clock.now() and not expired:
                return None
        return FlowState(row.flow, row.step, dict(row.data), expires)

    async def set(
        self,
        identity: str,
        flow: str,
        step: str,
        *,
        data: Mapping[str, Any] | None = None,
        ttl: timedelta | None = None,
    ) -> None:
        now = self._clock.now()
        self._none.invalidate(identity)
        async with self._db.session() as s, s.begin():
            row = await s.get(FlowStateRow, identity)
            if row is None:
                row = FlowStateRow(identity=identity, flow=flow, step=step, updated_at=now)
                s.add(row)
            row.flow, row.step, row.data = flow, step, dict(data or {})
            row.expires_at = now + ttl if ttl is not None else None
            row.updated_at = now
            await announce(s, FLOW, identity)

    async def clear(self, identity: str) -> None:
        async with self._db.session() as s, s.begin():
            await s.execute(delete(FlowStateRow).where(FlowStateRow.identity == identity))
            await announce(s, FLOW, identity)

    def changed(self, identity: str | None = None) -> None:
        """Another replica changed ``identity``'s flow (None: anyone's, after a gap)."""
        if identity is None:
            self._none.clear()
        else:
            self._none.invalidate(identity)

    async def expire_due(self, *, keep_seconds: float = EXPIRED_KEPT_SECONDS) -> int:
        """Delete flows expired more than ``keep_seconds`` ago."""
        cutoff = self._clock.now() - timedelta(seconds=keep_seconds)
        async with self._db.session() as s, s.begin():
            res = await s.execute(delete(FlowStateRow).where(FlowStateRow.expires_at <= cutoff))
            return int(res.rowcount)  # type: ignore[attr-defined]
