"""Per-tenant scoped tokens for the metering proxy: issued per agent start, stored as SHA-256.

Lifetime (zero-downtime rotation): every ``issue`` mints a fresh token and keeps the tenant's
``keep`` newest tokens valid (default 3), deleting older ones in the same transaction. An agent
being replaced keeps working on its token while its successor starts on a new one; a token
stops working when ``keep`` newer ones exist, or at once on ``revoke_all`` (plan change away
from managed, suspension, deletion). Tokens do not expire by time, because a busy agent may
live for days.

``cache_seconds`` (the proxy's ``token_cache_seconds``) keeps resolved tokens in memory for
that long, so the request path skips the lookup. Revocation (``revoke_all``, and a tenant
paused through ``core.tenants``) must not wait for that:

* in the same process it is immediate: every ``ProxyTokens`` of the process forgets the
  tenant once the revocation has committed (``forget_everywhere``);
* across processes it takes under a second: the revocation adds one to the single row of
  ``proxy_revocations`` in its own transaction (``record_revocation``), and a cached token is
  only served while the last read of that counter *started* less than
  ``REVOCATION_CHECK_SECONDS`` (0.5 s) ago. The proxy re-reads it in the background every
  0.25 s (``ProxyServer``), so the request path pays one clock read; if the reader falls
  behind, the next cache hit reads it inline. A changed counter empties the cache. The same
  code runs on SQLite and PostgreSQL (a counter row, not LISTEN/NOTIFY, which SQLite lacks).

The cache refreshes ahead: a hit older than half of ``cache_seconds`` is served and re-read in
the background, so a busy token never expires under the requests using it (which would all
miss at once: the latency tail). Lookups are single-flight: concurrent misses of one token
share one query. An entry is never served older than ``cache_seconds``.

On a file-backed SQLite database both reads (a token, the revocation counter) run on a plain
sqlite3 connection on the event loop's thread (~20 us; a WAL reader does not wait for
writers), not through SQLAlchemy and aiosqlite's thread (~1 ms of CPU); if SQLite ever answers
busy, the read goes to the database's worker thread (``core.rawdb``). On PostgreSQL they are
one asyncpg query. Only an in-memory SQLite reads through the ORM; issuing and revoking (the
bot's, never ``byokbot proxy``'s) stay on it.

A lookup that raced a revocation is not cached (an epoch counter bumped by every forget),
so a stale answer read just before the revocation cannot outlive it. Rotation (``issue``
retiring tokens beyond ``keep``) is not a revocation: another process may accept a retired
token for up to ``cache_seconds``.

A token is ``byok-`` + 43 url-safe base64 characters (256 random bits), the shape
``core.keys`` already detects as a leak. Only its SHA-256 is stored; lookup is by that digest
(a unique index), and the stored digest is compared again with ``hmac.compare_digest`` so the
final check does not depend on string-equality timing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import re
import secrets
import sqlite3
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from core.ports import Clock
from core.rawdb import RawDatabase, SQLiteRaw
from core.secret import Secret

if TYPE_CHECKING:  # ``byokbot proxy`` resolves tokens without SQLAlchemy (core.rawdb)
    from sqlalchemy.ext.asyncio import AsyncSession

    from core.db import Database

PREFIX: Final = "byok-"
_TOKEN_CHARS: Final = 43
_CACHE_MAX: Final = 100_000
REVOCATION_CHECK_SECONDS: Final = 0.5
# One C-level match per request (a per-character generator cost ~5 us).
_TOKEN_SHAPE: Final = re.compile(f"{re.escape(PREFIX)}[A-Za-z0-9_-]{{{_TOKEN_CHARS}}}")

_LIVE: weakref.WeakSet[ProxyTokens] = weakref.WeakSet()

_LOOKUP_SQL: Final = """
SELECT t.token_hash, n.id, n.plan, n.status, n.paused,
       s.state = 'trial' AND s.plan = n.plan
FROM proxy_tokens AS t JOIN tenants AS n ON n.id = t.tenant_id
LEFT JOIN subscriptions AS s ON s.tenant_id = n.id
WHERE t.token_hash = $1
"""
_GENERATION_SQL: Final = "SELECT generation FROM proxy_revocations WHERE id = 1"


async def record_revocation(session: AsyncSession) -> None:
    """In the caller's transaction: every proxy process drops its cached tokens (< 1 s)."""
    from sqlalchemy import update

    from core.db.models import ProxyRevocationRow

    await session.execute(
        update(ProxyRevocationRow)
        .where(ProxyRevocationRow.id == 1)
        .values(generation=ProxyRevocationRow.generation + 1)
    )


def forget_everywhere(tenant_id: str) -> None:
    """After the revocation committed: every ``ProxyTokens`` of this process forgets the tenant."""
    for tokens in list(_LIVE):
        tokens.forget(tenant_id)


