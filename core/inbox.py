"""The durable inbox: every delivery is in the database before the platform hears it was taken.

An adapter calls ``record`` before it confirms a delivery (Telegram: before the next
``getUpdates`` offset, or before answering the webhook 200); only the events that were new are
handled, and ``finish`` marks them done afterwards (off the reply path, retried). A delivery
seen again — a redelivery after a restart, or another replica's — is not new, so it is handled
once. A turn whose process died leaves its row ``pending``; when the owner's lease runs out,
``claim_orphans`` hands it to a live process, which resumes it or tells the person to resend.

What a person wrote can be a key, so the event itself is stored only sealed (AES-GCM under a
key derived from the primary master key), and dropped when the turn is done. ``meta`` holds the
ids needed to tell the person to resend even when the body cannot be opened any more.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import and_, delete, select, update

from core.bookkeeping import WriteBehind
from core.chat import AttachmentKind, ChatRef, Event, EventKind, FileRef, Platform, UserRef
from core.db import Database
from core.db.models import InboxRow
from core.dedup import Deduplicator, InMemoryDeduplicator
from core.ports import Clock
from core.vault import MasterKeyRing

log = logging.getLogger("byokbot.inbox")

_MAX_KEY: Final = 200
_INFO: Final = b"byokbot inbox v1"
_NONCE: Final = 12
PENDING: Final = "pending"
DONE: Final = "done"


def stored_key(key: str) -> str:
    """The row key of a delivery id (ids longer than the column are stored as their SHA-256)."""
    return key if len(key) <= _MAX_KEY else "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class InboxPort(Protocol):
    """What an adapter needs: record deliveries before confirming them, mark them done after."""

    async def record(self, events: Sequence[Event]) -> list[Event]:
        """Store ``events`` durably; return the ones seen for the first time, in order.

        Raises whatever the database raised: the caller must then not confirm the deliveries.
        """
        ...

    def finish(self, event: Event) -> None:
        """The event's turn is over (answered or refused); returns at once."""
        ...


class MemoryInbox:
    """An inbox with no table: only deduplication (unit tests, an adapter built alone)."""

    def __init__(self, dedup: Deduplicator | None = None) -> None:
        self._seen = dedup or InMemoryDeduplicator()

    async def record(self, events: Sequence[Event]) -> list[Event]:
        return [e for e in events if not e.event_id or await self._seen.first_time(e.event_id)]

    def finish(self, event: Event) -> None:
        return None


class LateInbox:
    """Handed to adapters before the database is open; ``target`` is set by the app."""

    def __init__(self) -> None:
        self.target: InboxPort | None = None

    async def record(self, events: Sequence[Event]) -> list[Event]:
        if self.target is None:
            raise RuntimeError("a delivery arrived before the database was opened")
        return await self.target.record(events)

    def finish(self, event: Event) -> None:
        if self.target is not None:
            self.target.finish(event)


# ----- the event on disk -------------------------------------------------------------------


def _meta(event: Event) -> dict[str, Any]:
    """Ids only: enough to write to the person, nothing they typed."""
    return {
        "kind": event.kind.value,
        "user": event.user.id,
        "platform": event.user.platform.value,
        "chat": event.chat.id,
        "direct": event.chat.is_direct,
        "thread": event.chat.thread_id,
        "message": event.message_id,
        "addressed": event.addressed,
    }


def _body(event: Event) -> dict[str, Any]:
    # A form-submitted secret is never stored: such a turn is not resumed, only told to resend.
    return {
        "text": event.text,
        "name": event.user.name,
        "command": event.command,
        "args": list(event.args),
        "payload": event.payload,
        "addressed": event.addressed,
        "via_modal": event.via_modal,
        "reply_to": event.reply_to,
        "attachments": [a.value for a in event.attachments],
        "files": [
            {"kind": f.kind.value, "ref": f.ref, "name": f.name, "mime": f.mime, "size": f.size}
            for f in event.files
        ],
        "links": list(event.links),
    }


