"""Who may sign up (``[access] mode``): invite codes and approval requests.

In ``invite`` mode a stranger needs a code an operator made (``/admin invite``); in
``approval`` mode their request waits for an operator's Approve or Deny. Codes are short-lived
admission tickets, not secrets that open an account, so they are stored as typed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from core import audit
from core.chat import UserRef
from core.db import Database
from core.db.models import AccessRequestRow, InviteRow
from core.ports import Clock

_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: codes are typed by hand


@dataclass(frozen=True, slots=True)
class Invite:
    code: str
    plan: str | None
    uses_left: int


@dataclass(frozen=True, slots=True)
class AccessRequest:
    identity: str
    plan: str
    status: str
    display_name: str
    dm_chat_id: str | None
    created_at: datetime


def _request(row: AccessRequestRow) -> AccessRequest:
    return AccessRequest(
        row.identity, row.plan, row.status, row.display_name, row.dm_chat_id, row.created_at
    )


class Access:
    """Invite codes and approval requests, audited."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def create_invite(self, *, plan: str | None, uses: int, actor: str) -> Invite:
        code = "".join(secrets.choice(_ALPHABET) for _ in range(10))
        now = self._clock.now()
        async with self._db.session() as s, s.begin():
            s.add(InviteRow(code=code, plan=plan, uses_left=uses, created_by=actor, created_at=now))
            audit.record(
                s,
                at=now,
                actor=actor,
                action="access.invite_created",
                tenant_id=None,
                plan=plan or "",
                uses=str(uses),
            )
        return Invite(code, plan, uses)

    async def redeem(self, code: str, *, actor: str) -> Invite | None:
        """Use one admission of ``code``; None when it is unknown or used up."""
        code = code.strip().upper()
        now = self._clock.now()
        async with self._db.session() as s, s.begin():
            row = await s.get(InviteRow, code[:32], with_for_update=True)
            if row is None or row.uses_left <= 0:
                return None
            row.uses_left -= 1
            audit.record(
                s, at=now, actor=actor, action="access.invite_used", tenant_id=None, code=code
            )
            return Invite(row.code, row.plan, row.uses_left)

    async def request(self, user: UserRef, plan: str, *, dm_chat_id: str | None) -> bool:
        """File a request; False when one is already waiting for this person."""
        now = self._clock.now()
        async with self._db.session() as s, s.begin():
            row = await s.get(AccessRequestRow, user.identity, with_for_update=True)
            if row is not None and row.status == "pending":
                return False
            if row is None:
                row = AccessRequestRow(identity=user.identity, created_at=now)
                s.add(row)
            row.plan = plan
            row.status = "pending"
            row.display_name = user.name[:200]
            row.dm_chat_id = dm_chat_id
            row.created_at = now
            audit.record(
                s,
                at=now,
                actor=user.identity,
                action="access.requested",
                tenant_id=None,
                plan=plan,
            )
        return True

    async def get_request(self, identity: str) -> AccessRequest | None:
        async with self._db.session() as s:
            row = await s.get(AccessRequestRow, identity)
            return _request(row) if row is not None else None

    async def decide(self, identity: str, *, approve: bool, actor: str) -> AccessRequest | None:
        """Approve or deny a pending request; None when none is pending (decided already)."""
        now = self._clock.now()
        async with self._db.session() as s, s.begin():
            row = await s.get(AccessRequestRow, identity, with_for_update=True)
            if row is None or row.status != "pending":
                return None
            row.status = "approved" if approve else "denied"
            audit.record(
                s,
                at=now,
                actor=actor,
                action=f"access.{row.status}",
                tenant_id=None,
                identity=identity,
                plan=row.plan,
            )
            return _request(row)

    async def pending(self) -> list[AccessRequest]:
        async with self._db.session() as s:
            rows = await s.scalars(
                select(AccessRequestRow)
                .where(AccessRequestRow.status == "pending")
                .order_by(AccessRequestRow.created_at)
            )
            return [_request(r) for r in rows.all()]
