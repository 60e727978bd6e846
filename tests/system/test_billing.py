"""Paying in chat through ``byokbot run``: Telegram Stars, and who may use the managed plan."""

from __future__ import annotations

import re

from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer, callback
from tests.system.billing_support import (
    STARS,
    agent_pids,
    audit_actions,
    link_buttons,
    live_proxy_tokens,
    operator,
    stars_tables,
    subscription,
    wait_link,
)
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.managed_support import enable_proxy, query, start_bot
from tests.system.people import TelegramPerson


async def test_a_person_pays_with_stars_and_their_agent_answers(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    enable_proxy(tg_ws, llm, canaries, managed_trial=False)
    tg_ws.configure(stars_tables())
    await start_bot(tg_ws, telegram)

    ada.send("/start")
    await ada.wait_text("Pick a plan")
    assert any("$39" in t for t in ada.texts()), "a priced plan shows its price"
    ada.press("Managed")
    link = await wait_link(telegram, ada.user_id, f"Pay {STARS}")
    (invoice,) = telegram.calls_to("createInvoiceLink")
    assert invoice["currency"] == "XTR"
    assert int(invoice["subscription_period"]) == 2592000
    assert [int(p["amount"]) for p in invoice["prices"]] == [STARS]
    assert "provider_token" not in invoice or not invoice["provider_token"]

    # Not paid yet: the agent does not answer and no model request is made.
    ada.send("hello before paying")
    await ada.wait_text("isn't paid for")
    assert not llm.requests

    charge = await telegram.pay_stars(ada.user, link)
    assert charge is not None
    (answer,) = telegram.calls_to("answerPreCheckoutQuery")
    assert str(answer["ok"]).lower() == "true"
    await ada.wait_text(f"Payment received: {STARS} ⭐.*{charge}")
    assert subscription(tg_ws) == ("active", "managed", "stars")

    ada.send("hello agent")
    await ada.wait_text("^echo: hello agent", within=30)
    assert llm.requests

    # The same charge delivered again is recorded once; a renewal is a new charge.
    receipts = sum("Payment received" in t for t in ada.texts())
    renewal = telegram.stars_charge(ada.user, link)
    await eventually(lambda: sum("Payment received" in t for t in ada.texts()) == receipts + 1)
    assert renewal in ada.texts()[-1] or any(renewal in t for t in ada.texts())

    op = operator(telegram)
    op.send("/admin revenue")
    revenue = await op.wait_text("^Revenue")
    assert f"MRR: {STARS} ⭐ (Telegram Stars) · $0.00 (Stripe)" in revenue
    assert f"Paid in the last 30 days: {2 * STARS} ⭐" in revenue
    assert "active 1" in revenue

    # An operator refunds the renewal: refundStarPayment with the payer and charge, and the
    # subscription ends.
    op.send(f"/admin refund {renewal}")
    await op.wait_text(f"Refunded {renewal}")
    (refund,) = telegram.refunds
    assert refund["telegram_payment_charge_id"] == renewal
    assert int(refund["user_id"]) == ada.user_id
    await ada.wait_text("was refunded")
    await eventually(lambda: subscription(tg_ws) == ("cancelled", "managed", "stars"))
    assert {"billing.paid", "billing.refunded", "billing.cancelled"} <= set(audit_actions(tg_ws))
    ada.send("still there?")
    await ada.wait_text("isn't paid for")


async def test_a_checkout_for_another_tenant_or_price_is_refused(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    enable_proxy(tg_ws, llm, canaries, managed_trial=False)
    tg_ws.configure(stars_tables())
    await start_bot(tg_ws, telegram)
    ada.send("/start")
    await ada.wait_text("Pick a plan")
    ada.press("Managed")
    link = await wait_link(telegram, ada.user_id, "Pay")

    # Someone else opening Ada's invoice, and Ada paying a different amount, are refused.
    eve = TelegramPerson(telegram, 5151, "Eve", "eve")
    assert await telegram.pay_stars(eve.user, link) is None
    assert await telegram.pay_stars(ada.user, link, amount=1) is None
    refusals = [a for a in telegram.calls_to("answerPreCheckoutQuery")]
    assert [str(a["ok"]).lower() for a in refusals] == ["false", "false"]
    assert all(a.get("error_message") for a in refusals)
    assert subscription(tg_ws) is None
    assert not link_buttons(telegram, eve.user_id)


async def test_a_stranger_cannot_use_managed_without_paying_a_trial_or_a_grant(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    # No payment provider at all: nothing is priced, and managed is only an operator's gift.
    enable_proxy(tg_ws, llm, canaries, managed_trial=False)
    await start_bot(tg_ws, telegram)
    ada.send("/start")
    await ada.wait_text("Pick a plan")
    assert not any("$" in t for t in ada.texts()), "no provider: no price is promised"
    ada.press("Managed")
    await ada.wait_text("given out by the operators")
    ada.send("hello")
    await ada.wait_text("isn't paid for")
    assert not llm.requests
    assert not link_buttons(telegram, ada.user_id)

    op = operator(telegram)
    op.send(f"/admin comp telegram:{ada.user_id} managed 30")
    await op.wait_text("has the managed plan until")
    await ada.wait_text("An operator gave you the Managed plan")
    ada.send("hello agent")
    await ada.wait_text("^echo: hello agent", within=30)
    op.send(f"/admin tenant telegram:{ada.user_id}")
    await op.wait_text("Subscription: active until .* · grant")


async def test_invite_mode_admits_only_with_an_operators_code(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    enable_proxy(tg_ws, llm, canaries, managed_trial=False)
    tg_ws.configure({"access": {"mode": "invite"}})
    await start_bot(tg_ws, telegram)
    ada.send("/start")
    await ada.wait_text("invite-only")
    ada.send("/start NOTACODE99")
    await ada.wait_text("isn't valid")
    assert subscription(tg_ws) is None

    op = operator(telegram)
    op.send("/admin invite managed 1")
    invite = await op.wait_text("Invite code: ")
    code = re.search(r"Invite code: (\w+)", invite)
    assert code is not None
    ada.send(f"/start {code.group(1)}")
    await ada.wait_text("Invite accepted")
    await ada.wait_text("(?i)just write to me")
    ada.send("hello agent")
    await ada.wait_text("^echo: hello agent", within=30)
    assert subscription(tg_ws) == ("active", "managed", "grant")

    bob = TelegramPerson(telegram, 5252, "Bob", "bob")
    bob.send(f"/start {code.group(1)}")
    await bob.wait_text("used up")
    assert len(query(tg_ws, "SELECT id FROM tenants")) == 1


async def test_approval_mode_asks_the_operators_in_chat(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    enable_proxy(tg_ws, llm, canaries, managed_trial=False)
    tg_ws.configure({"access": {"mode": "approval"}})
    await start_bot(tg_ws, telegram)
    op = operator(telegram)

    ada.send("/start")
    await ada.wait_text("Pick a plan")
    ada.press("Managed")
    await ada.wait_text("sent your request")
    await op.wait_text(f"Sign-up request from Ada \\(telegram:{ada.user_id}\\) for the Managed")
    ada.send("/plan managed")
    await ada.wait_text("waiting for an operator")
    assert not query(tg_ws, "SELECT id FROM tenants")

    # Ada cannot press the operator's button; the operator can.
    (mid, _, data), *_ = [b for b in op.buttons() if b[1] == "Approve"]
    ada.server.push_update(callback(op.user_id, ada.user, data, message_id=mid, query_id="qx"))
    await op.wait_text("belongs to someone else")
    assert not query(tg_ws, "SELECT id FROM tenants")
    op.press("Approve")
    await op.wait_text("approved")
    await ada.wait_text("An operator approved your sign-up")
    ada.send("hello agent")
    await ada.wait_text("^echo: hello agent", within=30)

    bob = TelegramPerson(telegram, 5353, "Bob", "bob")
    bob.send("/start")
    await bob.wait_text("Pick a plan")
    bob.press("Managed")
    await op.wait_text("Sign-up request from Bob")
    op.press("Deny")
    await bob.wait_text("declined")
    bob.send("/plan managed")
    await bob.wait_text("declined")
    assert len(query(tg_ws, "SELECT id FROM tenants")) == 1
    actions = audit_actions(tg_ws)
    assert {"access.requested", "access.approved", "access.denied"} <= set(actions)


async def test_a_trial_runs_out_then_suspends_and_is_had_once(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    enable_proxy(tg_ws, llm, canaries, managed_trial=False)
    tg_ws.configure(
        {
            # A ten-second trial (long enough for the sign-up's messages and a reply at
            # Telegram's pace of about one message a second per chat), reminded at once,
            # with two seconds of grace.
            "billing": {"check_interval_seconds": 0.2, "reminder_days": 1, "grace_days": 2 / 86400},
            "billing.plans.managed": {"trial_days": 10 / 86400},
        }
    )
    bot = await start_bot(tg_ws, telegram)
    ada.send("/start")
    await ada.wait_text("Pick a plan")
    ada.press("Managed")
    await ada.wait_text("free trial has started")
    await ada.wait_text("free trial ends on")  # the reminder job
    ada.send("hello agent")
    await ada.wait_text("^echo: hello agent", within=30)
    assert subscription(tg_ws) == ("trial", "managed", "trial")
    await ada.wait_text("free trial has ended", within=20)
    await ada.wait_text("is suspended because", within=20)
    await eventually(lambda: not agent_pids(bot), message="the agent process still runs")
    assert live_proxy_tokens(tg_ws) == 0
    ada.send("hello again")
    await ada.wait_text("suspended")

    # Erased and signed up again: no second trial.
    ada.send("/delete")
    await ada.wait_text("(?i)erase")
    ada.press("Yes, erase")
    await ada.wait_text("(?i)erased")
    ada.send("/start")
    await ada.wait_text("Pick a plan")
    ada.press("Managed")
    await ada.wait_text("given out by the operators")
    assert sum("free trial has started" in t for t in ada.texts()) == 1


async def test_a_managed_trial_has_a_smaller_allowance(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    enable_proxy(tg_ws, llm, canaries, managed_trial=False)
    tg_ws.configure({"billing.plans.managed": {"trial_days": 7, "trial_token_cap": 5}})
    await start_bot(tg_ws, telegram)
    ada.send("/start")
    await ada.wait_text("Pick a plan")
    ada.press("Managed")
    await ada.wait_text("free trial has started")
    # The cap is hard, held at the proxy's reservation: a reply that might pass five tokens
    # is refused before it reaches the model (it used to get through and overshoot).
    ada.send("hello agent")
    # Nothing can fit in five tokens, not even a fresh conversation: "used", not "nearly".
    await ada.wait_text("^You've used your free trial's allowance \\(5 tokens\\)", within=30)
    assert not llm.requests
    assert query(tg_ws, "SELECT tokens_spent FROM budgets")[0][0] == 0
