"""Per-tenant scoped tokens for the metering proxy: issued per agent start, stored as SHA-256.

Lifetime (zero-downtime rotation): every ``issue`` mints a fresh token and keeps the tenant's
``keep`` newest tokens valid (default 3), deleting older ones in the same transaction. An agent
being replaced keeps working on its token while its successor starts on a new one; a token
stops working when ``keep`` newer ones exist, or at once on ``revoke_all`` (plan change away
from managed, suspension, deletion). Tokens do not expire by time, because a busy agent may
live for days.

``cache_seconds`` (the proxy's ``token_cache_seconds``) keeps resolved tokens in memory for
that long, so the request path skips the lookup. Revocation through the same ``ProxyTokens``
object (the proxy running inside ``byokbot run``) is still immediate; a revocation made by
another process reaches a standalone proxy within ``cache_seconds``.

A token is ``byok-`` + 43 url-safe base64 characters (256 random bits), the shape
``core.keys`` already detects as a leak. Only its SHA-256 is stored; lookup is by that digest
(a unique index), and the stored digest is compared again with ``hmac.compare_digest`` so the
final check does not depend on string-equality timing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Final

from sqlalchemy import delete, select

from core import audit
from core.db import Database
from core.db.models import ProxyTokenRow, TenantRow
from core.ports import Clock
from core.secret import Secret

PREFIX: Final = "byok-"
_TOKEN_CHARS: Final = 43
_CACHE_MAX: Final = 100_000


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(value: str) -> bool:
    """Whether ``value`` has the token's shape (checked before any database work)."""
    return (
        len(value) == len(PREFIX) + _TOKEN_CHARS
        and value.startswith(PREFIX)
        and all(c.isalnum() or c in "-_" for c in value[len(PREFIX) :])
        and value[len(PREFIX) :].isascii()
    )


@dataclass(frozen=True, slots=True)
class TokenOwner:
    """Who a token belongs to, with what the proxy needs to admit the request."""

    tenant_id: str
    plan: str
    status: str
    paused: bool


class ProxyTokens:
    """Issues, resolves and revokes scoped tokens."""

    def __init__(
        self, db: Database, clock: Clock, *, keep: int = 3, cache_seconds: float = 0.0
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self._db = db
        self._clock = clock
        self._keep = keep
        self._cache_seconds = cache_seconds
        # digest -> (monotonic expiry, owner). Only hits are cached, so random tokens cannot
        # grow it; revoke_all/issue through this object drop the tenant's entries at once.
        self._cache: dict[str, tuple[float, TokenOwner]] = {}

    def _forget(self, tenant_id: str) -> None:
        for digest in [d for d, (_, o) in self._cache.items() if o.tenant_id == tenant_id]:
            del self._cache[digest]

    async def issue(self, tenant_id: str) -> Secret:
        """A new token for the agent; tokens older than the newest ``keep`` stop working."""
        token = PREFIX + secrets.token_urlsafe(32)
        async with self._db.session() as s, s.begin():
            s.add(
                ProxyTokenRow(
                    token_hash=_digest(token), tenant_id=tenant_id, created_at=self._clock.now()
                )
            )
            await s.flush()
            keep_ids = (
                select(ProxyTokenRow.id)
                .where(ProxyTokenRow.tenant_id == tenant_id)
                .order_by(ProxyTokenRow.id.desc())
                .limit(self._keep)
            )
            ids = list((await s.scalars(keep_ids)).all())
            await s.execute(
                delete(ProxyTokenRow).where(
                    ProxyTokenRow.tenant_id == tenant_id, ProxyTokenRow.id.not_in(ids)
                )
            )
        self._forget(tenant_id)
        return Secret(token)

    async def owner(self, token: str) -> TokenOwner | None:
        """The tenant (with plan and status) a token belongs to, or None. One indexed query."""
        if not looks_like_token(token):
            return None
        digest = _digest(token)
        if self._cache_seconds:
            hit = self._cache.get(digest)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
        async with self._db.session() as s:
            row = (
                await s.execute(
                    select(
                        ProxyTokenRow.token_hash,
                        TenantRow.id,
                        TenantRow.plan,
                        TenantRow.status,
                        TenantRow.paused,
                    )
                    .join(TenantRow, TenantRow.id == ProxyTokenRow.tenant_id)
                    .where(ProxyTokenRow.token_hash == digest)
                )
            ).first()
        if row is None or not hmac.compare_digest(row[0], digest):
            return None
        owner = TokenOwner(tenant_id=row[1], plan=row[2], status=row[3], paused=bool(row[4]))
        if self._cache_seconds:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[digest] = (time.monotonic() + self._cache_seconds, owner)
        return owner

    async def resolve(self, token: str) -> str | None:
        """The tenant id a token belongs to, or None when it is unknown or revoked."""
        found = await self.owner(token)
        return found.tenant_id if found is not None else None

    async def revoke_all(self, tenant_id: str, *, actor: str = "system") -> int:
        """Revoke every token of a tenant at once (plan change, suspension, deletion)."""
        async with self._db.session() as s, s.begin():
            result = await s.execute(
                delete(ProxyTokenRow).where(ProxyTokenRow.tenant_id == tenant_id)
            )
            self._forget(tenant_id)
            count = int(getattr(result, "rowcount", 0) or 0)
            audit.record(
                s,
                at=self._clock.now(),
                actor=actor,
                action="proxy_tokens.revoked",
                tenant_id=tenant_id,
                count=count,
            )
        return count
