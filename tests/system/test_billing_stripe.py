"""Stripe through ``byokbot run``: a Checkout link in chat, the signed webhook, dunning.

The official SDK talks to the fake Stripe API (``[billing.stripe] api_base``); the fake plays
Stripe's side and sends webhooks signed as Stripe signs them.
"""

from __future__ import annotations

import time

from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.stripe_server import FakeStripe
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.billing_support import (
    agent_pids,
    audit_actions,
    enable_stripe,
    live_proxy_tokens,
    operator,
    payments,
    stripe_fixture,  # noqa: F401 - fixture
    subscription,
    tenant_status,
    wait_link,
    webhook_ready,
)
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.managed_support import enable_proxy, start_bot
from tests.system.people import TelegramPerson
from tests.system.slack_fixtures import SlackSide, slack_fixture  # noqa: F401 - fixture


async def test_a_person_on_slack_pays_through_a_stripe_link(
    ws: Workspace,
    slack: SlackSide,
    llm: FakeLLMServer,
    stripe_fake: FakeStripe,
    canaries: CanaryScan,
) -> None:
    enable_proxy(ws, llm, canaries, managed_trial=False)
    enable_stripe(ws, stripe_fake)
    slack.configure(ws, "socket")
    bot = await slack.start(ws)
    await webhook_ready(bot, stripe_fake)
    ada = slack.person()

    await ada.command("start")
    await ada.wait_text("Pick a plan")
    await ada.press("Managed")
    await ada.wait_text("Pay below")
    (link,) = [e["url"] for _, e in ada.buttons() if "Pay by card" in e["text"]["text"]]
    (created,) = [r for r in stripe_fake.requests if r.path == "/v1/checkout/sessions"]
    assert created.key == stripe_fake.api_key
    assert created.form["mode"] == "subscription"
    assert created.form["line_items[0][price]"] == "price_managed_monthly"
    tenant = created.form["client_reference_id"]
    assert created.form["metadata[tenant_id]"] == tenant
    assert created.form["subscription_data[metadata][plan]"] == "managed"

    await ada.dm_app("hello before paying")
    await ada.wait_text("isn't paid for")
    assert not llm.requests

    assert await stripe_fake.complete(link) == [200, 200, 200]
    await ada.wait_text("Payment received: 39.00 USD")
    await eventually(lambda: subscription(ws) == ("active", "managed", "stripe"))
    # The session's first invoice came twice (checkout.session.completed, invoice.paid): once.
    assert len(payments(ws)) == 1

    await ada.dm_app("hello agent")
    await ada.wait_text("echo: hello agent", within=30)

    await ada.command("plan")
    await ada.wait_text("Subscription: active until")
    portal = [e["url"] for _, e in ada.buttons() if "Manage card" in e["text"]["text"]]
    assert portal and portal[0].startswith(stripe_fake.api_base + "/portal/")
    (asked,) = [r for r in stripe_fake.requests if r.path == "/v1/billing_portal/sessions"]
    assert asked.form["customer"] == stripe_fake.session_of(link)["customer"]

    # Erasing the account cancels the Stripe subscription: nothing is charged again.
    await ada.command("delete")
    await ada.wait_text("(?i)erase")
    await ada.press("Yes, erase")
    await ada.wait_text("(?i)erased")
    sub_id = stripe_fake.session_of(link)["subscription"]
    cancelled = [r for r in stripe_fake.requests if r.path == f"/v1/subscriptions/{sub_id}"]
    assert [r.key for r in cancelled] == [stripe_fake.api_key]
    assert subscription(ws) == ("cancelled", "managed", "stripe")


