"""One-time intake sessions: the private, single-use exchange through which a key arrives.

A session is bound to a tenant and one platform user, expires, allows a few attempts, and is
used once. Only the SHA-256 of its 128-bit token is stored; lookups compare in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit
from core.chat import UserRef
from core.db import Database
from core.db.models import IntakeSessionRow
from core.errors import IntakeExpired, IntakeLocked, IntakeNotYours, IntakeUsed
from core.metrics import INTAKE_SESSIONS
from core.ports import Clock


class IntakeStatus(StrEnum):
    """Lifecycle of a session."""

    OPEN = "open"
    USED = "used"
    EXPIRED = "expired"
    LOCKED = "locked"
    CANCELLED = "cancelled"


class IntakePurpose(StrEnum):
    """Why the key is asked for."""

    ADD = "add"
    ROTATE = "rotate"
    LINK = "link"


_LINK_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"  # no 0/O, 1/I/L: read aloud and typed by hand


def normalize_link_code(code: str) -> str:
    """Upper-case, without spaces or dashes, so "abcd-efgh" and "ABCDEFGH" match."""
    return "".join(ch for ch in code.upper() if ch.isalnum())


@dataclass(frozen=True, slots=True)
class IntakeTicket:
    """An open session as flows see it (never the token)."""

    id: str
    tenant_id: str
    identity: str
    provider: str
    purpose: IntakePurpose
    attempts: int
    expires_at: datetime
    origin_chat_id: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _ticket(row: IntakeSessionRow) -> IntakeTicket:
    return IntakeTicket(
        id=row.id,
        tenant_id=row.tenant_id,
        identity=row.identity,
        provider=row.provider,
        purpose=IntakePurpose(row.purpose),
        attempts=row.attempts,
        expires_at=row.expires_at,
        origin_chat_id=row.origin_chat_id,
    )


def _aware(dt: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    from datetime import UTC

    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


async def _mark_used(s: AsyncSession, session_id: str) -> None:
    """Open -> used in one conditional UPDATE: of two concurrent uses, one gets IntakeUsed."""
    res = await s.execute(
        update(IntakeSessionRow)
        .where(
            IntakeSessionRow.id == session_id,
            IntakeSessionRow.status == IntakeStatus.OPEN.value,
        )
        .values(status=IntakeStatus.USED.value)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise IntakeUsed(session_id)


class Intake:
    """Opens, checks, consumes and expires intake sessions."""

    def __init__(self, db: Database, clock: Clock, *, ttl_seconds: int, max_attempts: int) -> None:
        self._db = db
        self._clock = clock
        self.ttl = timedelta(seconds=ttl_seconds)
        self.max_attempts = max_attempts

    async def open(
        self,
        *,
        tenant_id: str,
        user: UserRef,
        provider: str,
        purpose: IntakePurpose,
        origin_chat_id: str,
    ) -> tuple[str, IntakeTicket]:
        """Start a session (closing the person's earlier open ones); returns the raw token."""
        token = secrets.token_urlsafe(24)  # 192 bits
        now = self._clock.now()
        async with self._db.session() as s, s.begin():
            await s.execute(
                update(IntakeSessionRow)
                .where(
                    IntakeSessionRow.identity == user.identity,
                    IntakeSessionRow.status == IntakeStatus.OPEN.value,
                    IntakeSessionRow.purpose != IntakePurpose.LINK.value,
                )
                .values(status=IntakeStatus.CANCELLED.value)
            )
            row = IntakeSessionRow(
                id=secrets.token_hex(16),
                token_hash=_hash(token),
                tenant_id=tenant_id,
                identity=user.identity,
                provider=provider,
                purpose=purpose.value,
                status=IntakeStatus.OPEN.value,
                attempts=0,
                origin_chat_id=origin_chat_id,
                created_at=now,
                expires_at=now + self.ttl,
            )
            s.add(row)
            INTAKE_SESSIONS.labels("opened").inc()
            audit.record(
                s,
                at=now,
                actor=user.identity,
                tenant_id=tenant_id,
                action="intake.opened",
                provider=provider,
                purpose=purpose.value,
            )
        return token, _ticket(row)

    def _check(self, row: IntakeSessionRow, user: UserRef, tenant_id: str | None) -> IntakeTicket:
        if row.identity != user.identity or (tenant_id is not None and row.tenant_id != tenant_id):
            raise IntakeNotYours(row.id)
        if row.status == IntakeStatus.USED.value:
            raise IntakeUsed(row.id)
        if row.status == IntakeStatus.LOCKED.value:
            raise IntakeLocked(row.id)
        if row.status != IntakeStatus.OPEN.value or _aware(row.expires_at) <= self._clock.now():
            raise IntakeExpired(row.id)
        return _ticket(row)

    async def by_token(self, token: str, user: UserRef, *, tenant_id: str | None) -> IntakeTicket:
        """The session a token opens, if it is still usable by this person and tenant."""
        digest = _hash(token)
        async with self._db.session() as s:
            row = await s.scalar(
                select(IntakeSessionRow).where(IntakeSessionRow.token_hash == digest)
            )
        if (
            row is None
            or not hmac.compare_digest(row.token_hash, digest)
            or row.purpose == IntakePurpose.LINK.value
        ):
            raise IntakeExpired("unknown")
        return self._check(row, user, tenant_id)

    async def pending_for(self, user: UserRef) -> IntakeTicket | None:
        """The person's open session, if any (a DM reply while one is open is the secret)."""
        async with self._db.session() as s:
            row = await s.scalar(
                select(IntakeSessionRow)
                .where(
                    IntakeSessionRow.identity == user.identity,
                    IntakeSessionRow.status == IntakeStatus.OPEN.value,
                    IntakeSessionRow.purpose != IntakePurpose.LINK.value,
                )
                .order_by(IntakeSessionRow.created_at.desc())
            )
        if row is None or _aware(row.expires_at) <= self._clock.now():
            return None
        return _ticket(row)

    async def get(self, ticket_id: str, user: UserRef) -> IntakeTicket:
        async with self._db.session() as s:
            row = await s.get(IntakeSessionRow, ticket_id)
        if row is None:
            raise IntakeExpired(ticket_id)
        return self._check(row, user, None)

    async def failed_attempt(self, ticket: IntakeTicket) -> int:
        """Count a refused submission; returns attempts left, locking the session at zero."""
        async with self._db.session() as s, s.begin():
            row = await s.get(IntakeSessionRow, ticket.id, with_for_update=True)
            if row is None or row.status != IntakeStatus.OPEN.value:
                raise IntakeExpired(ticket.id)
            row.attempts += 1
            left = self.max_attempts - row.attempts
            if left <= 0:
                row.status = IntakeStatus.LOCKED.value
                audit.record(
                    s,
                    at=self._clock.now(),
                    actor=row.identity,
                    tenant_id=row.tenant_id,
                    action="intake.locked",
                    provider=row.provider,
                )
            return max(left, 0)

    async def consume(self, ticket: IntakeTicket) -> None:
        """Mark the session used, atomically: a second concurrent submission gets IntakeUsed."""
        async with self._db.session() as s, s.begin():
            await _mark_used(s, ticket.id)
        INTAKE_SESSIONS.labels("used").inc()

    async def open_link(self, *, tenant_id: str, user: UserRef) -> tuple[str, datetime]:
        """A short one-time code that attaches another platform account to this tenant."""
        raw = "".join(secrets.choice(_LINK_ALPHABET) for _ in range(10))
        now = self._clock.now()
        async with self._db.session() as s, s.begin():
            s.add(
                IntakeSessionRow(
                    id=secrets.token_hex(16),
                    token_hash=_hash("link:" + raw),
                    tenant_id=tenant_id,
                    identity=user.identity,
                    provider="",
                    purpose=IntakePurpose.LINK.value,
                    status=IntakeStatus.OPEN.value,
                    attempts=0,
                    origin_chat_id="",
                    created_at=now,
                    expires_at=now + self.ttl,
                )
            )
        return f"{raw[:5]}-{raw[5:]}", now + self.ttl

    async def redeem_link(self, code: str) -> str:
        """Use a link code once; returns the tenant it belongs to."""
        digest = _hash("link:" + normalize_link_code(code))
        async with self._db.session() as s, s.begin():
            row = await s.scalar(
                select(IntakeSessionRow).where(IntakeSessionRow.token_hash == digest)
            )
            if (
                row is None
                or row.purpose != IntakePurpose.LINK.value
                or row.status != IntakeStatus.OPEN.value
                or _aware(row.expires_at) <= self._clock.now()
            ):
                raise IntakeExpired("link")
            await _mark_used(s, row.id)
            return row.tenant_id

    async def cancel_for(self, user: UserRef, *, links: bool = False) -> int:
        """Cancel the person's open key sessions (or, with ``links``, their link codes)."""
        purpose = (
            IntakeSessionRow.purpose == IntakePurpose.LINK.value
            if links
            else IntakeSessionRow.purpose != IntakePurpose.LINK.value
        )
        async with self._db.session() as s, s.begin():
            res = await s.execute(
                update(IntakeSessionRow)
                .where(
                    IntakeSessionRow.identity == user.identity,
                    IntakeSessionRow.status == IntakeStatus.OPEN.value,
                    IntakeSessionRow.expires_at > self._clock.now(),
                    purpose,
                )
                .values(status=IntakeStatus.CANCELLED.value)
            )
            return int(res.rowcount)  # type: ignore[attr-defined]

    async def cancel(self, ticket_id: str) -> bool:
        """Cancel one open session (a closed form); False when it was no longer open."""
        async with self._db.session() as s, s.begin():
            res = await s.execute(
                update(IntakeSessionRow)
                .where(
                    IntakeSessionRow.id == ticket_id,
                    IntakeSessionRow.status == IntakeStatus.OPEN.value,
                )
                .values(status=IntakeStatus.CANCELLED.value)
            )
            return int(res.rowcount) == 1  # type: ignore[attr-defined]

    async def expire_due(self) -> int:
        """Close every open session past its time (the scheduler's job)."""
        async with self._db.session() as s, s.begin():
            res = await s.execute(
                update(IntakeSessionRow)
                .where(
                    IntakeSessionRow.status == IntakeStatus.OPEN.value,
                    IntakeSessionRow.expires_at <= self._clock.now(),
                )
                .values(status=IntakeStatus.EXPIRED.value)
            )
            expired = int(res.rowcount)  # type: ignore[attr-defined]
        INTAKE_SESSIONS.labels("expired").inc(expired)
        return expired
