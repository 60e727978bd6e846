"""Onboarding, plans and the account itself: start, help, plan, status, pause, resume, delete."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot import texts
from bot.flows import billing, keys
from bot.flows.base import EPHEMERAL_PLATFORMS, Refusal, Turn, button
from core.agent_data import current_model
from core.chat import Button, ButtonStyle, Outcome
from core.config import PlanSettings
from core.credentials import KeyInfo
from core.errors import IntakeError, PlanError
from core.tenants import TenantStatus, TenantView

log = logging.getLogger("byokbot.account")


def _plan_buttons(turn: Turn) -> list[list[Button]]:
    s = turn.services
    return [
        [button(texts.plan_button(p, priced=billing.priced(s, p)), f"plan:{p.id}")]
        for p in s.config.offered_plans
    ]


def _plan_lines(turn: Turn) -> str:
    s = turn.services
    return "\n".join(
        texts.plan_line(p, priced=billing.priced(s, p)) for p in s.config.offered_plans
    )


def _require_usable_account(turn: Turn, *, billing_ok: bool = False) -> TenantView:
    """The tenant, unless suspended (``billing_ok``: a billing suspension may pay its way out)."""
    from core.billing import BILLING_REASON

    tenant = turn.require_tenant()
    if billing_ok and tenant.status_reason == BILLING_REASON:
        return tenant
    if tenant.status is TenantStatus.SUSPENDED:
        reason = f" ({tenant.status_reason})" if tenant.status_reason else ""
        raise Refusal(texts.SUSPENDED.format(reason=reason))
    return tenant


async def handle_start(turn: Turn) -> Outcome | None:
    tenant = turn.tenant
    if tenant is not None:
        if turn.event.args and turn.event.args[0].startswith("key"):
            # Deep link from a group ("open a private chat to add your key").
            return await keys.ask_provider(turn)
        plan = turn.services.plans.get(tenant.plan)
        await turn.say(texts.WELCOME_BACK.format(plan=plan.name))
        return None
    if turn.event.args and turn.services.access is not None:
        return await billing.redeem_invite(turn, turn.event.args[0])
    if turn.services.config.access.mode == "invite" and not turn.services.is_admin(turn.user):
        await turn.say(texts.ACCESS_INVITE_ONLY)
        return None
    await turn.say(f"{texts.WELCOME}\n{_plan_lines(turn)}", buttons=_plan_buttons(turn))
    return None


async def handle_help(turn: Turn) -> Outcome | None:
    text = texts.HELP
    if turn.services.is_admin(turn.user):
        text = f"{text}\n\n{texts.ADMIN_HELP}"
    await turn.say(text)
    return None


async def handle_plan(turn: Turn) -> Outcome | None:
    args = turn.event.args
    if args:
        return await choose_plan(turn, args[0].lower())
    if turn.tenant is None:
        await turn.say(
            texts.PLAN_CHOOSE.format(lines=_plan_lines(turn)), buttons=_plan_buttons(turn)
        )
        return None
    s = turn.services
    tenant = turn.tenant
    plan = s.plans.get(tenant.plan)
    sub = await s.billing.get(tenant.id) if s.billing is not None else None
    await turn.say(
        texts.PLAN_CURRENT.format(plan=plan.name, lines=_plan_lines(turn))
        + billing.status_line(sub),
        buttons=_plan_buttons(turn) + await billing.portal_button(turn, sub),
    )
    if s.billing is not None and not await s.billing.entitled(tenant):
        await billing.entitled_or_offer(turn, tenant, plan)
    else:
        await billing.offer_in_trial(turn, tenant, plan)
    return None


async def on_plan_button(turn: Turn, args: list[str]) -> Outcome | None:
    if len(args) != 1:
        raise Refusal(texts.STALE_BUTTON)
    return await choose_plan(turn, args[0])


async def choose_plan(turn: Turn, plan_id: str) -> Outcome | None:
    s = turn.services
    try:
        plan = s.plans.get(plan_id)
    except PlanError:
        offered = texts.join(p.id for p in s.config.offered_plans)
        raise Refusal(texts.PLAN_UNKNOWN.format(plan=plan_id[:40], plans=offered)) from None
    if plan not in s.config.offered_plans:
        # A managed plan needs the metering proxy; without it the plan could never answer.
        byok = s.plans.default_byok()
        await turn.say(
            texts.PLAN_MANAGED_OFF.format(plan=plan.name, byok=byok.id if byok else "byok"),
            buttons=_plan_buttons(turn),
        )
        return Outcome(refused=True)
    tenant = turn.tenant
    if tenant is None:
        if not await billing.admit(turn, plan):
            return None
        dm = turn.chat.id if turn.chat.is_direct else None
        tenant = await s.tenants.sign_up(turn.user, plan.id, dm_chat_id=dm)
        turn.tenant = tenant
        await turn.say(texts.SIGNED_UP.format(plan=plan.name))
    else:
        _require_usable_account(turn, billing_ok=True)
        if tenant.plan == plan.id:
            if s.billing is not None and not await s.billing.entitled(tenant):
                return await set_up(turn, tenant, plan)
            await turn.say(texts.PLAN_SAME.format(plan=plan.name))
            await billing.offer_in_trial(turn, tenant, plan)
            return None
        if s.billing is not None:
            try:
                change = await s.billing.change_plan(tenant.id, plan.id, actor=turn.actor)
            except Exception as exc:  # the card provider is down or refused: nothing changed
                log.warning("plan change of %s failed: %s", tenant.id, exc, exc_info=True)
                await turn.say(texts.BILLING_PLAN_CHANGE_FAILED)
                return Outcome(refused=True)
            if change != "now":
                return None  # told by the billing notice: pending, or prorated and switched
        tenant = await s.tenants.set_plan(tenant.id, plan.id, actor=turn.actor)
        turn.tenant = tenant
        await s.agents.reconfigure(tenant.id)
        await turn.say(texts.PLAN_CHANGED.format(plan=plan.name))
    return await set_up(turn, tenant, plan)


async def set_up(turn: Turn, tenant: TenantView, plan: PlanSettings) -> Outcome | None:
    """After sign-up or a plan change: payment (or trial) where the plan needs it, then ready."""
    if not await billing.entitled_or_offer(turn, tenant, plan):
        return None
    return await ready(turn, tenant, plan)


async def ready(turn: Turn, tenant: TenantView, plan: PlanSettings) -> Outcome | None:
    """The plan may be used: ask for a key (BYOK) or say the managed agent is ready."""
    s = turn.services
    if plan.byok:
        active = [k for k in await s.credentials.list(tenant.id) if k.status.value == "active"]
        if not active:
            await turn.say(
                texts.BYOK_NEEDS_KEY.format(plan=plan.name), buttons=keys.provider_buttons(turn)
            )
            return None
        await s.tenants.activate(tenant.id, actor=turn.actor)
        await turn.say(texts.ALL_SET)
        return None
    await s.tenants.activate(tenant.id, actor=turn.actor)
    await turn.say(texts.MANAGED_READY)
    return None


async def handle_status(turn: Turn) -> Outcome | None:
    tenant = turn.require_tenant()
    s = turn.services
    plan = s.plans.get(tenant.plan)
    stored = await s.credentials.list(tenant.id)
    key_text = (
        texts.join(f"{k.provider} {k.fingerprint} ({k.status.value})" for k in stored) or "none"
    )
    reason = f" — {tenant.status_reason}" if tenant.status_reason else ""
    await turn.say(
        texts.STATUS.format(
            plan=plan.name,
            price=f"${plan.price_usd:g}/month" if billing.priced(s, plan) else "no price set",
            status=f"{_state(tenant, plan.byok, stored)}{reason}",
            paused=" (paused)" if tenant.paused else "",
            model=_model_line(turn, tenant, stored),
            keys=key_text,
        ),
        sensitive=True,
    )
    return None


def _state(tenant: TenantView, byok: bool, stored: Sequence[KeyInfo]) -> str:
    """The account's state in words ("trial" is only the internal name of "not set up")."""
    if tenant.status is TenantStatus.TRIAL and byok and not stored:
        return texts.ACCOUNT_NEEDS_KEY
    return texts.ACCOUNT_STATES.get(tenant.status.value, tenant.status.value)


