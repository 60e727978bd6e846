"""Which processes hold a database: every serving bot shares a lock, maintenance takes it alone.

SQLite: ``flock`` on ``<database file>.lock`` beside the database. PostgreSQL: a session-level
advisory lock on a connection kept open for the purpose. Either is released by the operating
system or the server when the process dies, so a killed bot never leaves a stale lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path
from typing import Final

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db.engine import Database

# An arbitrary constant: the advisory lock id every byokbot process agrees on.
_PG_LOCK_ID: Final = 0x6279_6F6B_626F_74  # "byokbot"


def _sqlite_path(url: str) -> Path | None:
    _, sep, path = url.partition(":///")
    if not sep or not path or ":memory:" in path:
        return None
    return Path(path)


class InstanceLock:
    """Shared by serving bots (``hold_shared``), exclusive for maintenance (``try_exclusive``).

    One object takes the lock at most once; ``release`` is idempotent.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._fd: int | None = None
        self._conn: AsyncConnection | None = None
        self._shared = True

    async def hold_shared(self) -> bool:
        """Take the lock beside other bots; False while maintenance holds it alone."""
        return await self._take(shared=True)

    async def try_exclusive(self) -> bool:
        """Take the lock alone; False while any bot (or other maintenance) holds it."""
        return await self._take(shared=False)

    async def _take(self, *, shared: bool) -> bool:
        self._shared = shared
        if self._db.is_sqlite:
            path = _sqlite_path(self._db.url)
            if path is None:
                return True  # an in-memory database belongs to this process alone
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._fd = fd
            return True
        conn = await self._db.engine.connect()
        fn = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        got = bool(await conn.scalar(text(f"SELECT {fn}(:id)"), {"id": _PG_LOCK_ID}))
        await conn.commit()  # session-level: the lock outlives the transaction
        if not got:
            await conn.close()
            return False
        self._conn = conn
        return True

    async def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock
        conn, self._conn = self._conn, None
        if conn is not None:
            fn = "pg_advisory_unlock_shared" if self._shared else "pg_advisory_unlock"
            with contextlib.suppress(SQLAlchemyError, OSError):  # invalidated below anyway
                await conn.execute(text(f"SELECT {fn}(:id)"), {"id": _PG_LOCK_ID})
            # Never hand a connection that may still hold the lock back to the pool.
            await conn.invalidate()
            await conn.close()


async def wait_shared(lock: InstanceLock, *, within: float = 10.0) -> bool:
    """``hold_shared``, retried while a short maintenance run holds the lock alone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await lock.hold_shared():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True
