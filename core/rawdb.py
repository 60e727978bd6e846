"""The database without SQLAlchemy, for ``byokbot proxy``: sqlite3 or asyncpg, SQL as text.

The standalone proxy touches a handful of tables (tokens, tenants, budgets, reservations) with
a handful of statements; SQLAlchemy and the ORM models cost it ~25 MiB of memory for that. So
its request path and jobs run on the drivers directly, with SQL text written once, in
PostgreSQL's positional style (``$1``), which SQLite also reads once the ``$`` becomes ``?``.
Dates and times are passed as ``date`` / ``datetime``: asyncpg takes them as they are; on
SQLite they become the text SQLAlchemy stores there (``2026-12-01 10:00:00.000000``), so the
rows stay readable by the ORM and comparable as text. Migrations stay with Alembic
(``byokbot db upgrade``); this module never changes a schema.

SQLite: statements run on one worker thread with its own connection (``busy_timeout`` waits
out another process's writer off the event loop); a transaction holds that connection.
PostgreSQL: an asyncpg pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from typing import Any, Final, Protocol

SQLITE_PREFIX: Final = "sqlite+aiosqlite:///"
PG_PREFIX: Final = "postgresql+asyncpg://"
TS_FORMAT: Final = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores DateTime on SQLite
_POSITIONAL: Final = re.compile(r"\$(\d+)")


def sqlite_path(url: str) -> str:
    """The file of a file-backed SQLite URL, else "" (memory, URIs, PostgreSQL)."""
    path = url[len(SQLITE_PREFIX) :] if url.startswith(SQLITE_PREFIX) else ""
    if not path or ":memory:" in path or "?" in path or path.startswith("file:"):
        return ""
    return path


def as_date(value: Any) -> date:
    """A DATE column's value (text on SQLite, ``date`` on PostgreSQL)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


class Statements(Protocol):
    """What a connection or a transaction runs: rows as tuples, writes as a row count."""

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None: ...

    async def execute(self, sql: str, *args: Any) -> int: ...


class RawDatabase(Statements, Protocol):
    url: str
    is_sqlite: bool

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Statements]: ...

    def raw(self) -> RawDatabase | None:
        """Itself (as ``core.db.Database.raw`` answers for the bot's database)."""
        ...

    async def close(self) -> None: ...


def open_raw(url: str) -> RawDatabase | None:
    """The raw database for ``url``; None when there is none (in-memory SQLite, other drivers)."""
    path = sqlite_path(url)
    if path:
        return SQLiteRaw(url, path)
    if url.startswith(PG_PREFIX):
        return PostgresRaw(url)
    return None


def _sqlite_arg(value: Any) -> Any:
    if isinstance(value, datetime):
        # TS_FORMAT, written by isoformat (a third of strftime's cost).
        return value.replace(tzinfo=None).isoformat(" ", "microseconds")
    if isinstance(value, date):
        return value.isoformat()
    return value


class SQLiteRaw:
    """A file-backed SQLite database on one worker thread and connection."""

    is_sqlite = True

    def __init__(self, url: str, path: str) -> None:
        self.url = url
        self.path = path
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()  # one transaction at a time holds the connection
        self._sql: dict[str, str] = {}

    def connection(self) -> sqlite3.Connection:
        """The worker thread's connection (call only on that thread)."""
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
        return self._conn

    def sql(self, text: str) -> str:
        """``text`` with ``$n`` as SQLite's ``?n``."""
        out = self._sql.get(text)
        if out is None:
            out = self._sql[text] = _POSITIONAL.sub(r"?\1", text)
        return out

    def _run(self, sql: str, args: Sequence[Any]) -> tuple[list[tuple[Any, ...]], int]:
        cursor = self.connection().execute(self.sql(sql), [_sqlite_arg(a) for a in args])
        # fetchall: a statement run to its end, so no read transaction stays open.
        rows = [tuple(r) for r in cursor.fetchall()]
        return rows, cursor.rowcount

    async def _call(self, sql: str, args: Sequence[Any]) -> tuple[list[tuple[Any, ...]], int]:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._run, sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._lock:
            return (await self._call(sql, args))[0]

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._lock:
            return (await self._call(sql, args))[1]

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Statements]:
        async with self._lock:
            await self._call("BEGIN IMMEDIATE", ())
            try:
                yield _SQLiteTransaction(self)
            except BaseException:
                await self._call("ROLLBACK", ())
                raise
            await self._call("COMMIT", ())

    def raw(self) -> RawDatabase:
        return self

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self.pool, conn.close)
        self.pool.shutdown(wait=True)


class _SQLiteTransaction:
    def __init__(self, db: SQLiteRaw) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return (await self._db._call(sql, args))[0]

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def execute(self, sql: str, *args: Any) -> int:
        return (await self._db._call(sql, args))[1]


def _pg_count(status: str) -> int:
    """The row count of an asyncpg command status ("UPDATE 3", "INSERT 0 1")."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class PgStatements:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._conn.fetch(sql, *args)]

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        row = await self._conn.fetchrow(sql, *args)
        return None if row is None else tuple(row)

    async def execute(self, sql: str, *args: Any) -> int:
        return _pg_count(await self._conn.execute(sql, *args))


async def _session_untouched(conn: Any) -> None:
    """What ``PostgresRaw``'s pool does to a connection given back, beyond asyncpg's rollback.

    Nothing: these connections run statements and transactions only, and never change session
    state (no SET, LISTEN, advisory lock or cursor; ``core.changes`` listens on a connection
    of its own). asyncpg's default reset query (``RESET ALL``, ``UNLISTEN *`` …) would be one
    more round trip at every release — for the proxy, two per request (reserve, settle).
    """


class PostgresRaw:
    """A PostgreSQL database through an asyncpg pool, opened on first use."""

    is_sqlite = False

    def __init__(self, url: str, *, max_size: int = 10) -> None:
        self.url = url
        self._dsn = "postgresql://" + url[len(PG_PREFIX) :]
        self._max = max_size
        self._pool: Any = None
        self._opening: asyncio.Lock | None = None

    async def pool(self) -> Any:
        if self._pool is None:
            if self._opening is None:
                self._opening = asyncio.Lock()
            async with self._opening:
                if self._pool is None:
                    import asyncpg  # type: ignore[import-untyped]

                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=1,
                        max_size=self._max,
                        timeout=10.0,
                        reset=_session_untouched,
                    )
        return self._pool

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await (await self.pool()).fetch(sql, *args)]

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        row = await (await self.pool()).fetchrow(sql, *args)
        return None if row is None else tuple(row)

    async def execute(self, sql: str, *args: Any) -> int:
        return _pg_count(await (await self.pool()).execute(sql, *args))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Statements]:
        async with (await self.pool()).acquire() as conn, conn.transaction():
            yield PgStatements(conn)

    def raw(self) -> RawDatabase:
        return self

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
