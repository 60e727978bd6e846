"""Plan changes of a Stripe subscription through ``byokbot run``, made at Stripe with the SDK.

With ``plan_change = "prorate"`` the subscription's item moves to the new price at once with
``proration_behavior = "create_prorations"`` (Stripe puts the difference on the next invoice)
and the person is on the new plan now; with ``"period_end"`` it moves with ``"none"`` (this
period stays as paid) and the plan changes when the next invoice is paid. Also: a paid
subscription's renewal reminder and its receipt are chat messages from the billing job.
"""

from __future__ import annotations

from typing import Any

from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.stripe_server import FakeStripe
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.billing_support import (
    STARS,
    enable_stripe,
    payments,
    stars_tables,
    stripe_fixture,  # noqa: F401 - fixture
    subscription,
    wait_link,
    webhook_ready,
)
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.managed_support import enable_proxy, query, start_bot
from tests.system.people import TelegramPerson

PRICES = {"price_byok_monthly": 1500, "price_managed_monthly": 3900}


def price_both(ws: Workspace, fake: FakeStripe, plan_change: str) -> None:
    enable_stripe(ws, fake, plan_change=plan_change)
    ws.configure({"billing.plans.byok": {"stripe_price": "price_byok_monthly"}})
    fake.prices.update(PRICES)


def updates(fake: FakeStripe, sub_id: str) -> list[dict[str, str]]:
    return [r.form for r in fake.requests if r.path == f"/v1/subscriptions/{sub_id}" and r.form]


async def subscribe_byok(
    ada: TelegramPerson, telegram: FakeTelegramServer, fake: FakeStripe
) -> str:
    ada.send("/start")
    await ada.wait_text("Pick a plan")
    ada.press("BYOK")
    link = await wait_link(telegram, ada.user_id, "Pay by card")
    assert fake.session_of(link)["price"] == "price_byok_monthly"
    assert await fake.complete(link, amount=PRICES["price_byok_monthly"]) == [200, 200, 200]
    await ada.wait_text("Payment received: 15.00 USD")
    return str(fake.session_of(link)["subscription"])


def plans(ws: Workspace) -> tuple[Any, ...]:
    """(tenant's plan, subscription's plan, pending plan)."""
    (row,) = query(
        ws,
        "SELECT t.plan, s.plan, s.pending_plan FROM tenants AS t "
        "JOIN subscriptions AS s ON s.tenant_id = t.id",
    )
    return tuple(row)


async def test_a_prorated_upgrade_is_made_at_stripe_and_the_next_invoice_carries_it(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    stripe_fake: FakeStripe,
    canaries: CanaryScan,
) -> None:
    enable_proxy(tg_ws, llm, canaries, managed_trial=False)
    price_both(tg_ws, stripe_fake, "prorate")
    bot = await start_bot(tg_ws, telegram)
    await webhook_ready(bot, stripe_fake)
    sub_id = await subscribe_byok(ada, telegram, stripe_fake)
    assert subscription(tg_ws) == ("active", "byok", "stripe")

    ada.send("/plan managed")
    await ada.wait_text("Stripe settles the difference")
    (change,) = updates(stripe_fake, sub_id)
    assert change["items[0][id]"] == f"si_{sub_id}"
    assert change["items[0][price]"] == "price_managed_monthly"
    assert change["proration_behavior"] == "create_prorations"
    assert change["metadata[plan]"] == "managed"
    # Made with the operator's secret key, by the SDK (retrieve, then update).
    made = [r for r in stripe_fake.requests if r.path == f"/v1/subscriptions/{sub_id}"]
    assert [bool(r.form) for r in made] == [False, True]
    assert {r.key for r in made} == {stripe_fake.api_key}
    assert plans(tg_ws) == ("managed", "managed", None)
    # On the managed plan now: the agent answers through the metering proxy.
    ada.send("hello managed")
    await ada.wait_text("^echo: hello managed", within=30)
    assert llm.requests

    # The renewal charges the new price plus the rest of this period's difference, once.
    (proration,) = stripe_fake.subscriptions[sub_id]["prorations"]
    assert 2300 < proration <= 2400
    assert await stripe_fake.renew(sub_id) == [200, 200]
    await eventually(lambda: len(payments(tg_ws)) == 2)
    assert payments(tg_ws)[-1][2] == 3900 + proration
    assert plans(tg_ws) == ("managed", "managed", None)
    assert "billing.plan_prorated" in [r[0] for r in query(tg_ws, "SELECT action FROM audit_log")]


