"""Remembering which platform deliveries were already processed, so a redelivery is a no-op."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from datetime import timedelta
from typing import Any, Final, Protocol

from sqlalchemy import delete

from core.db import Database
from core.db.models import DeliveryRow
from core.ports import Clock

_MAX_KEY: Final = 200  # the column's width; longer ids are stored as their SHA-256


class Deduplicator(Protocol):
    """Answers "is this the first time we see this delivery?" atomically."""

    async def first_time(self, key: str) -> bool:
        """True exactly once per key (within the retention window)."""
        ...


class InMemoryDeduplicator:
    """Bounded, time-limited memory of delivery ids for one process.

    Platforms redeliver within minutes (Telegram webhooks, Slack retries, Discord resumes), so a
    window of an hour and 100k ids covers them with a few MiB at most.
    """

    def __init__(self, *, max_items: int = 100_000, ttl_seconds: float = 3600.0) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max = max_items
        self._ttl = ttl_seconds

    async def first_time(self, key: str) -> bool:
        now = time.monotonic()
        while self._seen:
            oldest_key, at = next(iter(self._seen.items()))
            if now - at < self._ttl and len(self._seen) < self._max:
                break
            del self._seen[oldest_key]
        if key in self._seen:
            return False
        self._seen[key] = now
        return True


class DatabaseDeduplicator:
    """Delivery ids in the database: a redelivery is recognised after a restart, by any replica.

    One ``INSERT … ON CONFLICT`` per delivery (SQLite and PostgreSQL): a new key is inserted, a
    key older than the window is taken over, a recent one is refused. The ids this process
    recorded are also remembered in memory, so a redelivery to the same process costs no
    round trip. Rows past the window are swept on insert, every ``sweep_every`` deliveries.
    """

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        ttl_seconds: float = 3600.0,
        sweep_every: int = 1000,
        max_local: int = 100_000,
    ) -> None:
        self._db = db
        self._clock = clock
        self._ttl = timedelta(seconds=ttl_seconds)
        self._sweep_every = sweep_every
        self._inserts = 0
        self._local = InMemoryDeduplicator(max_items=max_local, ttl_seconds=ttl_seconds)
        if db.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            self._insert: Any = sqlite_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            self._insert = pg_insert

    async def first_time(self, key: str) -> bool:
        if not await self._local.first_time(key):
            return False
        stored = (
            key if len(key) <= _MAX_KEY else "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        )
        now = self._clock.now()
        cutoff = now - self._ttl
        statement = (
            self._insert(DeliveryRow)
            .values(key=stored, seen_at=now)
            .on_conflict_do_update(
                index_elements=[DeliveryRow.key],
                set_={"seen_at": now},
                where=DeliveryRow.seen_at < cutoff,
            )
        )
        async with self._db.session() as s, s.begin():
            result = await s.execute(statement)
            fresh = bool(getattr(result, "rowcount", 0))
            self._inserts += 1
            if self._inserts % self._sweep_every == 0:
                await s.execute(delete(DeliveryRow).where(DeliveryRow.seen_at < cutoff))
        return fresh


class LateDeduplicator:
    """A ``Deduplicator`` to hand out before the real one exists; ``target`` is set later.

    Adapters are built before the database is opened; every call goes to ``target``.
    """

    def __init__(self) -> None:
        self.target: Deduplicator | None = None

    async def first_time(self, key: str) -> bool:
        if self.target is None:
            raise RuntimeError("a delivery arrived before the database was opened")
        return await self.target.first_time(key)
