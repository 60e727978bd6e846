"""Paying in chat and who may sign up: payment offers, Stars checkouts, invites and approvals."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bot import texts
from bot.flows.base import Refusal, Services, Turn, button, tag_buttons
from core.access import Invite
from core.billing import Subscription, SubState, day
from core.chat import Button, ButtonStyle, ChatRef, Outcome, Platform, Reply, UserRef
from core.config import PlanSettings
from core.errors import TenantError
from core.tenants import TenantView

log = logging.getLogger("byokbot.flows.billing")


def priced(services: Services, plan: PlanSettings) -> bool:
    """Whether a price may be shown: only when a configured provider can charge for the plan."""
    if services.billing is None:
        return True
    return bool(services.config.billing.payable(plan.id))


# ----- admission ---------------------------------------------------------------------------


async def admit(turn: Turn, plan: PlanSettings) -> bool:
    """May this stranger sign up now? Answers them when not (invite-only, approval pending)."""
    s = turn.services
    mode = s.config.access.mode
    if s.access is None or mode == "open" or s.is_admin(turn.user):
        return True
    if mode == "invite":
        await turn.say(texts.ACCESS_INVITE_ONLY)
        return False
    existing = await s.access.get_request(turn.user.identity)
    if existing is not None and existing.status == "pending":
        await turn.say(texts.ACCESS_PENDING)
        return False
    if existing is not None and existing.status == "denied":
        await turn.say(texts.ACCESS_DENIED_BEFORE)
        return False
    dm = turn.chat.id if turn.chat.is_direct else None
    await s.access.request(turn.user, plan.id, dm_chat_id=dm)
    await _ask_operators(s, turn.user, plan)
    await turn.say(texts.ACCESS_REQUESTED)
    return False


async def _ask_operators(s: Services, user: UserRef, plan: PlanSettings) -> None:
    text = texts.ACCESS_REQUEST_TO_ADMIN.format(
        name=user.name or user.id, identity=user.identity, plan=plan.name
    )
    rows = [
        [
            button(texts.ACCESS_APPROVE, f"acc:yes:{user.identity}", style=ButtonStyle.PRIMARY),
            button(texts.ACCESS_DENY, f"acc:no:{user.identity}", style=ButtonStyle.DANGER),
        ]
    ]
    for admin in s.config.core.admins:
        platform_name, _, uid = admin.partition(":")
        operator = UserRef(Platform(platform_name), uid)
        messenger = s.messengers.get(operator.platform)
        if messenger is None:
            continue
        try:
            dm = await messenger.open_dm(operator)
            if dm is not None:
                await messenger.send(dm, Reply(text, buttons=tag_buttons(rows, operator)))
        except Exception as exc:  # one unreachable operator must not stop the others
            log.warning(
                "sign-up request not delivered to an operator on %s: %s", admin, exc, exc_info=True
            )


async def redeem_invite(turn: Turn, code: str) -> Outcome | None:
    """``/start CODE`` from a stranger in invite (or any) mode: sign up on the code's plan."""
    from bot.flows import account

    s = turn.services
    if s.access is None:
        raise Refusal(texts.ACCESS_BAD_CODE)
    invite = await s.access.redeem(code, actor=turn.actor)
    if invite is None:
        raise Refusal(texts.ACCESS_BAD_CODE)
    plan = _invite_plan(s, invite)
    dm = turn.chat.id if turn.chat.is_direct else None
    tenant = await s.tenants.sign_up(turn.user, plan.id, dm_chat_id=dm)
    turn.tenant = tenant
    await turn.say(texts.ACCESS_ADMITTED + " " + texts.SIGNED_UP.format(plan=plan.name))
    if invite.plan is not None and s.billing is not None and s.billing.needs_entitlement(plan.id):
        # An operator's invite to a plan is their grant of it.
        await s.billing.grant(tenant.id, plan.id, s.config.access.grant_days, actor=turn.actor)
    return await account.set_up(turn, tenant, plan)


def _invite_plan(s: Services, invite: Invite) -> PlanSettings:
    if invite.plan is not None and invite.plan in s.plans:
        return s.plans.get(invite.plan)
    return s.plans.default_byok() or next(iter(s.plans))