async def test_a_change_at_period_end_is_billed_from_the_renewal(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    stripe_fake: FakeStripe,
    canaries: CanaryScan,
) -> None:
    enable_proxy(tg_ws, llm, canaries, managed_trial=False)
    price_both(tg_ws, stripe_fake, "period_end")
    bot = await start_bot(tg_ws, telegram)
    await webhook_ready(bot, stripe_fake)
    sub_id = await subscribe_byok(ada, telegram, stripe_fake)

    ada.send("/plan managed")
    await ada.wait_text("You'll move to the Managed plan when the current period ends")
    (change,) = updates(stripe_fake, sub_id)
    assert change["items[0][price]"] == "price_managed_monthly"
    assert change["proration_behavior"] == "none"
    assert not stripe_fake.subscriptions[sub_id]["prorations"]
    assert plans(tg_ws) == ("byok", "byok", "managed")

    assert await stripe_fake.renew(sub_id) == [200, 200]
    await eventually(lambda: len(payments(tg_ws)) == 2)
    assert payments(tg_ws)[-1][2] == 3900
    await eventually(lambda: plans(tg_ws) == ("managed", "managed", None))
    await ada.wait_text("Payment received: 39.00 USD for the Managed plan")


async def test_a_stripe_that_refuses_the_change_leaves_the_plan_and_says_so(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    stripe_fake: FakeStripe,
    canaries: CanaryScan,
) -> None:
    enable_proxy(tg_ws, llm, canaries, managed_trial=False)
    price_both(tg_ws, stripe_fake, "prorate")
    bot = await start_bot(tg_ws, telegram)
    await webhook_ready(bot, stripe_fake)
    sub_id = await subscribe_byok(ada, telegram, stripe_fake)
    del stripe_fake.subscriptions[sub_id]  # Stripe no longer knows it: 404
    ada.send("/plan managed")
    await ada.wait_text("couldn't change your subscription at Stripe")
    assert plans(tg_ws) == ("byok", "byok", None)


async def test_a_paid_subscription_is_reminded_before_renewal_and_gets_a_receipt(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    enable_proxy(tg_ws, llm, canaries, managed_trial=False)
    # Telegram sets a Stars subscription's period (30 days, its expiration date), so the
    # reminder is made due about eight seconds after the payment: 30 days less 8 s before
    # the renewal. The job runs in ``byokbot run`` on its own schedule, with no message.
    tg_ws.configure(stars_tables(reminder_days=30 - 8 / 86400))
    await start_bot(tg_ws, telegram)
    ada.send("/start")
    await ada.wait_text("Pick a plan")
    ada.press("Managed")
    link = await wait_link(telegram, ada.user_id, f"Pay {STARS}")
    charge = await telegram.pay_stars(ada.user, link)
    await ada.wait_text(f"Payment received: {STARS} ⭐ for the Managed plan \\(charge {charge}\\)")
    reminder = await ada.wait_text("Your Managed subscription renews on", within=20)
    assert "UTC" in reminder
    assert sum("renews on" in t for t in ada.texts()) == 1
    renewal = telegram.stars_charge(ada.user, link)
    await ada.wait_text(f"Payment received: {STARS} ⭐ .*charge {renewal}")
    assert subscription(tg_ws) == ("active", "managed", "stars")
    assert "billing.reminded" in [r[0] for r in query(tg_ws, "SELECT action FROM audit_log")]
