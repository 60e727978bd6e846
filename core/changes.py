"""Changes that other replicas must see at once: PostgreSQL LISTEN/NOTIFY.

Each process caches hot lookups (tenants by identity, "no flow" per person) for a few seconds.
A write ``announce``s itself in its own transaction; PostgreSQL delivers the notification to
every listening process when (and only if) the transaction commits, and each ``ChangeFeed``
drops the matching cache entries and tells its agent supervisor. On SQLite nothing is sent:
there the bot is one process and its own writes invalidate its caches directly.

The listener keeps one dedicated connection (not from the pool: a pooled connection would
stop listening when handed back) and reconnects after losing it; whatever was announced
meanwhile is unknown, so every cache is dropped on each (re)connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger("byokbot.changes")

CHANNEL: Final = "byokbot_changes"
TENANT: Final = "tenant"  # key: tenant id (status, plan, pause, model, persona, identities)
KEYS: Final = "keys"  # key: tenant id (a provider key or MCP server stored, removed, dead)
FLOW: Final = "flow"  # key: identity (a flow step set or cleared)
BILLING: Final = "billing"  # key: tenant id (a subscription created or moved on)

Handler = Callable[[str], Awaitable[None] | None]


def _is_postgresql(session: AsyncSession) -> bool:
    bind = session.bind
    return bind is not None and bind.dialect.name == "postgresql"


async def announce(session: AsyncSession, kind: str, key: str) -> None:
    """In the caller's transaction: every replica hears ``kind:key`` once it commits."""
    if not _is_postgresql(session):
        return
    await session.execute(
        text("SELECT pg_notify(:channel, :payload)"),
        {"channel": CHANNEL, "payload": f"{kind}:{key}"},
    )


def asyncpg_dsn(url: str) -> str:
    """The SQLAlchemy URL as asyncpg's own ``connect`` takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _set(event: asyncio.Event, _conn: object) -> None:
    event.set()


class ChangeFeed:
    """Listens on ``CHANNEL`` and calls the handlers registered for each kind."""

    def __init__(self, url: str, *, retry_seconds: float = 1.0, ping_seconds: float = 5.0) -> None:
        self._dsn = asyncpg_dsn(url)
        self._retry = retry_seconds
        self._ping = ping_seconds
        self._handlers: dict[str, list[Handler]] = {}
        self._on_gap: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self.connected = asyncio.Event()
        self.heard = 0  # notifications handled (tests and /metrics-minded operators)

    def on(self, kind: str, handler: Handler) -> None:
        self._handlers.setdefault(kind, []).append(handler)

    def on_gap(self, handler: Callable[[], None]) -> None:
        """Called on every (re)connection: notifications may have been missed."""
        self._on_gap.append(handler)

    async def start(self, *, within: float = 10.0) -> None:
        """Start listening; waits up to ``within`` seconds for the first connection."""
        self._task = asyncio.create_task(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), within)
        if not self.connected.is_set():
            log.warning("changes: not listening yet; other replicas' changes show after 5 s")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pending in list(self._pending):
            pending.cancel()
        self._pending.clear()

    async def _run(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(functools.partial(_set, lost))
                await conn.add_listener(CHANNEL, self._heard)
                for gap in self._on_gap:
                    gap()
                self.connected.set()
                log.info("changes: listening for other replicas' changes")
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), self._ping)
                    if not lost.is_set():
                        # A connection that died without a FIN is found here.
                        await conn.fetchval("SELECT 1", timeout=self._ping)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                name = type(exc).__name__
                log.warning("changes: listener connection lost (%s); reconnecting", name)
            finally:
                self.connected.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
            await asyncio.sleep(self._retry)

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        kind, _, key = payload.partition(":")
        self.heard += 1
        for handler in self._handlers.get(kind, []):
            try:
                result = handler(key)
            except Exception:
                log.exception("changes: handling a %s change failed", kind)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._pending.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("changes: handling a change failed: %r", task.exception())


class JobLeases:
    """``take(name, seconds)``: whether this replica runs the job now (PostgreSQL only).

    A job's lease row is taken over only once it has run out, so of the replicas ticking the
    same job within one interval exactly one runs it. Time is the database's, not the replicas'.
    """

    _SQL: Final = text(
        "INSERT INTO job_leases (name, holder, until)"
        " VALUES (:name, :holder, now() + make_interval(secs => :secs))"
        " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until"
        " WHERE job_leases.until <= now() RETURNING name"
    )

    def __init__(self, session: Callable[[], AsyncSession], holder: str) -> None:
        self._session = session
        self._holder = holder[:64]

    async def take(self, name: str, seconds: float) -> bool:
        async with self._session() as s, s.begin():
            got = await s.scalar(
                self._SQL, {"name": name, "holder": self._holder, "secs": float(seconds)}
            )
        return got is not None