def event_from(key: str, meta: dict[str, Any], body: dict[str, Any] | None) -> Event:
    """The event a row describes; without ``body``, only who and where (for a resend notice)."""
    platform = Platform(meta["platform"])
    b = body or {}
    return Event(
        kind=EventKind(meta["kind"]),
        user=UserRef(platform, str(meta["user"]), str(b.get("name", ""))),
        chat=ChatRef(platform, str(meta["chat"]), bool(meta["direct"]), meta.get("thread")),
        text=str(b.get("text", "")),
        command=str(b.get("command", "")),
        args=tuple(str(a) for a in b.get("args", [])),
        payload=str(b.get("payload", "")),
        message_id=meta.get("message"),
        addressed=bool(meta.get("addressed", b.get("addressed", True))),
        via_modal=bool(b.get("via_modal", False)),
        event_id=key,
        reply_to=b.get("reply_to"),
        attachments=tuple(AttachmentKind(a) for a in b.get("attachments", [])),
        files=tuple(
            FileRef(
                AttachmentKind(f["kind"]),
                str(f["ref"]),
                str(f.get("name", "")),
                str(f.get("mime", "")),
                f.get("size") if isinstance(f.get("size"), int) else None,
            )
            for f in b.get("files", [])
        ),
        links=tuple(str(x) for x in b.get("links", [])),
    )


@dataclass(frozen=True, slots=True)
class Orphan:
    """A delivery whose turn did not finish in the process that took it.

    ``resumable`` is False when the body is gone or cannot be opened (a retired master key),
    or the event was a form-submitted secret: then the person can only be told to resend.
    """

    event: Event
    attempts: int
    resumable: bool