def _close(state: dict[str, Any]) -> None:
    raw = state.get("_raw")
    if raw is not None:
        raw.close()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(value: str) -> bool:
    """Whether ``value`` has the token's shape (checked before any database work)."""
    return _TOKEN_SHAPE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class TokenOwner:
    """Who a token belongs to, with what the proxy needs to admit the request."""

    tenant_id: str
    plan: str
    status: str
    paused: bool
    # In a trial of its plan: the proxy holds it to the plan's smaller trial cap.
    trial: bool = False


class ProxyTokens:
    """Issues, resolves and revokes scoped tokens."""

    def __init__(
        self,
        db: Database | RawDatabase,
        clock: Clock,
        *,
        keep: int = 3,
        cache_seconds: float = 0.0,
        check_seconds: float = REVOCATION_CHECK_SECONDS,
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self._db = db
        self._clock = clock
        self._keep = keep
        self._cache_seconds = cache_seconds
        self.check_seconds = check_seconds
        # digest -> (monotonic expiry, owner). Only hits are cached, so random tokens cannot
        # grow it; a revocation in this process drops the tenant's entries at once.
        self._cache: dict[str, tuple[float, TokenOwner]] = {}
        # digest -> (epoch it started in, the lookup): concurrent misses share one query.
        self._flights: dict[str, tuple[int, asyncio.Future[TokenOwner | None]]] = {}
        self._epoch = 0  # bumped by every forget: a lookup that raced one is not cached
        self._generation: int | None = None  # proxy_revocations as last read
        self._checked = -math.inf  # monotonic time that read started
        self._checking: asyncio.Future[None] | None = None
        # The raw driver (None for an in-memory SQLite: the ORM's one connection is it).
        self._rawdb = db.raw()
        self._path = self._rawdb.path if isinstance(self._rawdb, SQLiteRaw) else ""
        self._raw: sqlite3.Connection | None = None
        _LIVE.add(self)
        weakref.finalize(self, _close, self.__dict__)

    def _read(self, sql: str, args: tuple[str, ...] = ()) -> tuple[Any, ...] | bool | None:
        """One row by the raw driver; False when this path is not available (or was busy)."""
        if not self._path:
            return False
        try:
            if self._raw is None:
                self._raw = sqlite3.connect(
                    self._path, isolation_level=None, check_same_thread=False
                )
                self._raw.execute("PRAGMA busy_timeout=0")
            # fetchall, not fetchone: the statement must run to its end, or its read
            # transaction stays open, pinning an old snapshot (stale answers, a WAL that
            # cannot be checkpointed).
            rows = self._raw.execute(sql.replace("$1", "?"), args).fetchall()
        except sqlite3.OperationalError:
            return False  # busy, or a schema this path does not know: the ORM decides
        return tuple(rows[0]) if rows else None

    @property
    def caching(self) -> bool:
        return self._cache_seconds > 0

    def forget(self, tenant_id: str) -> None:
        """Drop the tenant's cached tokens (see ``forget_everywhere``)."""
        self._epoch += 1
        for digest in [d for d, (_, o) in self._cache.items() if o.tenant_id == tenant_id]:
            del self._cache[digest]

    async def check_revocations(self) -> None:
        """Read the revocation counter; empty the cache if another process revoked since."""
        if self._checking is None:
            self._checking = asyncio.ensure_future(self._check())
            self._checking.add_done_callback(self._checked_done)
        await asyncio.shield(self._checking)

    def _checked_done(self, _: asyncio.Future[None]) -> None:
        self._checking = None

    async def _check(self) -> None:
        started = time.monotonic()
        raw = self._read(_GENERATION_SQL)
        if raw is False:
            generation = await self._slow_generation()
        else:
            generation = raw[0] if isinstance(raw, tuple) else 0
        generation = int(generation or 0)
        if self._generation is not None and generation != self._generation:
            self._epoch += 1
            self._cache.clear()
        self._generation = generation
        self._checked = max(self._checked, started)

    async def _slow_generation(self) -> Any:
        if self._rawdb is not None:
            row = await self._rawdb.fetchrow(_GENERATION_SQL)
            return row[0] if row else 0
        from sqlalchemy import select

        from core.db.models import ProxyRevocationRow

        async with self._orm().session() as s:
            return await s.scalar(
                select(ProxyRevocationRow.generation).where(ProxyRevocationRow.id == 1)
            )

    def _orm(self) -> Database:
        """The bot's database: issuing and revoking are the bot's, never ``byokbot proxy``'s."""
        if not hasattr(self._db, "session"):
            raise TypeError("issuing and revoking proxy tokens needs the bot's Database")
        return cast("Database", self._db)

    async def issue(self, tenant_id: str) -> Secret:
        """A new token for the agent; tokens older than the newest ``keep`` stop working."""
        from sqlalchemy import delete, select

        from core.db.models import ProxyTokenRow

        token = PREFIX + secrets.token_urlsafe(32)
        async with self._orm().session() as s, s.begin():
            s.add(
                ProxyTokenRow(
                    token_hash=_digest(token), tenant_id=tenant_id, created_at=self._clock.now()
                )
            )
            await s.flush()
            newest = (
                select(ProxyTokenRow.id)
                .where(ProxyTokenRow.tenant_id == tenant_id)
                .order_by(ProxyTokenRow.id.desc())
                .limit(self._keep)
            )
            # One statement, one snapshot: with the newest ids read first, another replica's
            # token committed in between was deleted by the second statement as "not newest".
            await s.execute(
                delete(ProxyTokenRow).where(
                    ProxyTokenRow.tenant_id == tenant_id,
                    ProxyTokenRow.id.not_in(newest.scalar_subquery()),
                )
            )
        forget_everywhere(tenant_id)
        return Secret(token)

    async def owner(self, token: str) -> TokenOwner | None:
        """The tenant (with plan and status) a token belongs to, or None. One indexed query."""
        if not looks_like_token(token):
            return None
        digest = _digest(token)
        if not self._cache_seconds:
            return await self._lookup(digest)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            if now - self._checked > self.check_seconds:
                await self.check_revocations()  # the background reader fell behind
                hit = self._cache.get(digest)
            if hit is not None:
                if hit[0] - now < self._cache_seconds / 2:
                    self._refresh(digest)  # refresh ahead; this request does not wait
                return hit[1]
        elif self._generation is None:
            await self.check_revocations()  # the baseline, before anything is cached
        return await asyncio.shield(self._flight(digest))

    def _flight(self, digest: str) -> asyncio.Future[TokenOwner | None]:
        """The lookup of ``digest`` in flight in this epoch, or a new one."""
        flight = self._flights.get(digest)
        if flight is not None and flight[0] == self._epoch:
            return flight[1]
        future = asyncio.ensure_future(self._lookup(digest))
        self._flights[digest] = (self._epoch, future)

        def landed(f: asyncio.Future[TokenOwner | None]) -> None:
            if self._flights.get(digest, (0, None))[1] is f:
                del self._flights[digest]
            if not f.cancelled():
                f.exception()  # retrieved: a failed background refresh is not an error here

        future.add_done_callback(landed)
        return future

    def _refresh(self, digest: str) -> None:
        self._flight(digest)

    async def _lookup(self, digest: str) -> TokenOwner | None:
        epoch = self._epoch
        row: Any = self._read(_LOOKUP_SQL, (digest,))
        if row is False:
            row = await self._slow_lookup(digest)
        if row is None or not hmac.compare_digest(str(row[0]), digest):
            if epoch == self._epoch:
                self._cache.pop(digest, None)  # a refresh found it retired
            return None
        owner = TokenOwner(
            tenant_id=str(row[1]),
            plan=str(row[2]),
            status=str(row[3]),
            paused=bool(row[4]),
            trial=bool(row[5]),
        )
        if self._cache_seconds and epoch == self._epoch:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[digest] = (time.monotonic() + self._cache_seconds, owner)
        return owner

    async def _slow_lookup(self, digest: str) -> Any:
        if self._rawdb is not None:
            return await self._rawdb.fetchrow(_LOOKUP_SQL, digest)
        from sqlalchemy import and_, select

        from core.db.models import ProxyTokenRow, SubscriptionRow, TenantRow

        async with self._orm().session() as s:
            return (
                await s.execute(
                    select(
                        ProxyTokenRow.token_hash,
                        TenantRow.id,
                        TenantRow.plan,
                        TenantRow.status,
                        TenantRow.paused,
                        and_(
                            SubscriptionRow.state == "trial", SubscriptionRow.plan == TenantRow.plan
                        ),
                    )
                    .join(TenantRow, TenantRow.id == ProxyTokenRow.tenant_id)
                    .outerjoin(SubscriptionRow, SubscriptionRow.tenant_id == TenantRow.id)
                    .where(ProxyTokenRow.token_hash == digest)
                )
            ).first()

    async def resolve(self, token: str) -> str | None:
        """The tenant id a token belongs to, or None when it is unknown or revoked."""
        found = await self.owner(token)
        return found.tenant_id if found is not None else None

    async def revoke_all(self, tenant_id: str, *, actor: str = "system") -> int:
        """Revoke every token of a tenant at once (plan change, suspension, deletion)."""
        from sqlalchemy import delete

        from core import audit
        from core.db.models import ProxyTokenRow

        async with self._orm().session() as s, s.begin():
            result = await s.execute(
                delete(ProxyTokenRow).where(ProxyTokenRow.tenant_id == tenant_id)
            )
            await record_revocation(s)
            count = int(getattr(result, "rowcount", 0) or 0)
            audit.record(
                s,
                at=self._clock.now(),
                actor=actor,
                action="proxy_tokens.revoked",
                tenant_id=tenant_id,
                count=count,
            )
        forget_everywhere(tenant_id)  # after the commit: a lookup now sees it gone
        return count
