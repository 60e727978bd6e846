"""Subscriptions: trial → active → past_due → suspended → cancelled, platform- and provider-free.

Payment providers (Telegram Stars, Stripe) only report facts here — a charge, a failed renewal,
a cancellation — and ``tick`` (an APScheduler job in ``byokbot run``) moves subscriptions on as
time passes: trials and periods end, grace runs out, reminders fall due. Every transition is in
the audit log and told to the person through ``BillingNotices``.

A suspended tenant keeps its keys, memory and settings; its agent stops and its proxy token
is revoked (``Tenants.suspend``). A payment brings it back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit
from core.cache import TTLCache
from core.changes import BILLING, announce
from core.config import Config
from core.db import Database
from core.db.models import BillingEventRow, PaymentRow, SubscriptionRow, TrialUseRow
from core.errors import TenantError
from core.ports import Agents, Clock
from core.proxy_tokens import forget_everywhere, record_revocation
from core.tenants import Tenants, TenantStatus, TenantView

log = logging.getLogger("byokbot.billing")

# The status reason of a tenant billing suspended: only billing resumes it (an operator's
# suspension is not lifted by a payment).
BILLING_REASON = "payment overdue"


class SubState(StrEnum):
    TRIAL = "trial"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    SUSPENDED = "suspended"
    CANCELLED = "cancelled"


# States in which the plan may be used (past_due is the grace period).
ENTITLED = frozenset({SubState.TRIAL, SubState.ACTIVE, SubState.PAST_DUE})


@dataclass(frozen=True, slots=True)
class Subscription:
    tenant_id: str
    plan: str
    state: SubState
    provider: str
    period_start: datetime | None
    period_end: datetime | None
    grace_until: datetime | None
    pending_plan: str | None
    external_id: str | None
    customer_id: str | None
    auto_renew: bool


@dataclass(frozen=True, slots=True)
class Revenue:
    """For ``/admin revenue``: MRR per provider and subscriptions per state."""

    mrr_stars: int
    mrr_usd: float
    by_state: Mapping[str, int]
    by_provider: Mapping[str, int]
    paid_30d: Mapping[str, int]  # provider -> amount (Stars, or US cents) in the last 30 days


class BillingNotices(Protocol):
    """Tells a tenant about its subscription (the bot layer words ``kind`` with ``params``)."""

    async def notify(self, tenant_id: str, kind: str, params: Mapping[str, str]) -> None: ...


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every time here is UTC.
    if value is None or value.tzinfo is not None:
        return value
    from datetime import UTC

    return value.replace(tzinfo=UTC)


def _view(row: SubscriptionRow) -> Subscription:
    return Subscription(
        tenant_id=row.tenant_id,
        plan=row.plan,
        state=SubState(row.state),
        provider=row.provider,
        period_start=_aware(row.period_start),
        period_end=_aware(row.period_end),
        grace_until=_aware(row.grace_until),
        pending_plan=row.pending_plan,
        external_id=row.external_id,
        customer_id=row.customer_id,
        auto_renew=row.auto_renew,
    )


def _due_at(row: SubscriptionRow, reminder_days: float) -> datetime | None:
    """When ``tick`` next has to look at ``row``: reminder, period end or grace end."""
    state, end = row.state, _aware(row.period_end)
    if state == SubState.PAST_DUE.value:
        return _aware(row.grace_until)
    if state not in (SubState.TRIAL.value, SubState.ACTIVE.value) or end is None:
        return None
    reminds = row.auto_renew or state == SubState.TRIAL.value
    if reminds and reminder_days > 0 and _aware(row.reminded_for) != end:
        return end - timedelta(days=reminder_days)
    return end


def day(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "—"


class Billing:
    """The subscription lifecycle; see the module docstring."""

    def __init__(
        self,
        db: Database,
        tenants: Tenants,
        config: Config,
        clock: Clock,
        *,
        agents: Agents | None = None,
        notices: BillingNotices | None = None,
    ) -> None:
        self._db = db
        self._tenants = tenants
        self._config = config
        self._settings = config.billing
        self._clock = clock
        self.agents = agents
        self.notices = notices
        # Read on every message (entitlement, trial cap); this process's writes drop their
        # entry once committed, another replica's within the time limit or at once through
        # ``changed`` (core.changes).
        self._subs: TTLCache[str, Subscription | None] = TTLCache(ttl=5.0)
        # The card provider (Stripe), when configured: plan changes of its subscriptions are
        # made there, so what it charges and what byokbot grants agree.
        self.cards: CheckoutLinks | None = None

    # ----- reading -------------------------------------------------------------------------

    def needs_entitlement(self, plan_id: str) -> bool:
        """Whether a plan is used only while paid, in a trial, or granted.

        A managed plan spends the platform's model budget, so it is never free; a BYOK plan
        is free unless a configured payment provider prices it.
        """
        plan = self._config.plans.get(plan_id)
        if plan is None:
            return True
        return not plan.byok or bool(self._settings.payable(plan_id))

    def trial_days(self, plan_id: str) -> float:
        return self._settings.plan(plan_id).trial_days

    async def get(self, tenant_id: str) -> Subscription | None:
        hit, cached = self._subs.get(tenant_id)
        if hit:
            return cached
        since = self._subs.generation
        async with self._db.session() as s:
            row = await s.get(SubscriptionRow, tenant_id)
            view = _view(row) if row is not None else None
        self._subs.put(tenant_id, view, since=since)
        return view

    def changed(self, tenant_id: str | None = None) -> None:
        """A subscription changed elsewhere (another replica): read it again."""
        if tenant_id is None:
            self._subs.clear()
        else:
            self._subs.invalidate(tenant_id)

    async def entitled(self, tenant: TenantView) -> bool:
        """Whether the tenant may use its plan now."""
        if not self.needs_entitlement(tenant.plan):
            return True
        sub = await self.get(tenant.id)
        return sub is not None and sub.plan == tenant.plan and sub.state in ENTITLED

    async def trial_cap(self, tenant: TenantView) -> int | None:
        """The smaller token allowance of a trial of the tenant's plan, while it is in one."""
        cap = self._settings.plan(tenant.plan).trial_token_cap
        if cap is None:
            return None
        sub = await self.get(tenant.id)
        if sub is None or sub.state is not SubState.TRIAL or sub.plan != tenant.plan:
            return None
        return cap

    async def find_by_external(self, external_id: str) -> Subscription | None:
        async with self._db.session() as s:
            row = await s.scalar(
                select(SubscriptionRow).where(SubscriptionRow.external_id == external_id)
            )
            return _view(row) if row is not None else None

    async def find_by_customer(self, customer_id: str) -> Subscription | None:
        async with self._db.session() as s:
            row = await s.scalar(
                select(SubscriptionRow).where(SubscriptionRow.customer_id == customer_id)
            )
            return _view(row) if row is not None else None

    async def trial_used(self, identities: Sequence[str]) -> bool:
        async with self._db.session() as s:
            found = await s.scalar(
                select(func.count())
                .select_from(TrialUseRow)
                .where(TrialUseRow.identity.in_(list(identities)))
            )
            return bool(found)

    async def payment(self, charge_id: str) -> PaymentRow | None:
        async with self._db.session() as s:
            return await s.scalar(select(PaymentRow).where(PaymentRow.charge_id == charge_id))

    # ----- provider events, exactly once ---------------------------------------------------

    async def first_time(self, event_id: str) -> bool:
        """Claim a provider event id; False when it was processed before (even before a restart)."""
        try:
            async with self._db.session() as s, s.begin():
                s.add(BillingEventRow(id=event_id[:200], at=self._clock.now()))
        except IntegrityError:
            return False
        return True

    async def forget_event(self, event_id: str) -> None:
        """Release a claim whose processing failed, so the provider's retry is processed."""
        async with self._db.session() as s, s.begin():
            row = await s.get(BillingEventRow, event_id[:200])
            if row is not None:
                await s.delete(row)

    # ----- transitions ---------------------------------------------------------------------

    async def _save(
        self,
        tenant_id: str,
        *,
        actor: str,
        action: str,
        event_at: datetime | None = None,
        detail: Mapping[str, str] | None = None,
        **values: object,
    ) -> tuple[Subscription, SubState | None] | None:
        """Create or change the row; None when ``event_at`` is older than the last applied."""
        try:
            return await self._write(
                tenant_id, actor=actor, action=action, event_at=event_at, detail=detail, **values
            )
        finally:
            self._subs.invalidate(tenant_id)  # after the commit: no reader caches the old row

    async def _write(
        self,
        tenant_id: str,
        *,
        actor: str,
        action: str,
        event_at: datetime | None,
        detail: Mapping[str, str] | None,
        **values: object,
    ) -> tuple[Subscription, SubState | None] | None:
        now = self._clock.now()
        async with self._db.session() as s, s.begin():
            row = await s.get(SubscriptionRow, tenant_id, with_for_update=True)
            before = SubState(row.state) if row is not None else None
            if row is None:
                row = SubscriptionRow(
                    tenant_id=tenant_id,
                    plan=str(values.get("plan", "")),
                    state=str(values.get("state", SubState.ACTIVE.value)),
                    provider="",
                    auto_renew=False,
                    updated_at=now,
                )
                s.add(row)
            elif event_at is not None:
                last = _aware(row.last_event_at)
                if last is not None and event_at < last:
                    return None  # out of order: a newer event already decided
            for k, v in values.items():
                setattr(row, k, v)
            if event_at is not None:
                row.last_event_at = event_at
            row.updated_at = now
            row.due_at = _due_at(row, self._settings.reminder_days)
            audit.record(
                s,
                at=now,
                actor=actor,
                action=action,
                tenant_id=tenant_id,
                state=row.state,
                plan=row.plan,
                **dict(detail or {}),
            )
            await announce(s, BILLING, tenant_id)
            await s.flush()
            trial_changed = (before is SubState.TRIAL) != (row.state == SubState.TRIAL.value)
            if trial_changed:
                # The proxy caches whether a token's tenant is in a trial (its smaller cap).
                await record_revocation(s)
            view = _view(row)
        if trial_changed:
            forget_everywhere(tenant_id)
        return view, before

    async def _tell(self, tenant_id: str, kind: str, **params: str) -> None:
        if self.notices is None:
            return
        try:
            await self.notices.notify(tenant_id, kind, params)
        except Exception:  # a notice that cannot be delivered must not undo the transition
            log.warning("billing notice %s for %s not delivered", kind, tenant_id, exc_info=True)

    async def _switch_plan(self, tenant_id: str, plan: str, actor: str) -> None:
        tenant = await self._tenants.get(tenant_id)
        if tenant.plan != plan:
            await self._tenants.set_plan(tenant_id, plan, actor=actor)
            if self.agents is not None:
                await self.agents.reconfigure(tenant_id)

    async def _lift_suspension(self, tenant_id: str, actor: str) -> bool:
        tenant = await self._tenants.get(tenant_id)
        if tenant.status is TenantStatus.SUSPENDED and tenant.status_reason == BILLING_REASON:
            await self._tenants.resume(tenant_id, actor=actor)
            return True
        if tenant.status is TenantStatus.TRIAL:
            await self._tenants.activate(tenant_id, actor=actor)
        return False

    async def _stop(self, tenant_id: str, actor: str) -> None:
        """Suspend: the agent stops, the proxy token is revoked; data stays."""
        try:
            tenant = await self._tenants.get(tenant_id)
            if tenant.status is not TenantStatus.SUSPENDED:
                await self._tenants.suspend(tenant_id, actor=actor, reason=BILLING_REASON)
        except TenantError:
            return
        if self.agents is not None:
            await self.agents.forget(tenant_id)

    async def start_trial(self, tenant_id: str, plan: str, identities: Sequence[str]) -> bool:
        """A trial of ``plan``, once per person (any of ``identities``); False if had before."""
        days = self.trial_days(plan)
        if days <= 0 or await self.trial_used(identities):
            return False
        now = self._clock.now()
        try:
            async with self._db.session() as s, s.begin():
                for identity in identities:
                    s.add(TrialUseRow(identity=identity, at=now))
        except IntegrityError:
            return False  # another turn of the same person started one first
        end = now + timedelta(days=days)
        await self._save(
            tenant_id,
            actor="billing",
            action="billing.trial_started",
            plan=plan,
            state=SubState.TRIAL.value,
            provider="trial",
            period_start=now,
            period_end=end,
            grace_until=None,
            auto_renew=False,
        )
        await self._tell(tenant_id, "trial_started", end=day(end))
        return True

    async def note_identity(self, identity: str, tenant_id: str) -> None:
        """A linked identity shares the tenant's trial: it cannot start another one later."""
        async with self._db.session() as s:
            had = await s.scalar(
                select(func.count())
                .select_from(SubscriptionRow)
                .where(SubscriptionRow.tenant_id == tenant_id)
            )
        if not had:
            return
        try:
            async with self._db.session() as s, s.begin():
                s.add(TrialUseRow(identity=identity, at=self._clock.now()))
        except IntegrityError:
            return

    async def grant(self, tenant_id: str, plan: str, days: float, *, actor: str) -> Subscription:
        """An operator's grant (a comp, an invite, an approval): ``plan`` for ``days``."""
        now = self._clock.now()
        current = await self.get(tenant_id)
        start = now
        if (
            current is not None
            and current.plan == plan
            and current.state in (SubState.ACTIVE, SubState.TRIAL)
            and current.period_end is not None
            and current.period_end > now
        ):
            start = current.period_end
        end = start + timedelta(days=days)
        await self._switch_plan(tenant_id, plan, actor)
        saved = await self._save(
            tenant_id,
            actor=actor,
            action="billing.granted",
            detail={"days": f"{days:g}"},
            plan=plan,
            state=SubState.ACTIVE.value,
            provider="grant",
            period_start=now,
            period_end=end,
            grace_until=None,
            pending_plan=None,
            auto_renew=False,
        )
        assert saved is not None  # noqa: S101 - no event time, never out of order
        await self._lift_suspension(tenant_id, actor)
        await self._tell(tenant_id, "granted", plan=plan, end=day(end))
        return saved[0]

    async def paid(
        self,
        tenant_id: str,
        *,
        plan: str,
        provider: str,
        charge_id: str,
        amount: int,
        currency: str,
        payer: str = "",
        period_end: datetime | None = None,
        external_id: str | None = None,
        customer_id: str | None = None,
        event_at: datetime | None = None,
    ) -> bool:
        """A charge went through: recorded once by ``charge_id``; the period runs from now.

        Returns False (and changes nothing) for a charge already recorded.
        """
        now = self._clock.now()
        try:
            async with self._db.session() as s, s.begin():
                s.add(
                    PaymentRow(
                        tenant_id=tenant_id,
                        provider=provider,
                        charge_id=charge_id[:200],
                        amount=amount,
                        currency=currency[:8],
                        plan=plan,
                        payer=payer[:200],
                        at=now,
                        refunded=False,
                    )
                )
        except IntegrityError:
            return False
        current = await self.get(tenant_id)
        if current is not None and current.pending_plan and current.plan == plan:
            plan = current.pending_plan  # a change chosen for the period's end takes effect
        start = now
        if (
            current is not None
            and current.state is SubState.ACTIVE
            and current.period_end is not None
            and current.period_end > now
            and current.plan == plan
        ):
            start = current.period_end  # paid early: the new period follows the current one
        end = period_end or start + timedelta(days=self._settings.period_days)
        values: dict[str, object] = {
            "plan": plan,
            "state": SubState.ACTIVE.value,
            "provider": provider,
            "period_start": now,
            "period_end": end,
            "grace_until": None,
            "pending_plan": None,
            "auto_renew": True,
        }
        if external_id:
            values["external_id"] = external_id
        if customer_id:
            values["customer_id"] = customer_id
        saved = await self._save(
            tenant_id,
            actor=f"billing:{provider}",
            action="billing.paid",
            event_at=event_at,
            detail={"charge": charge_id[:80], "amount": str(amount), "currency": currency},
            **values,
        )
        if saved is None:
            # Older than what the provider said since (a late retry): the charge is kept,
            # the newer state stands.
            return True
        await self._switch_plan(tenant_id, plan, f"billing:{provider}")
        resumed = await self._lift_suspension(tenant_id, f"billing:{provider}")
        await self._tell(
            tenant_id,
            "receipt",
            plan=plan,
            amount=_money(amount, currency),
            charge=charge_id[:80],
            end=day(end),
        )
        if resumed:
            await self._tell(tenant_id, "resumed", plan=plan)
        return True

    async def payment_failed(self, tenant_id: str, *, event_at: datetime | None = None) -> None:
        """A renewal charge failed: past due, with the configured grace before suspension."""
        current = await self.get(tenant_id)
        if current is None or current.state in (SubState.SUSPENDED, SubState.CANCELLED):
            return
        grace = self._clock.now() + timedelta(days=self._settings.grace_days)
        if current.state is SubState.PAST_DUE and current.grace_until is not None:
            grace = current.grace_until  # a retry failing again does not extend the grace
        saved = await self._save(
            tenant_id,
            actor="billing",
            action="billing.past_due",
            event_at=event_at,
            state=SubState.PAST_DUE.value,
            grace_until=grace,
        )
        if saved is not None and saved[1] is not SubState.PAST_DUE:
            await self._tell(tenant_id, "past_due", plan=current.plan, grace=day(grace))

    async def provider_update(
        self,
        tenant_id: str,
        *,
        event_at: datetime,
        period_end: datetime | None,
        auto_renew: bool,
        status: str,
    ) -> None:
        """The provider's view of the subscription changed (renewal date, cancel at period end)."""
        current = await self.get(tenant_id)
        if current is None:
            return
        values: dict[str, object] = {"auto_renew": auto_renew}
        if period_end is not None:
            values["period_end"] = period_end
        saved = await self._save(
            tenant_id,
            actor="billing",
            action="billing.updated",
            event_at=event_at,
            detail={"provider_status": status[:40], "renews": str(auto_renew).lower()},
            **values,
        )
        if saved is None:
            return
        if status in ("past_due", "unpaid"):
            await self.payment_failed(tenant_id, event_at=event_at)
        elif current.auto_renew and not auto_renew:
            await self._tell(tenant_id, "cancelling", plan=current.plan, end=day(period_end))

    async def cancel(self, tenant_id: str, *, actor: str, event_at: datetime | None = None) -> None:
        """The subscription ended now (Stripe deleted it, or the operator): the plan stops."""
        current = await self.get(tenant_id)
        if current is None or current.state is SubState.CANCELLED:
            return
        saved = await self._save(
            tenant_id,
            actor=actor,
            action="billing.cancelled",
            event_at=event_at,
            state=SubState.CANCELLED.value,
            auto_renew=False,
            grace_until=None,
        )
        if saved is None:
            return
        if self.agents is not None:
            await self.agents.forget(tenant_id)
        await self._tenants.revoke_proxy(tenant_id, actor)
        await self._tell(tenant_id, "cancelled", plan=current.plan)

    async def refunded(self, charge_id: str, *, actor: str) -> PaymentRow | None:
        """Mark a charge refunded; the subscription it paid for ends now."""
        async with self._db.session() as s, s.begin():
            row = await s.scalar(
                select(PaymentRow).where(PaymentRow.charge_id == charge_id).with_for_update()
            )
            if row is None or row.refunded:
                return None
            row.refunded = True
            audit.record(
                s,
                at=self._clock.now(),
                actor=actor,
                action="billing.refunded",
                tenant_id=row.tenant_id,
                charge=charge_id[:80],
                amount=str(row.amount),
            )
        await self._tell(row.tenant_id, "refunded", amount=_money(row.amount, row.currency))
        await self.cancel(row.tenant_id, actor=actor)
        return row

    async def change_plan(self, tenant_id: str, plan: str, *, actor: str) -> str:
        """The person picked another plan while subscribed; "pending", "prorated" or "now"."""
        current = await self.get(tenant_id)
        now = self._clock.now()
        if (
            current is None
            or current.state not in (SubState.ACTIVE,)
            or current.period_end is None
            or current.period_end <= now
            or current.provider == "trial"
        ):
            return "now"
        prorate = self._settings.plan_change == "prorate"
        price = self._settings.plan(plan).stripe_price
        if current.provider == "stripe" and current.external_id and self.cards and price:
            # Stripe charges for the change (or not) by proration_behavior; byokbot follows.
            await self.cards.change_price(
                current.external_id, tenant_id=tenant_id, plan=plan, price=price, prorate=prorate
            )
            if prorate:
                await self._switch_plan(tenant_id, plan, actor)
                await self._save(
                    tenant_id,
                    actor=actor,
                    action="billing.plan_prorated",
                    detail={"from": current.plan, "to": plan, "by": "stripe"},
                    plan=plan,
                    pending_plan=None,
                )
                await self._tell(tenant_id, "plan_prorated_card", plan=plan)
                return "prorated"
        if not prorate:
            await self._save(
                tenant_id,
                actor=actor,
                action="billing.plan_pending",
                detail={"to": plan},
                pending_plan=plan,
            )
            await self._tell(tenant_id, "plan_pending", plan=plan, end=day(current.period_end))
            return "pending"
        # Prorated by value: what is left of the period at the old price buys time at the new.
        old = self._config.plans[current.plan].price_usd
        new = self._config.plans[plan].price_usd
        left = current.period_end - now
        end = now + (left * (old / new) if new > 0 and old > 0 else left)
        await self._switch_plan(tenant_id, plan, actor)
        await self._save(
            tenant_id,
            actor=actor,
            action="billing.plan_prorated",
            detail={"from": current.plan, "to": plan},
            plan=plan,
            period_end=end,
            pending_plan=None,
        )
        await self._tell(tenant_id, "plan_prorated", plan=plan, end=day(end))
        return "prorated"

    # ----- time passing --------------------------------------------------------------------

    async def tick(self, *, batch: int = 500) -> int:
        """Move due subscriptions on by the clock; returns how many transitions it made.

        Reads only rows whose ``due_at`` has come (an indexed range, ``batch`` at a time), so a
        round costs what is due, not the number of subscriptions.
        """
        now = self._clock.now()
        moved = 0
        seen: set[str] = set()
        while True:
            async with self._db.session() as s:
                rows = (
                    await s.scalars(
                        select(SubscriptionRow)
                        .where(SubscriptionRow.due_at <= now)
                        .order_by(SubscriptionRow.due_at)
                        .limit(batch)
                    )
                ).all()
                fresh = [r for r in rows if r.tenant_id not in seen]
                subs = [_view(r) for r in fresh]
                reminded = {r.tenant_id: _aware(r.reminded_for) for r in fresh}
            for sub in subs:
                seen.add(sub.tenant_id)
                try:
                    made = await self._advance(sub, now, reminded.get(sub.tenant_id))
                except TenantError:
                    made = 0  # deleted meanwhile
                if not made:
                    await self._reschedule(sub.tenant_id, now)
                moved += made
            if len(rows) < batch or not fresh:
                return moved

    async def _reschedule(self, tenant_id: str, now: datetime) -> None:
        """A due row with nothing to do (a migrated row, a deleted tenant): set its next time."""
        async with self._db.session() as s, s.begin():
            row = await s.get(SubscriptionRow, tenant_id, with_for_update=True)
            if row is None:
                return
            due = _due_at(row, self._settings.reminder_days)
            row.due_at = due if due is not None and due > now else None

    async def _advance(self, sub: Subscription, now: datetime, reminded: datetime | None) -> int:
        end, settings = sub.period_end, self._settings
        if sub.state is SubState.PAST_DUE:
            if sub.grace_until is not None and sub.grace_until <= now:
                await self._save(
                    sub.tenant_id,
                    actor="billing",
                    action="billing.suspended",
                    state=SubState.SUSPENDED.value,
                )
                await self._stop(sub.tenant_id, "billing")
                await self._tell(sub.tenant_id, "suspended", plan=sub.plan)
                return 1
            return 0
        if end is None:
            return 0
        if end <= now:
            if sub.state is SubState.ACTIVE and not sub.auto_renew:
                await self.cancel(sub.tenant_id, actor="billing")
                return 1
            grace = end + timedelta(days=settings.grace_days)
            await self._save(
                sub.tenant_id,
                actor="billing",
                action="billing.past_due",
                state=SubState.PAST_DUE.value,
                grace_until=grace,
            )
            kind = "trial_ended" if sub.state is SubState.TRIAL else "past_due"
            await self._tell(sub.tenant_id, kind, plan=sub.plan, grace=day(grace))
            if grace <= now:
                return 1 + await self._advance(await self._must_get(sub.tenant_id), now, reminded)
            return 1
        due = end - timedelta(days=settings.reminder_days)
        if now >= due and reminded != end and (sub.auto_renew or sub.state is SubState.TRIAL):
            async with self._db.session() as s, s.begin():
                # Reminded: next due at the period's end.
                await s.execute(
                    update(SubscriptionRow)
                    .where(SubscriptionRow.tenant_id == sub.tenant_id)
                    .values(reminded_for=end, due_at=end)
                )
                audit.record(
                    s,
                    at=now,
                    actor="billing",
                    action="billing.reminded",
                    tenant_id=sub.tenant_id,
                    renews=end.isoformat(),
                )
            self._subs.invalidate(sub.tenant_id)
            kind = "trial_ending" if sub.state is SubState.TRIAL else "renewal_reminder"
            await self._tell(sub.tenant_id, kind, plan=sub.plan, end=day(end))
            return 1
        return 0

    async def _must_get(self, tenant_id: str) -> Subscription:
        sub = await self.get(tenant_id)
        assert sub is not None  # noqa: S101 - just written
        return sub

    # ----- operators -----------------------------------------------------------------------

    async def revenue(self) -> Revenue:
        now = self._clock.now()
        async with self._db.session() as s:
            subs = [_view(r) for r in (await s.scalars(select(SubscriptionRow))).all()]
            paid = await _paid_since(s, now - timedelta(days=30))
        mrr_stars = 0
        mrr_usd = 0.0
        by_state: dict[str, int] = {}
        by_provider: dict[str, int] = {}
        for sub in subs:
            by_state[sub.state.value] = by_state.get(sub.state.value, 0) + 1
            if sub.state in (SubState.ACTIVE, SubState.PAST_DUE) and sub.auto_renew:
                by_provider[sub.provider] = by_provider.get(sub.provider, 0) + 1
                if sub.provider == "stars":
                    mrr_stars += self._settings.plan(sub.plan).stars or 0
                elif sub.provider == "stripe":
                    plan = self._config.plans.get(sub.plan)
                    mrr_usd += plan.price_usd if plan is not None else 0.0
        return Revenue(mrr_stars, mrr_usd, by_state, by_provider, paid)