class DatabaseInbox:
    """The durable inbox on the ``inbox`` table (SQLite and PostgreSQL).

    Args:
        ring: the master key ring in use (read at each seal, so a rotation is followed).
        lease_seconds: how long a pending row stays this process's without ``renew``; a row
            whose lease ran out is an orphan any process may claim.
        retention_seconds: how long a done row is kept to recognise a redelivery.
        writer: where ``finish`` marks go (retried; a locked database delays them only).
    """

    def __init__(
        self,
        db: Database,
        clock: Clock,
        ring: Callable[[], MasterKeyRing],
        writer: WriteBehind,
        *,
        lease_seconds: float = 30.0,
        retention_seconds: float = 86_400.0,
        owner: str | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._ring = ring
        self._writer = writer
        self.lease = timedelta(seconds=lease_seconds)
        self._retention = timedelta(seconds=retention_seconds)
        self.owner = owner or uuid.uuid4().hex
        if db.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            self._insert: Any = sqlite_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            self._insert = pg_insert

    # ----- sealing -----------------------------------------------------------------------

    def _aead(self, ring: MasterKeyRing, version: int) -> AESGCM:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
            ring.key(version)
        )
        return AESGCM(key)

    def _seal(self, key: str, event: Event) -> tuple[int, bytes]:
        ring = self._ring()
        version = ring.primary_version
        nonce = os.urandom(_NONCE)
        plain = json.dumps(_body(event), separators=(",", ":")).encode()
        return version, nonce + self._aead(ring, version).encrypt(nonce, plain, key.encode())

    def _open(self, key: str, version: int, blob: bytes) -> dict[str, Any] | None:
        try:
            aead = self._aead(self._ring(), version)
            plain = aead.decrypt(blob[:_NONCE], blob[_NONCE:], key.encode())
            body = json.loads(plain)
        except (InvalidTag, ValueError, KeyError, LookupError) as exc:
            log.warning("inbox: the body of %s cannot be opened (%s)", key, type(exc).__name__)
            return None
        return body if isinstance(body, dict) else None

    # ----- the port ----------------------------------------------------------------------

    async def record(self, events: Sequence[Event]) -> list[Event]:
        if not events:
            return []
        now = self._clock.now()
        rows: list[dict[str, Any]] = []
        by_key: dict[str, Event] = {}
        for event in events:
            key = stored_key(event.event_id or f"{event.user.platform.value}:{uuid.uuid4().hex}")
            if key in by_key:
                continue  # the same delivery twice in one batch
            by_key[key] = event
            version: int | None = None
            body: bytes | None = None
            if event.secret is None:
                version, body = self._seal(key, event)
            rows.append(
                {
                    "key": key,
                    "platform": event.user.platform.value,
                    "state": PENDING,
                    "owner": self.owner,
                    "attempts": 1,
                    "received_at": now,
                    "lease_until": now + self.lease,
                    "meta": _meta(event),
                    "kek_version": version,
                    "body": body,
                }
            )
        statement = (
            self._insert(InboxRow)
            .values(rows)
            .on_conflict_do_nothing(index_elements=[InboxRow.key])
            .returning(InboxRow.key)
        )
        async with self._db.session() as s, s.begin():
            fresh = set((await s.execute(statement)).scalars().all())
        return [e for k, e in by_key.items() if k in fresh]

    def finish(self, event: Event) -> None:
        key = stored_key(event.event_id)

        async def write() -> None:
            await self._mark_done(key)

        self._writer.submit("inbox", write)

    async def _mark_done(self, key: str) -> None:
        async with self._db.session() as s, s.begin():
            await s.execute(
                update(InboxRow)
                .where(InboxRow.key == key)
                .values(state=DONE, body=None, kek_version=None, lease_until=self._clock.now())
            )

    # ----- leases and orphans ------------------------------------------------------------

    async def renew(self) -> None:
        """Extend this process's leases on its pending rows (a heartbeat, every lease / 3)."""
        async with self._db.session() as s, s.begin():
            await s.execute(
                update(InboxRow)
                .where(InboxRow.owner == self.owner, InboxRow.state == PENDING)
                .values(lease_until=self._clock.now() + self.lease)
            )

    async def claim_orphans(self, platforms: Sequence[str], *, limit: int = 100) -> list[Orphan]:
        """Take pending rows of ``platforms`` whose lease ran out; each row goes to one caller."""
        now = self._clock.now()
        async with self._db.session() as s:
            candidates = (
                (
                    await s.execute(
                        select(InboxRow.key)
                        .where(
                            InboxRow.state == PENDING,
                            InboxRow.lease_until < now,
                            InboxRow.platform.in_(list(platforms)),
                        )
                        .order_by(InboxRow.received_at)
                        .limit(limit)
                    )
                )
                .scalars()
                .all()
            )
        claimed: list[Orphan] = []
        for key in candidates:
            async with self._db.session() as s, s.begin():
                # Compare-and-set on the lease: of two processes claiming, one wins.
                taken = await s.execute(
                    update(InboxRow)
                    .where(
                        and_(
                            InboxRow.key == key,
                            InboxRow.state == PENDING,
                            InboxRow.lease_until < now,
                        )
                    )
                    .values(
                        owner=self.owner,
                        lease_until=now + self.lease,
                        attempts=InboxRow.attempts + 1,
                    )
                )
                if not getattr(taken, "rowcount", 0):
                    continue
                row = await s.get(InboxRow, key)
            if row is None:
                continue
            body = None
            if row.body is not None and row.kek_version is not None:
                body = self._open(key, row.kek_version, row.body)
            event = event_from(key, dict(row.meta), body)
            claimed.append(Orphan(event, row.attempts, body is not None))
        return claimed

    async def done_now(self, event: Event) -> None:
        """Mark an orphan done at once (after telling its person to resend)."""
        await self._mark_done(stored_key(event.event_id))

    async def release(self, event: Event) -> None:
        """Give up a claimed row now, so the next ``claim_orphans`` (anyone's) takes it again."""
        async with self._db.session() as s, s.begin():
            await s.execute(
                update(InboxRow)
                .where(InboxRow.key == stored_key(event.event_id), InboxRow.owner == self.owner)
                .values(lease_until=self._clock.now() - timedelta(seconds=1))
            )

    async def sweep(self) -> int:
        """Forget done rows past the retention window."""
        cutoff = self._clock.now() - self._retention
        async with self._db.session() as s, s.begin():
            result = await s.execute(
                delete(InboxRow).where(InboxRow.state == DONE, InboxRow.lease_until < cutoff)
            )
            return int(getattr(result, "rowcount", 0) or 0)