async def on_access_button(turn: Turn, args: list[str]) -> Outcome | None:
    """An operator pressed Approve or Deny on a sign-up request."""
    s = turn.services
    if not s.is_admin(turn.user) or s.access is None:
        raise Refusal(texts.NOT_ADMIN)
    if len(args) < 3 or args[0] not in ("yes", "no"):
        raise Refusal(texts.STALE_BUTTON)
    identity = ":".join(args[1:])
    decided = await s.access.decide(identity, approve=args[0] == "yes", actor=turn.actor)
    if decided is None:
        raise Refusal(texts.ACCESS_ALREADY_DECIDED)
    platform_name, _, uid = identity.partition(":")
    person = UserRef(Platform(platform_name), uid, decided.display_name)
    if args[0] == "yes":
        plan = (
            s.plans.get(decided.plan)
            if decided.plan in s.plans
            else _invite_plan(s, Invite("", None, 0))
        )
        tenant = await s.tenants.find(identity)
        if tenant is None:
            tenant = await s.tenants.sign_up(person, plan.id, dm_chat_id=decided.dm_chat_id)
        if (
            s.billing is not None
            and s.billing.needs_entitlement(plan.id)
            and not s.config.billing.payable(plan.id)
        ):
            # Nobody can pay for it here: approving is granting.
            await s.billing.grant(tenant.id, plan.id, s.config.access.grant_days, actor=turn.actor)
        told = texts.ACCESS_APPROVED.format(plan=plan.name)
    else:
        told = texts.ACCESS_DENIED
    await _tell_person(s, person, decided.dm_chat_id, told)
    await turn.say(
        texts.ACCESS_DECIDED.format(
            identity=identity, decision="approved" if args[0] == "yes" else "denied"
        ),
        sensitive=True,
    )
    return None


async def _tell_person(s: Services, person: UserRef, dm_chat_id: str | None, text: str) -> None:
    messenger = s.messengers.get(person.platform)
    if messenger is None:
        return
    chat = (
        ChatRef(person.platform, dm_chat_id, is_direct=True)
        if dm_chat_id
        else await messenger.open_dm(person)
    )
    if chat is not None:
        await messenger.send(chat, Reply(text))


# ----- paying ------------------------------------------------------------------------------


async def entitled_or_offer(turn: Turn, tenant: TenantView, plan: PlanSettings) -> bool:
    """True when the tenant may use ``plan``; else a trial starts or payment is offered."""
    s = turn.services
    billing = s.billing
    if billing is None or not billing.needs_entitlement(plan.id):
        return True
    if await billing.entitled(tenant):
        return True
    identities = await s.tenants.identities(tenant.id)
    if await billing.start_trial(tenant.id, plan.id, identities or [turn.user.identity]):
        return True
    await offer(turn, tenant, plan)
    return False


async def offer_in_trial(turn: Turn, tenant: TenantView, plan: PlanSettings) -> None:
    """Payment buttons while a trial of ``plan`` runs: it may be paid for at any time.

    The trial cap's words send the person to /plan, so /plan must offer the payment.
    """
    s = turn.services
    sub = await s.billing.get(tenant.id) if s.billing is not None else None
    if sub is None or sub.state is not SubState.TRIAL or sub.plan != plan.id:
        return
    if s.config.billing.payable(plan.id):
        await offer(turn, tenant, plan)


async def offer(turn: Turn, tenant: TenantView, plan: PlanSettings) -> None:
    """Payment buttons for ``plan``: Stars inside Telegram, a Stripe checkout anywhere."""
    s = turn.services
    assert s.billing is not None  # noqa: S101 - callers check
    settings = s.config.billing
    payable = settings.payable(plan.id)
    rows: list[list[Button]] = []
    try:
        stars = settings.plan(plan.id).stars
        if "stars" in payable and stars and s.stars and turn.user.platform is Platform.TELEGRAM:
            link = await s.stars.stars_invoice_link(
                title=f"byokbot {plan.name}",
                description=plan.description or plan.name,
                payload=f"{tenant.id}:{plan.id}",
                stars=stars,
                period_seconds=2592000,
            )
            rows.append([button(texts.BILLING_PAY_STARS.format(stars=stars), link)])
        if "stripe" in payable and s.checkout is not None:
            sub = await s.billing.get(tenant.id)
            link = await s.checkout.checkout_link(
                tenant_id=tenant.id,
                plan=plan.id,
                price=settings.plan(plan.id).stripe_price,
                customer_id=sub.customer_id if sub is not None else None,
            )
            rows.append([button(texts.BILLING_PAY_CARD, link)])
    except Exception as exc:  # the provider is down or refused: say so, keep the account
        log.warning("payment link for %s could not be made: %s", plan.id, exc, exc_info=True)
        await turn.say(texts.BILLING_CHECKOUT_FAILED)
        return
    if not rows:
        await turn.say(texts.BILLING_NO_PROVIDER.format(plan=plan.name))
        return
    await turn.say(texts.BILLING_PAY.format(plan=plan.name, price=plan.price_usd), buttons=rows)