async def test_bad_or_replayed_signatures_are_refused_and_events_apply_once(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    stripe_fake: FakeStripe,
    canaries: CanaryScan,
) -> None:
    enable_proxy(tg_ws, llm, canaries, managed_trial=False)
    enable_stripe(tg_ws, stripe_fake)
    bot = await start_bot(tg_ws, telegram)
    await webhook_ready(bot, stripe_fake)
    ada.send("/start")
    await ada.wait_text("Pick a plan")
    ada.press("Managed")
    link = await wait_link(telegram, ada.user_id, "Pay by card")
    assert await stripe_fake.complete(link) == [200, 200, 200]
    await eventually(lambda: subscription(tg_ws) == ("active", "managed", "stripe"))
    sub_id = next(iter(stripe_fake.subscriptions))
    op = operator(telegram)
    op.send("/admin revenue")
    revenue = await op.wait_text("^Revenue")
    assert "MRR: 0 ⭐ (Telegram Stars) · $39.00 (Stripe)" in revenue
    assert "stripe $39.00" in revenue
    before = audit_actions(tg_ws)

    cancel = stripe_fake.event(
        "customer.subscription.deleted",
        {"id": sub_id, "object": "subscription", "status": "canceled", "metadata": {}},
    )
    assert await stripe_fake.deliver(cancel, secret="whsec_not_the_endpoints") == 400
    assert await stripe_fake.deliver(cancel, tamper=True) == 400
    assert await stripe_fake.deliver(cancel, timestamp=int(time.time()) - 3600) == 400  # replay
    unsigned = await stripe_fake.post_raw(cancel, b'{"id": "evt_x"}', "")
    assert unsigned == 400
    assert subscription(tg_ws) == ("active", "managed", "stripe")
    assert audit_actions(tg_ws) == before

    # A renewal delivered twice, and again after a restart, is one payment and one receipt.
    renewal = stripe_fake._invoice(stripe_fake.subscriptions[sub_id], paid=True)
    event = stripe_fake.event("invoice.paid", renewal)
    assert await stripe_fake.deliver(event) == 200
    assert await stripe_fake.deliver(event) == 200
    await bot.kill()
    bot = await start_bot(tg_ws, telegram)
    await webhook_ready(bot, stripe_fake)
    assert await stripe_fake.deliver(event) == 200
    assert len(payments(tg_ws)) == 2
    await eventually(lambda: sum("Payment received" in t for t in ada.texts()) == 2)

    # Out of order: a "past due" update older than the renewal changes nothing.
    stale = stripe_fake.event(
        "customer.subscription.updated",
        stripe_fake._subscription_object(stripe_fake.subscriptions[sub_id], status="past_due"),
        created=int(time.time()) - 120,
    )
    assert await stripe_fake.deliver(stale) == 200
    assert subscription(tg_ws) == ("active", "managed", "stripe")
    assert not any("didn't go through" in t for t in ada.texts())


async def test_a_failed_renewal_suspends_after_the_grace_period_and_a_payment_resumes(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    stripe_fake: FakeStripe,
    canaries: CanaryScan,
) -> None:
    enable_proxy(tg_ws, llm, canaries, managed_trial=False)
    enable_stripe(tg_ws, stripe_fake, grace_days=3 / 86400)  # three seconds of grace
    bot = await start_bot(tg_ws, telegram)
    await webhook_ready(bot, stripe_fake)
    ada.send("/start")
    await ada.wait_text("Pick a plan")
    ada.press("Managed")
    link = await wait_link(telegram, ada.user_id, "Pay by card")
    await stripe_fake.complete(link)
    ada.send("hello agent")
    await ada.wait_text("^echo: hello agent", within=30)
    assert agent_pids(bot), "the tenant's agent process runs"
    assert live_proxy_tokens(tg_ws) >= 1
    sub_id = next(iter(stripe_fake.subscriptions))

    assert await stripe_fake.fail_renewal(sub_id) == [200, 200]
    await ada.wait_text("payment didn't go through")
    assert subscription(tg_ws) == ("past_due", "managed", "stripe")
    ada.send("still answering in the grace period?")
    await ada.wait_text("^echo: still answering", within=30)

    await ada.wait_text("suspended because the Managed subscription is unpaid", within=20)
    assert subscription(tg_ws) == ("suspended", "managed", "stripe")
    assert tenant_status(tg_ws) == "suspended"
    await eventually(lambda: not agent_pids(bot), message="the agent process still runs")
    assert live_proxy_tokens(tg_ws) == 0, "the suspended tenant's proxy token is revoked"
    requests = len(llm.requests)
    ada.send("are you there?")
    await ada.wait_text("suspended")
    assert len(llm.requests) == requests

    assert await stripe_fake.renew(sub_id) == [200, 200]
    await ada.wait_text("active again on the Managed plan")
    assert subscription(tg_ws) == ("active", "managed", "stripe")
    assert tenant_status(tg_ws) == "active"
    ada.send("welcome back")
    await ada.wait_text("^echo: welcome back", within=30)
    assert agent_pids(bot), "a new agent process serves the resumed tenant"
    actions = audit_actions(tg_ws)
    for action in ("billing.paid", "billing.past_due", "billing.suspended", "tenant.resumed"):
        assert action in actions
