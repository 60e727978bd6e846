"""Tenants: one per person, their identities, plan and subscription state, and deletion.

Deleting a tenant crypto-shreds it: the wrapped data key is destroyed, so its stored keys and
encrypted memory cannot be read again even from a backup.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, proxy_tokens
from core.cache import LISTENING_SECONDS, TTLCache
from core.changes import TENANT, announce
from core.chat import UserRef
from core.credentials import Credentials
from core.db import Database
from core.db.models import (
    DataKeyRow,
    FlowStateRow,
    IdentityRow,
    IntakeSessionRow,
    McpServerRow,
    MemoryRow,
    NotesRow,
    ProviderKeyRow,
    TaskRow,
    TenantRow,
    ThreadRow,
    TimezoneRow,
)
from core.errors import TenantDeleted, TenantNotFound
from core.plans import PlanCatalog
from core.ports import Clock


class TenantStatus(StrEnum):
    """Subscription state."""

    TRIAL = "trial"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class TenantView:
    """A tenant as flows see it."""

    id: str
    plan: str
    status: TenantStatus
    status_reason: str
    paused: bool
    provider: str | None
    model: str | None
    persona: str
    created_at: datetime

    @property
    def usable(self) -> bool:
        """Whether the agent may answer for this tenant."""
        return self.status in (TenantStatus.TRIAL, TenantStatus.ACTIVE) and not self.paused


@dataclass(frozen=True, slots=True)
class TenantStats:
    """Totals for operators."""

    total: int
    by_status: dict[str, int]
    by_plan: dict[str, int]
    active_keys: int


def _view(row: TenantRow) -> TenantView:
    return TenantView(
        id=row.id,
        plan=row.plan,
        status=TenantStatus(row.status),
        status_reason=row.status_reason,
        paused=row.paused,
        provider=row.provider,
        model=row.model,
        persona=row.persona,
        created_at=row.created_at,
    )


class Tenants:
    """Creates, changes and erases tenants; every change is audited in the same transaction."""

    def __init__(
        self,
        db: Database,
        credentials: Credentials,
        plans: PlanCatalog,
        clock: Clock,
        *,
        cache_seconds: float = 5.0,
    ) -> None:
        self._db = db
        self._credentials = credentials
        self._plans = plans
        self._clock = clock
        # Every message looks its sender up; changes made here invalidate at once, changes
        # made by another replica are seen within cache_seconds.
        self._by_identity: TTLCache[str, TenantView | None] = TTLCache(ttl=cache_seconds)
        # The agent's profile reads its tenant by id on every message, under the same rule.
        self._by_id: TTLCache[str, TenantView] = TTLCache(ttl=cache_seconds)
        # Set by the composition root when the managed plan's proxy is in use: revokes the
        # tenant's scoped proxy tokens (plan change, suspension, deletion).
        self.revoke_access: Callable[[str, str], Awaitable[None]] | None = None
        # Set by the composition root: told of each new tenant (its agent may be asked soon).
        self.signed_up: Callable[[], None] | None = None
        # Called on every change made here and every one announced by another replica: caches
        # built on tenants (the agents' profiles) drop everything too.
        self.listeners: list[Callable[[], None]] = []
        # While the change feed listens every tenant change is heard: entries kept longer then.
        self.listening: Callable[[], bool] = lambda: False
        self.listening_seconds = LISTENING_SECONDS

    async def _revoke(self, tenant_id: str, actor: str) -> None:
        if self.revoke_access is not None:
            await self.revoke_access(tenant_id, actor)

    async def revoke_proxy(self, tenant_id: str, actor: str) -> None:
        """Revoke the tenant's proxy tokens without another change (a cancelled subscription)."""
        await self._revoke(tenant_id, actor)

    def _forget(self) -> None:
        # Tenant changes are rare next to messages: dropping the whole cache keeps it simple
        # (a tenant may have several identities).
        self._by_identity.clear()
        self._by_id.clear()
        for listener in self.listeners:
            listener()

    def _ttl(self) -> float | None:
        return self.listening_seconds if self.listening() else None

    def changed(self) -> None:
        """Another replica changed a tenant (``core.changes``)."""
        self._forget()

    async def find(self, identity: str) -> TenantView | None:
        """The live tenant an identity belongs to, if any."""
        hit, cached = self._by_identity.get(identity, ttl=self._ttl())
        if hit:
            return cached
        since = self._by_identity.generation
        async with self._db.session() as s:
            row = await s.scalar(
                select(TenantRow)
                .join(IdentityRow, IdentityRow.tenant_id == TenantRow.id)
                .where(IdentityRow.identity == identity)
            )
            view = _view(row) if row is not None else None
        self._by_identity.put(identity, view, since=since)
        return view

    async def get(self, tenant_id: str) -> TenantView:
        hit, cached = self._by_id.get(tenant_id, ttl=self._ttl())
        if hit and cached is not None:
            return cached
        since = self._by_id.generation
        async with self._db.session() as s:
            row = await s.get(TenantRow, tenant_id)
            if row is None:
                raise TenantNotFound(tenant_id)
            view = _view(row)
        self._by_id.put(tenant_id, view, since=since)
        return view

    async def resolve(self, ref: str) -> TenantView:
        """A tenant by id or by ``platform:user_id`` (what operators type)."""
        if ":" in ref:
            found = await self.find(ref)
            if found is None:
                raise TenantNotFound(ref)
            return found
        return await self.get(ref)

    async def sign_up(self, user: UserRef, plan_id: str, *, dm_chat_id: str | None) -> TenantView:
        """Create a tenant for a person, with its own data key."""
        plan = self._plans.get(plan_id)
        now = self._clock.now()
        tenant_id = secrets.token_hex(16)
        self._forget()
        async with self._db.session() as s, s.begin():
            row = TenantRow(
                id=tenant_id,
                plan=plan.id,
                status=TenantStatus.TRIAL.value,
                status_reason="",
                paused=False,
                persona="",
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            await s.flush()
            s.add(
                IdentityRow(
                    identity=user.identity,
                    tenant_id=tenant_id,
                    platform=user.platform.value,
                    display_name=user.name[:200],
                    dm_chat_id=dm_chat_id,
                    created_at=now,
                )
            )
            await self._credentials.create_data_key(s, tenant_id)
            audit.record(
                s,
                at=now,
                actor=user.identity,
                action="tenant.created",
                tenant_id=tenant_id,
                plan=plan.id,
            )
            await announce(s, TENANT, tenant_id)
        self._forget()
        if self.signed_up is not None:
            self.signed_up()
        return _view(row)

    async def attach_identity(
        self, tenant_id: str, user: UserRef, *, dm_chat_id: str | None
    ) -> TenantView:
        """Link another platform account to a tenant (``link``): same agent, keys and plan."""
        now = self._clock.now()
        self._forget()
        async with self._db.session() as s, s.begin():
            row = await s.get(TenantRow, tenant_id)
            if row is None or row.status == TenantStatus.DELETED.value:
                raise TenantNotFound(tenant_id)
            s.add(
                IdentityRow(
                    identity=user.identity,
                    tenant_id=tenant_id,
                    platform=user.platform.value,
                    display_name=user.name[:200],
                    dm_chat_id=dm_chat_id,
                    created_at=now,
                )
            )
            audit.record(
                s,
                at=now,
                actor=user.identity,
                action="identity.linked",
                tenant_id=tenant_id,
                platform=user.platform.value,
            )
            await announce(s, TENANT, tenant_id)
            view = _view(row)
        self._forget()
        return view

    async def note_dm(self, user: UserRef, chat_id: str) -> None:
        """Remember the DM chat of a known identity, for alerts and broadcasts."""
        async with self._db.session() as s, s.begin():
            await s.execute(
                update(IdentityRow)
                .where(IdentityRow.identity == user.identity, IdentityRow.dm_chat_id.is_(None))
                .values(dm_chat_id=chat_id)
            )

    async def dm_targets(self) -> list[tuple[str, str, str]]:
        """(tenant id, platform, DM chat id) of every live tenant reachable by DM."""
        async with self._db.session() as s:
            rows = await s.execute(
                select(IdentityRow.tenant_id, IdentityRow.platform, IdentityRow.dm_chat_id)
                .join(TenantRow, TenantRow.id == IdentityRow.tenant_id)
                .where(
                    IdentityRow.dm_chat_id.is_not(None),
                    TenantRow.status != TenantStatus.DELETED.value,
                )
            )
            return [(t, p, c) for t, p, c in rows.all() if c is not None]

    async def _change(
        self,
        tenant_id: str,
        *,
        actor: str,
        action: str,
        detail: dict[str, str] | None = None,
        revokes: bool = False,
        **values: object,
    ) -> TenantView:
        now = self._clock.now()
        self._forget()
        async with self._db.session() as s, s.begin():
            row = await s.get(TenantRow, tenant_id, with_for_update=True)
            if row is None:
                raise TenantNotFound(tenant_id)
            if row.status == TenantStatus.DELETED.value:
                raise TenantDeleted(tenant_id)
            for k, v in values.items():
                setattr(row, k, v)
            row.updated_at = now
            audit.record(
                s, at=now, actor=actor, action=action, tenant_id=tenant_id, **(detail or {})
            )
            if revokes:
                await proxy_tokens.record_revocation(s)
            await announce(s, TENANT, tenant_id)
            view = _view(row)
        # Again after the commit: a read that ran beside the write saw the old row.
        self._forget()
        return view

    async def set_plan(self, tenant_id: str, plan_id: str, *, actor: str) -> TenantView:
        """Change plan; keys, memory, persona and model stay (SPEC: nothing is lost)."""
        plan = self._plans.get(plan_id)
        view = await self._change(
            tenant_id,
            actor=actor,
            action="tenant.plan_changed",
            detail={"plan": plan.id},
            plan=plan.id,
        )
        await self._revoke(tenant_id, actor)
        return view

    async def activate(self, tenant_id: str, *, actor: str) -> TenantView:
        """A trial tenant whose setup is complete (a key, or a managed plan) becomes active."""
        t = await self.get(tenant_id)
        if t.status is not TenantStatus.TRIAL:
            return t
        return await self._change(
            tenant_id, actor=actor, action="tenant.activated", status=TenantStatus.ACTIVE.value
        )

    async def set_paused(self, tenant_id: str, paused: bool, *, actor: str) -> TenantView:
        view = await self._change(
            tenant_id,
            actor=actor,
            action="tenant.paused" if paused else "tenant.unpaused",
            revokes=paused,
            paused=paused,
        )
        if paused:  # its proxy token stops working now, here and (< 1 s) in other processes
            proxy_tokens.forget_everywhere(tenant_id)
        return view

    async def suspend(self, tenant_id: str, *, actor: str, reason: str) -> TenantView:
        view = await self._change(
            tenant_id,
            actor=actor,
            action="tenant.suspended",
            detail={"reason": reason},
            status=TenantStatus.SUSPENDED.value,
            status_reason=reason[:200],
        )
        await self._revoke(tenant_id, actor)
        return view

    async def resume(self, tenant_id: str, *, actor: str) -> TenantView:
        return await self._change(
            tenant_id,
            actor=actor,
            action="tenant.resumed",
            status=TenantStatus.ACTIVE.value,
            status_reason="",
        )

    async def set_model(
        self, tenant_id: str, provider: str, model: str, *, actor: str
    ) -> TenantView:
        return await self._change(
            tenant_id,
            actor=actor,
            action="tenant.model_changed",
            detail={"provider": provider, "model": model},
            provider=provider,
            model=model,
        )

    async def set_persona(self, tenant_id: str, persona: str, *, actor: str) -> TenantView:
        return await self._change(
            tenant_id,
            actor=actor,
            action="tenant.persona_changed",
            detail={"chars": str(len(persona))},
            persona=persona,
        )

    async def delete(self, tenant_id: str, *, actor: str) -> None:
        """Erase a tenant: destroy its data key, keys, memory, sessions and identities."""
        now = self._clock.now()
        self._forget()
        async with self._db.session() as s, s.begin():
            row = await s.get(TenantRow, tenant_id, with_for_update=True)
            if row is None:
                raise TenantNotFound(tenant_id)
            identities = (
                await s.scalars(
                    select(IdentityRow.identity).where(IdentityRow.tenant_id == tenant_id)
                )
            ).all()
            await s.execute(delete(FlowStateRow).where(FlowStateRow.identity.in_(identities)))
            await s.execute(delete(IntakeSessionRow).where(IntakeSessionRow.tenant_id == tenant_id))
            await s.execute(delete(ProviderKeyRow).where(ProviderKeyRow.tenant_id == tenant_id))
            await s.execute(delete(MemoryRow).where(MemoryRow.tenant_id == tenant_id))
            await s.execute(delete(NotesRow).where(NotesRow.tenant_id == tenant_id))
            await s.execute(delete(McpServerRow).where(McpServerRow.tenant_id == tenant_id))
            await s.execute(delete(ThreadRow).where(ThreadRow.tenant_id == tenant_id))
            await s.execute(delete(TaskRow).where(TaskRow.tenant_id == tenant_id))
            await s.execute(delete(TimezoneRow).where(TimezoneRow.tenant_id == tenant_id))
            await s.execute(delete(DataKeyRow).where(DataKeyRow.tenant_id == tenant_id))
            await s.execute(delete(IdentityRow).where(IdentityRow.tenant_id == tenant_id))
            row.status = TenantStatus.DELETED.value
            row.persona = ""
            row.model = None
            row.provider = None
            row.paused = False
            row.updated_at = now
            audit.record(s, at=now, actor=actor, action="tenant.deleted", tenant_id=tenant_id)
            await announce(s, TENANT, tenant_id)
        self._forget()
        await self._db.purge_deleted()
        await self._revoke(tenant_id, actor)

    async def list(
        self, *, offset: int = 0, limit: int = 20, include_deleted: bool = False
    ) -> Sequence[tuple[TenantView, builtins.list[str]]]:
        """Tenants with their identities, newest first."""
        async with self._db.session() as s:
            q = select(TenantRow).order_by(TenantRow.created_at.desc()).offset(offset).limit(limit)
            if not include_deleted:
                q = q.where(TenantRow.status != TenantStatus.DELETED.value)
            rows = (await s.scalars(q)).all()
            out = []
            for r in rows:
                ids = await _identities(s, r.id)
                out.append((_view(r), ids))
            return out

    async def identities(self, tenant_id: str) -> builtins.list[str]:
        async with self._db.session() as s:
            return await _identities(s, tenant_id)

    async def stats(self) -> TenantStats:
        async with self._db.session() as s:
            by_status = dict(
                (
                    await s.execute(
                        select(TenantRow.status, func.count()).group_by(TenantRow.status)
                    )
                ).all()
            )
            by_plan = dict(
                (
                    await s.execute(
                        select(TenantRow.plan, func.count())
                        .where(TenantRow.status != TenantStatus.DELETED.value)
                        .group_by(TenantRow.plan)
                    )
                ).all()
            )
            keys = await s.scalar(
                select(func.count())
                .select_from(ProviderKeyRow)
                .where(ProviderKeyRow.status == "active")
            )
        total = sum(v for k, v in by_status.items() if k != TenantStatus.DELETED.value)
        return TenantStats(total=total, by_status=by_status, by_plan=by_plan, active_keys=keys or 0)


async def _identities(s: AsyncSession, tenant_id: str) -> list[str]:
    return list(
        (
            await s.scalars(
                select(IdentityRow.identity)
                .where(IdentityRow.tenant_id == tenant_id)
                .order_by(IdentityRow.identity)
            )
        ).all()
    )
