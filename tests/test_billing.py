"""The subscription lifecycle with an injected clock, on SQLite and PostgreSQL.

Trial ends, a payment fails, grace runs out, suspended, paid again, resumed; reminders;
plan changes at period end or prorated; charges and provider events taking effect once;
events arriving out of order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.billing import BILLING_REASON, Billing, SubState
from core.chat import Platform, UserRef
from core.config import Config, parse_config
from core.credentials import Credentials
from core.db import Database, upgrade
from core.plans import PlanCatalog
from core.ports import ManualClock
from core.tenants import Tenants, TenantStatus
from core.vault import MasterKeyRing, Vault

START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY = 86400.0


@dataclass
class Notices:
    said: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    async def notify(self, tenant_id: str, kind: str, params: Mapping[str, str]) -> None:
        self.said.append((tenant_id, kind, dict(params)))

    def kinds(self) -> list[str]:
        return [k for _, k, _ in self.said]


@dataclass
class Agents:
    """Only what billing asks of the agent port: stop (forget) and reconfigure."""

    forgotten: list[str] = field(default_factory=list)
    reconfigured: list[str] = field(default_factory=list)

    async def forget(self, tenant_id: str) -> None:
        self.forgotten.append(tenant_id)

    async def reconfigure(self, tenant_id: str) -> None:
        self.reconfigured.append(tenant_id)


@dataclass
class World:
    clock: ManualClock
    tenants: Tenants
    billing: Billing
    notices: Notices
    agents: Agents
    revoked: list[str]
    config: Config
    db: Database


def config(**billing: object) -> Config:
    return parse_config(
        {
            "billing": {
                "period_days": 30,
                "grace_days": 3,
                "reminder_days": 3,
                "stars": True,
                **billing,
                "plans": {
                    "managed": {"stars": 250, "trial_days": 7},
                    "byok": {"stars": 100},
                },
            },
            "proxy": {"enabled": True},
        },
        source="test.toml",
        base_dir=Path("."),
    )


async def make_world(url: str, cfg: Config) -> World:
    await upgrade(url)
    db = Database(url)
    clock = ManualClock(START)
    credentials = Credentials(db, Vault(MasterKeyRing({1: bytes(32)}, primary=1)), clock)
    tenants = Tenants(db, credentials, PlanCatalog(cfg.plans), clock, cache_seconds=0)
    revoked: list[str] = []

    async def revoke(tenant_id: str, actor: str) -> None:
        revoked.append(tenant_id)

    tenants.revoke_access = revoke
    notices, agents = Notices(), Agents()
    billing = Billing(db, tenants, cfg, clock, agents=agents, notices=notices)  # type: ignore[arg-type]
    return World(clock, tenants, billing, notices, agents, revoked, cfg, db)


@pytest.fixture
async def world(db_url: str) -> AsyncIterator[World]:
    w = await make_world(db_url, config())
    yield w
    await w.db.dispose()


async def sign_up(w: World, uid: str = "1", plan: str = "managed") -> str:
    user = UserRef(Platform.TELEGRAM, uid, "Ada")
    return (await w.tenants.sign_up(user, plan, dm_chat_id=uid)).id


async def test_trial_then_lapse_then_suspension_then_payment_resumes(world: World) -> None:
    w = world
    tid = await sign_up(w)
    tenant = await w.tenants.get(tid)
    assert not await w.billing.entitled(tenant)
    assert await w.billing.start_trial(tid, "managed", ["telegram:1"])
    assert await w.billing.entitled(await w.tenants.get(tid))
    assert not await w.billing.start_trial(tid, "managed", ["telegram:1"]), "one trial"

    w.clock.advance(4 * DAY)
    assert await w.billing.tick() == 1  # the trial's reminder, 3 days before its end
    assert await w.billing.tick() == 0  # once
    w.clock.advance(3 * DAY)
    await w.billing.tick()
    sub = await w.billing.get(tid)
    assert sub is not None and sub.state is SubState.PAST_DUE
    assert await w.billing.entitled(await w.tenants.get(tid)), "grace: still usable"
    w.clock.advance(3 * DAY)
    await w.billing.tick()
    sub = await w.billing.get(tid)
    assert sub is not None and sub.state is SubState.SUSPENDED
    tenant = await w.tenants.get(tid)
    assert tenant.status is TenantStatus.SUSPENDED and tenant.status_reason == BILLING_REASON
    assert w.agents.forgotten == [tid] and tid in w.revoked

    assert await w.billing.paid(
        tid, plan="managed", provider="stars", charge_id="ch1", amount=250, currency="XTR"
    )
    assert not await w.billing.paid(
        tid, plan="managed", provider="stars", charge_id="ch1", amount=250, currency="XTR"
    ), "a charge is recorded once"
    sub = await w.billing.get(tid)
    assert sub is not None and sub.state is SubState.ACTIVE
    assert sub.period_end == w.clock.now() + timedelta(days=30)
    assert (await w.tenants.get(tid)).status is TenantStatus.ACTIVE
    assert w.notices.kinds() == [
        "trial_started",
        "trial_ending",
        "trial_ended",
        "suspended",
        "receipt",
        "resumed",
    ]


async def test_renewal_reminder_then_failure_and_grace_not_extended(world: World) -> None:
    w = world
    tid = await sign_up(w)
    await w.billing.paid(
        tid, plan="managed", provider="stripe", charge_id="in_1", amount=3900, currency="usd"
    )
    w.clock.advance(27 * DAY + 1)
    await w.billing.tick()
    assert w.notices.kinds()[-1] == "renewal_reminder"
    await w.billing.payment_failed(tid)
    grace = (await w.billing.get(tid)).grace_until  # type: ignore[union-attr]
    w.clock.advance(DAY)
    await w.billing.payment_failed(tid)  # Stripe's retry fails too
    assert (await w.billing.get(tid)).grace_until == grace  # type: ignore[union-attr]
    assert w.notices.kinds().count("past_due") == 1
    w.clock.advance(2 * DAY)
    await w.billing.tick()
    assert (await w.billing.get(tid)).state is SubState.SUSPENDED  # type: ignore[union-attr]


async def test_an_operators_suspension_is_not_lifted_by_a_payment(world: World) -> None:
    w = world
    tid = await sign_up(w)
    await w.tenants.suspend(tid, actor="telegram:900", reason="abuse")
    await w.billing.paid(
        tid, plan="managed", provider="stars", charge_id="c", amount=250, currency="XTR"
    )
    assert (await w.tenants.get(tid)).status is TenantStatus.SUSPENDED


async def test_out_of_order_events_do_not_undo_newer_ones(world: World) -> None:
    w = world
    tid = await sign_up(w)
    now = w.clock.now()
    await w.billing.paid(
        tid,
        plan="managed",
        provider="stripe",
        charge_id="in_2",
        amount=3900,
        currency="usd",
        event_at=now,
    )
    await w.billing.payment_failed(tid, event_at=now - timedelta(minutes=5))
    assert (await w.billing.get(tid)).state is SubState.ACTIVE  # type: ignore[union-attr]
    assert await w.billing.first_time("stripe:evt_1")
    assert not await w.billing.first_time("stripe:evt_1")
    await w.billing.forget_event("stripe:evt_1")
    assert await w.billing.first_time("stripe:evt_1"), "released after a failure: retried"


async def test_grants_extend_and_expire_into_cancellation(world: World) -> None:
    w = world
    tid = await sign_up(w)
    await w.billing.grant(tid, "managed", 10, actor="op")
    await w.billing.grant(tid, "managed", 10, actor="op")
    sub = await w.billing.get(tid)
    assert sub is not None and sub.period_end == START + timedelta(days=20)
    w.clock.advance(21 * DAY)
    await w.billing.tick()
    sub = await w.billing.get(tid)
    assert sub is not None and sub.state is SubState.CANCELLED
    assert not await w.billing.entitled(await w.tenants.get(tid))
    assert w.agents.forgotten == [tid]


async def test_plan_change_at_period_end(world: World) -> None:
    w = world
    tid = await sign_up(w)
    await w.billing.paid(
        tid, plan="managed", provider="stars", charge_id="a", amount=250, currency="XTR"
    )
    assert await w.billing.change_plan(tid, "byok", actor="telegram:1") == "pending"
    assert (await w.tenants.get(tid)).plan == "managed"
    w.clock.advance(30 * DAY)
    await w.billing.paid(
        tid, plan="managed", provider="stars", charge_id="b", amount=250, currency="XTR"
    )
    assert (await w.tenants.get(tid)).plan == "byok"
    assert (await w.billing.get(tid)).plan == "byok"  # type: ignore[union-attr]


async def test_plan_change_prorated(db_url: str) -> None:
    w = await make_world(db_url, config(plan_change="prorate"))
    try:
        await _prorated(w)
    finally:
        await w.db.dispose()


async def _prorated(w: World) -> None:
    tid = await sign_up(w)
    await w.billing.paid(
        tid, plan="managed", provider="stars", charge_id="a", amount=250, currency="XTR"
    )
    w.clock.advance(15 * DAY)
    assert await w.billing.change_plan(tid, "byok", actor="telegram:1") == "prorated"
    sub = await w.billing.get(tid)
    assert sub is not None and sub.plan == "byok"
    # Half a $39 month is worth 39/15 of a half $15 month: 15 days x 2.6 = 39 days.
    assert sub.period_end == w.clock.now() + timedelta(days=39)
    assert (await w.tenants.get(tid)).plan == "byok"


async def test_revenue_counts_providers_separately(world: World) -> None:
    w = world
    a, b, c = await sign_up(w, "1"), await sign_up(w, "2"), await sign_up(w, "3")
    await w.billing.paid(
        a, plan="managed", provider="stars", charge_id="s", amount=250, currency="XTR"
    )
    await w.billing.paid(
        b, plan="managed", provider="stripe", charge_id="i", amount=3900, currency="usd"
    )
    await w.billing.start_trial(c, "managed", ["telegram:3"])
    r = await w.billing.revenue()
    assert (r.mrr_stars, r.mrr_usd) == (250, 39.0)
    assert r.by_state == {"active": 2, "trial": 1}
    assert r.paid_30d == {"stars": 250, "stripe": 3900}


def test_a_byok_plan_is_free_unless_a_provider_prices_it() -> None:
    free = parse_config({}, source="t", base_dir=Path("."))
    assert free.billing.providers == ()
    assert free.billing.payable("byok") == ()
    priced = config()
    assert priced.billing.payable("byok") == ("stars",)


async def test_tick_reads_only_the_subscriptions_that_are_due(world: World) -> None:
    """The billing job's cost is what is due, not how many subscriptions there are."""
    from sqlalchemy import event

    from core.db.models import SubscriptionRow

    w = world
    tids = [await sign_up(w, str(100 + i)) for i in range(40)]
    for i, tid in enumerate(tids):
        # Periods ending 10..49 days from now; grants do not renew, so nothing is reminded.
        await w.billing.grant(tid, "managed", 10 + i, actor="op")
    loaded: list[str] = []

    def on_load(target: SubscriptionRow, _context: object) -> None:
        loaded.append(target.tenant_id)

    event.listen(SubscriptionRow, "load", on_load)
    try:
        w.clock.advance(1 * DAY)
        assert await w.billing.tick() == 0
        assert loaded == [], f"{len(loaded)} subscriptions read while none was due"
        w.clock.advance(11.5 * DAY)  # the first three periods have ended
        assert await w.billing.tick() == 3
        assert set(loaded) == set(tids[:3])
        loaded.clear()
        assert await w.billing.tick() == 0
        assert loaded == []
    finally:
        event.remove(SubscriptionRow, "load", on_load)
    cancelled = [(await w.billing.get(t)) for t in tids[:4]]
    assert [s.state if s else None for s in cancelled] == [SubState.CANCELLED] * 3 + [
        SubState.ACTIVE
    ]


