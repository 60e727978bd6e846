"""Engine and session factory for SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from core.rawdb import PG_PREFIX, PgStatements, RawDatabase, SQLiteRaw, Statements, sqlite_path

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
        self._raw: RawDatabase | None = None

    def raw(self) -> RawDatabase | None:
        """The same database by its driver (``core.rawdb``), for the budget and the proxy.

        SQLite: its own connection and thread on the file. PostgreSQL (asyncpg): this
        engine's pool, so the bot opens no second one. None for an in-memory SQLite, whose
        one connection is the database.
        """
        if self._raw is None:
            path = sqlite_path(self.url)
            if path:
                sqlite = SQLiteRaw(self.url, path)
                weakref.finalize(self, sqlite.pool.shutdown, wait=False)
                self._raw = sqlite
            elif self.url.startswith(PG_PREFIX):
                self._raw = _EngineRaw(self)
        return self._raw

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


class _EngineRaw:
    """A ``RawDatabase`` on the engine's pooled asyncpg connections."""

    is_sqlite = False

    def __init__(self, db: Database) -> None:
        self.url = db.url
        self._engine = db.engine

    @contextlib.asynccontextmanager
    async def _driver(self) -> AsyncIterator[Any]:
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            yield raw.driver_connection

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._driver() as conn:
            return await PgStatements(conn).fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        async with self._driver() as conn:
            row = await conn.fetchrow(sql, *args)
            return None if row is None else tuple(row)

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._driver() as conn:
            return await PgStatements(conn).execute(sql, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Statements]:
        async with self._driver() as conn, conn.transaction():
            yield PgStatements(conn)

    def raw(self) -> RawDatabase:
        return self

    async def close(self) -> None:
        return None  # the engine's pool is the bot's, disposed with it