def _model_line(turn: Turn, tenant: TenantView, stored: Sequence[KeyInfo]) -> str:
    """Which model answers, by name: the chosen one, or the provider's (plan's) default."""
    s = turn.services
    plan = s.plans.get(tenant.plan)
    current = current_model(s.config, plan, tenant, stored)
    if current is None:
        return texts.STATUS_MODEL_NONE
    provider_id, model = current
    provider = s.config.providers.get(provider_id)
    name = provider.name if provider is not None else texts.MANAGED_NAME
    chosen = tenant.model == model and (not plan.byok or tenant.provider == provider_id)
    if not chosen:
        return texts.STATUS_MODEL_DEFAULT.format(model=model, provider=name)
    return model if provider is None else texts.STATUS_MODEL.format(model=model, provider=name)


async def handle_pause(turn: Turn) -> Outcome | None:
    tenant = _require_usable_account(turn)
    if tenant.paused:
        raise Refusal(texts.ALREADY_PAUSED)
    await turn.services.tenants.set_paused(tenant.id, True, actor=turn.actor)
    await turn.services.agents.forget(tenant.id)
    await turn.say(texts.PAUSED)
    return None


async def handle_resume(turn: Turn) -> Outcome | None:
    tenant = _require_usable_account(turn)
    if not tenant.paused:
        raise Refusal(texts.NOT_PAUSED)
    await turn.services.tenants.set_paused(tenant.id, False, actor=turn.actor)
    await turn.say(texts.RESUMED)
    return None