async def test_a_trial_cap_replaces_a_larger_monthly_cap_at_reservation(db_url: str) -> None:
    from core.budget import Budget, CapReached, Cost, RecordingAlertSink

    cfg = parse_config(
        {
            "plans": {
                "managed": {"byok": False, "models": ["m"], "monthly_token_cap": 10_000},
            },
            "proxy": {
                "enabled": True,
                "models": {
                    "m": {
                        "upstream": "anthropic",
                        "input_usd_per_mtok": 1,
                        "output_usd_per_mtok": 1,
                    }
                },
            },
        },
        source="test.toml",
        base_dir=Path("."),
    )
    w = await make_world(db_url, cfg)
    try:
        tid = await sign_up(w)
        sink = RecordingAlertSink()
        budget = Budget(w.db, cfg.plans, w.clock, sink=sink)
        r = await budget.reserve(tid, "managed", Cost(100, 100), token_cap=250)
        await budget.settle(r, Cost(100, 100), plan_id="managed")
        await budget.reserve(tid, "managed", Cost(100, 100), token_cap=250)
        with pytest.raises(CapReached):
            await budget.reserve(tid, "managed", Cost(100, 100), token_cap=250)
        # The trial's refusal is not the month's allowance used up: no 100% alert, and the
        # month's alert stays unclaimed for after the trial is paid for.
        assert sink.alerts == []
        # Without the trial's cap the plan's own applies; a larger "cap" never raises it.
        await budget.reserve(tid, "managed", Cost(100, 100))
        assert not budget.likely_admits(tid, "managed", Cost(100, 100), token_cap=250)
        with pytest.raises(CapReached):
            await budget.reserve(tid, "managed", Cost(9_800, 9_800), token_cap=1_000_000)
        assert [pct for _, pct, _, _ in sink.alerts] == [100]
        assert sink.alerts[0][3].tokens == 10_000
    finally:
        await w.db.dispose()
