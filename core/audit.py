"""Append-only audit log of every tenant-affecting action. Details never hold a secret."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.db.models import AuditRow
from core.keys import redact

_MAX_DETAIL_CHARS = 500


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row as read back."""

    id: int
    at: datetime
    actor: str
    tenant_id: str | None
    action: str
    detail: Mapping[str, Any]


def _clean(value: Any) -> Any:
    """Detail values pass the leak detector too: an action should never carry key text."""
    if isinstance(value, str):
        return redact(value)[:_MAX_DETAIL_CHARS]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(str(value))[:_MAX_DETAIL_CHARS]


def record(
    session: AsyncSession,
    *,
    at: datetime,
    actor: str,
    action: str,
    tenant_id: str | None = None,
    **detail: Any,
) -> None:
    """Add an audit row to the caller's unit of work, so it commits with the change it describes."""
    session.add(
        AuditRow(
            at=at,
            actor=actor,
            tenant_id=tenant_id,
            action=action,
            detail={k: _clean(v) for k, v in detail.items()},
        )
    )


async def read(
    session: AsyncSession, *, tenant_id: str | None = None, limit: int = 20
) -> list[AuditEntry]:
    """The newest entries first, optionally for one tenant."""
    q = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
    if tenant_id is not None:
        q = q.where(AuditRow.tenant_id == tenant_id)
    rows = (await session.scalars(q)).all()
    return [AuditEntry(r.id, r.at, r.actor, r.tenant_id, r.action, dict(r.detail)) for r in rows]