async def handle_delete(turn: Turn) -> Outcome | None:
    tenant = turn.require_tenant()
    await turn.services.flow_states.set(
        turn.user.identity, "account", "confirm_delete", data={"tenant": tenant.id}
    )
    await turn.say(
        texts.DELETE_CONFIRM,
        buttons=[
            [
                button(texts.DELETE_YES, "del:yes", style=ButtonStyle.DANGER),
                button(texts.DELETE_NO, "del:no"),
            ]
        ],
    )
    return None


async def on_delete_button(turn: Turn, args: list[str]) -> Outcome | None:
    s = turn.services
    state = await s.flow_states.get(turn.user.identity)
    tenant = turn.tenant
    if (
        tenant is None
        or state is None
        or (state.flow, state.step) != ("account", "confirm_delete")
        or state.data.get("tenant") != tenant.id
        or args not in (["yes"], ["no"])
    ):
        raise Refusal(texts.STALE_BUTTON)
    await s.flow_states.clear(turn.user.identity)
    if args == ["no"]:
        await turn.say(texts.DELETE_CANCELLED)
        return None
    await s.agents.forget(tenant.id)
    if s.billing is not None:
        # Nothing renews for an erased account (a Stars subscription is cancelled by the
        # person in Telegram; it cannot be charged for a tenant that no longer exists).
        await billing.stop_renewal(turn, tenant.id)
        await s.billing.cancel(tenant.id, actor=turn.actor)
    await s.tenants.delete(tenant.id, actor=turn.actor)
    turn.tenant = None
    await turn.say(texts.DELETED)
    return None


async def handle_link(turn: Turn) -> Outcome | None:
    """``/link`` shows a one-time code; ``/link CODE`` on another platform attaches to it."""
    s = turn.services
    if not turn.event.args:
        tenant = _require_usable_account(turn)
        code, _ = await s.intake.open_link(tenant_id=tenant.id, user=turn.user)
        minutes = max(1, int(s.intake.ttl.total_seconds() // 60))
        await turn.say(texts.LINK_CODE.format(code=code, minutes=minutes), sensitive=True)
        return None
    if not turn.chat.is_direct and turn.user.platform not in EPHEMERAL_PLATFORMS:
        # A code typed into a group could be redeemed by someone else first.
        raise Refusal(texts.LINK_PRIVATE_ONLY)
    try:
        tenant_id = await s.intake.redeem_link(" ".join(turn.event.args))
    except IntakeError:
        raise Refusal(texts.LINK_BAD_CODE) from None
    if turn.tenant is not None:
        raise Refusal(
            texts.LINK_ALREADY_SAME if turn.tenant.id == tenant_id else texts.LINK_HAS_OWN
        )
    dm = turn.chat.id if turn.chat.is_direct else None
    turn.tenant = await s.tenants.attach_identity(tenant_id, turn.user, dm_chat_id=dm)
    if s.billing is not None:  # one trial per person, whichever platform they come from
        await s.billing.note_identity(turn.user.identity, tenant_id)
    await turn.say(texts.LINKED)
    return None