async def portal_button(turn: Turn, sub: Subscription | None) -> list[list[Button]]:
    """A customer-portal button when the tenant pays through Stripe."""
    s = turn.services
    if s.checkout is None or sub is None or not sub.customer_id or sub.provider != "stripe":
        return []
    try:
        link = await s.checkout.portal_link(sub.customer_id)
    except Exception as exc:  # the plan list still shows; the portal is a convenience
        log.warning("customer portal link could not be made: %s", exc, exc_info=True)
        return []
    return [[button(texts.BILLING_PORTAL, link)]]


async def stop_renewal(turn: Turn, tenant_id: str) -> None:
    """Cancel the tenant's Stripe subscription at Stripe (an account being erased)."""
    s = turn.services
    sub = await s.billing.get(tenant_id) if s.billing is not None else None
    if s.checkout is None or sub is None or sub.provider != "stripe" or not sub.external_id:
        return
    try:
        await s.checkout.cancel_subscription(sub.external_id)
    except Exception as exc:  # the erasure goes on; the operator cancels it in Stripe
        log.warning("stripe subscription of %s not cancelled: %s", tenant_id, exc, exc_info=True)


def status_line(sub: Subscription | None) -> str:
    if sub is None:
        return ""
    until = sub.grace_until if sub.state.value == "past_due" else sub.period_end
    return texts.BILLING_STATUS.format(
        state=texts.BILLING_STATE_NAMES.get(sub.state.value, sub.state.value),
        until=f" until {day(until)}" if until is not None else "",
        provider=f" · {sub.provider}" if sub.provider else "",
    )


async def on_payment_check(turn: Turn) -> Outcome:
    """Telegram asks whether to take a Stars payment: the tenant and the plan must match."""
    problem = _invoice_problem(turn)
    if problem is not None:
        return Outcome(refused=True, error=problem)
    return Outcome()


def _invoice_problem(turn: Turn) -> str | None:
    s = turn.services
    payment = turn.event.payment
    if payment is None or s.billing is None:
        return texts.PAYMENT_BAD_INVOICE
    tenant_id, _, plan_id = payment.payload.partition(":")
    stars = s.config.billing.plan(plan_id).stars if plan_id in s.plans else None
    if payment.currency != "XTR" or not stars or payment.amount != stars:
        return texts.PAYMENT_BAD_INVOICE
    if "stars" not in s.config.billing.payable(plan_id):
        return texts.PAYMENT_BAD_INVOICE
    if turn.tenant is None or turn.tenant.id != tenant_id:
        return texts.PAYMENT_WRONG_PERSON
    return None


async def on_payment(turn: Turn) -> Outcome:
    """A Stars charge (first or renewal): recorded once by its charge id."""
    from bot.flows import account

    s = turn.services
    payment = turn.event.payment
    if payment is None or s.billing is None:
        return Outcome(handled=False)
    tenant_id, _, plan_id = payment.payload.partition(":")
    if _invoice_problem(turn) is not None:
        # The money is taken: keep the record for the operator, against the invoice's tenant.
        log.warning("stars payment %s does not match its invoice", payment.charge_id)
    try:
        tenant = await s.tenants.get(tenant_id)
    except TenantError:
        log.warning("stars payment %s names no tenant", payment.charge_id)
        return Outcome(refused=True)
    plan = s.plans.get(plan_id) if plan_id in s.plans else s.plans.get(tenant.plan)
    recorded = await s.billing.paid(
        tenant.id,
        plan=plan.id,
        provider="stars",
        charge_id=payment.charge_id,
        amount=payment.amount,
        currency=payment.currency,
        payer=turn.user.id,
        period_end=payment.expires_at,
    )
    if not recorded:
        return Outcome()  # a redelivery of a payment already recorded
    tenant = await s.tenants.get(tenant.id)
    turn.tenant = tenant
    await account.ready(turn, tenant, plan)
    return Outcome()


class DirectMessageNotices:
    """``BillingNotices`` by DM to every reachable identity of the tenant."""

    def __init__(self, services: Services) -> None:
        self._services = services

    async def notify(self, tenant_id: str, kind: str, params: Mapping[str, str]) -> None:
        template = texts.BILLING_NOTICES.get(kind)
        if template is None:
            log.warning("no text for billing notice %s", kind)
            return
        names = {p.id: p.name for p in self._services.plans}
        values = {k: names.get(v, v) if k == "plan" else v for k, v in params.items()}
        text = template.format(**values)
        for tid, platform, chat_id in await self._services.tenants.dm_targets():
            if tid != tenant_id:
                continue
            messenger = self._services.messengers.get(Platform(platform))
            if messenger is None:
                continue
            try:
                await messenger.send(ChatRef(Platform(platform), chat_id, True), Reply(text))
            except Exception as exc:  # one closed chat must not keep the others from hearing
                log.warning("billing notice not delivered on %s: %s", platform, exc, exc_info=True)