async def _paid_since(s: AsyncSession, since: datetime) -> dict[str, int]:
    rows = await s.execute(
        select(PaymentRow.provider, func.sum(PaymentRow.amount))
        .where(PaymentRow.at >= since, PaymentRow.refunded.is_(False))
        .group_by(PaymentRow.provider)
    )
    return {p: int(a or 0) for p, a in rows.all()}


def _money(amount: int, currency: str) -> str:
    if currency.upper() == "XTR":
        return f"{amount} ⭐"
    return f"{amount / 100:.2f} {currency.upper()}"


class StarsInvoices(Protocol):
    """Telegram Stars, as the platform adapter offers them."""

    async def stars_invoice_link(
        self, *, title: str, description: str, payload: str, stars: int, period_seconds: int
    ) -> str:
        """A subscription invoice link (``createInvoiceLink``, currency XTR)."""
        ...

    async def refund_stars(self, user_id: str, charge_id: str) -> None:
        """``refundStarPayment``; raises the adapter's error when Telegram refuses."""
        ...


class CheckoutLinks(Protocol):
    """A card payment provider (Stripe): its hosted checkout and customer portal pages."""

    async def checkout_link(
        self, *, tenant_id: str, plan: str, price: str, customer_id: str | None
    ) -> str: ...

    async def portal_link(self, customer_id: str) -> str: ...

    async def cancel_subscription(self, external_id: str) -> None: ...

    async def change_price(
        self, external_id: str, *, tenant_id: str, plan: str, price: str, prorate: bool
    ) -> None:
        """Move the provider's subscription to ``price``, prorated now or from its renewal."""
        ...
