"""Engine and session factory for SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for PostgreSQL to accept a connection."""

log = logging.getLogger("byokbot.db")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the writer; busy_timeout waits out a concurrent writer
    # instead of failing with "database is locked".
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    # Crypto-shredding: a deleted row (a wrapped data key, a ciphertext) is overwritten with
    # zeros in the page instead of lingering in free space.
    cur.execute("PRAGMA secure_delete=ON")
    cur.close()


class Database:
    """Owns the async engine; ``session()`` opens a unit of work."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if not self.is_sqlite:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
            if url.startswith("postgresql+asyncpg"):
                kwargs["connect_args"] = {"timeout": CONNECT_TIMEOUT}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.session = async_sessionmaker(self.engine, expire_on_commit=False, class_=AsyncSession)

    async def purge_deleted(self) -> None:
        """After a shredding delete: make sure no copy of the deleted rows stays on disk.

        SQLite keeps the old frames in the write-ahead log until a checkpoint; TRUNCATE copies
        the (zeroed, thanks to ``secure_delete``) pages into the file and empties the log.
        PostgreSQL keeps dead tuples until VACUUM; autovacuum gets there, the README says how
        to hurry it.
        """
        if not self.is_sqlite:
            return
        async with self.engine.connect() as conn:
            result = await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            busy = result.scalar()
        if busy:
            # A reader held the log; the next checkpoint (at most 1000 pages away) finishes it.
            log.warning("sqlite: the write-ahead log could not be emptied after a deletion")

    async def dispose(self) -> None:
        await self.engine.dispose()
