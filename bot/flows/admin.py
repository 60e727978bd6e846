"""Operators' commands, behind the admin gate: stats, tenants, suspend, plans, audit, broadcast."""

from __future__ import annotations

import logging

from bot import texts
from bot.alerts import cap_text
from bot.flows import billing
from bot.flows.base import Refusal, Turn
from core import audit
from core.billing import day
from core.chat import ChatRef, Outcome, Platform, Reply
from core.errors import PlanError, TenantError, TenantNotFound
from core.tenants import TenantView

log = logging.getLogger("byokbot.flows.admin")


async def handle_admin(turn: Turn) -> Outcome | None:
    s = turn.services
    if not s.is_admin(turn.user):
        await s.audit("admin.denied", actor=turn.actor, tenant_id=None)
        raise Refusal(texts.NOT_ADMIN)
    args = list(turn.event.args)
    sub = args.pop(0).lower() if args else ""
    handler = _SUBCOMMANDS.get(sub)
    if handler is None:
        if not sub:
            await turn.say(texts.ADMIN_HELP, sensitive=True)
            return None
        raise Refusal(texts.ADMIN_UNKNOWN.format(sub=sub[:40]))
    return await handler(turn, args)


async def _tenant(turn: Turn, ref: str) -> TenantView:
    try:
        return await turn.services.tenants.resolve(ref)
    except TenantNotFound:
        raise Refusal(texts.ADMIN_NO_TENANT.format(ref=ref[:80])) from None


def _need(args: list[str], n: int, sub: str, usage: str) -> None:
    if len(args) < n:
        raise Refusal(texts.ADMIN_USAGE.format(sub=sub, args=usage))


async def _stats(turn: Turn, args: list[str]) -> Outcome | None:
    s = turn.services
    st = await s.tenants.stats()
    text = texts.ADMIN_STATS.format(
        total=st.total,
        by_status=texts.join(f"{k} {v}" for k, v in sorted(st.by_status.items())) or "none",
        by_plan=texts.join(f"{k} {v}" for k, v in sorted(st.by_plan.items())) or "none",
        keys=st.active_keys,
    )
    if s.budget is not None:
        totals = await s.budget.totals()
        if totals.tenants:
            text += texts.ADMIN_TOTALS.format(
                tokens=totals.tokens, usd=totals.usd, tenants=totals.tenants
            )
    await turn.say(text, sensitive=True)
    return None


async def _tenants(turn: Turn, args: list[str]) -> Outcome | None:
    page = int(args[0]) if args and args[0].isdigit() and int(args[0]) > 0 else 1
    rows = await turn.services.tenants.list(offset=(page - 1) * 20, limit=20)
    if not rows:
        await turn.say(texts.ADMIN_TENANTS_EMPTY, sensitive=True)
        return None
    lines = [
        texts.ADMIN_TENANT_LINE.format(
            id=t.id, plan=t.plan, status=t.status.value, identities=texts.join(ids) or "—"
        )
        for t, ids in rows
    ]
    await turn.say("\n".join(lines), sensitive=True)
    return None


async def _tenant_detail(turn: Turn, args: list[str]) -> Outcome | None:
    _need(args, 1, "tenant", "<id | platform:user>")
    t = await _tenant(turn, args[0])
    s = turn.services
    ids = await s.tenants.identities(t.id)
    stored = await s.credentials.list(t.id)
    spend = ""
    if s.budget is not None and not s.plans.get(t.plan).byok:
        summary = await s.budget.summary(t.id, t.plan)
        spend = texts.ADMIN_SPEND.format(used=cap_text(summary.spent, summary.caps))
    await turn.say(
        texts.ADMIN_TENANT.format(
            id=t.id,
            identities=texts.join(ids) or "—",
            plan=t.plan,
            status=t.status.value,
            reason=f" ({t.status_reason})" if t.status_reason else "",
            paused=" · paused" if t.paused else "",
            model=f"{t.provider}/{t.model}" if t.model else "default",
            keys=texts.join(f"{k.provider} {k.fingerprint} ({k.status.value})" for k in stored)
            or "none",
            created=texts.day(t.created_at),
            billing=billing.status_line(await s.billing.get(t.id)) if s.billing else "",
        )
        + spend,
        sensitive=True,
    )
    return None


async def _models(turn: Turn, args: list[str]) -> Outcome | None:
    s = turn.services
    routes = s.config.proxy.models
    lines = []
    for plan in s.plans:
        if plan.byok:
            continue
        for model in plan.models:
            route = routes[model]  # validated at start: every managed model has a route
            lines.append(
                texts.ADMIN_MODEL_LINE.format(
                    plan=plan.id,
                    model=model,
                    upstream=route.upstream,
                    input=route.input_usd_per_mtok,
                    output=route.output_usd_per_mtok,
                )
            )
    await turn.say(texts.ADMIN_MODELS.format(lines="\n".join(lines) or "none"), sensitive=True)
    return None


async def _notify(turn: Turn, tenant_id: str, text: str) -> str:
    """DM every identity of a tenant that we can reach; says in how many chats it arrived."""
    sent = total = 0
    for tid, platform, chat_id in await turn.services.tenants.dm_targets():
        if tid != tenant_id:
            continue
        total += 1
        if await _send(turn, platform, chat_id, text):
            sent += 1
    return texts.ADMIN_NOTICE_SENT.format(sent=sent, total=total) if total else ""


async def _send(turn: Turn, platform: str, chat_id: str, text: str) -> bool:
    try:
        p = Platform(platform)
    except ValueError:
        return False
    messenger = turn.services.messengers.get(p)
    if messenger is None:
        return False
    try:
        sent = await messenger.send(
            ChatRef(platform=p, id=chat_id, is_direct=True), Reply(text=text)
        )
    except Exception as exc:  # one unreachable person must not stop the rest
        # One line: from ``byokbot admin`` this lands on the operator's terminal.
        log.warning("could not deliver a notice on %s: %s", platform, exc)
        log.debug("notice delivery failure", exc_info=True)
        return False
    return sent is not None  # None: the chat is closed (the person blocked the bot)


async def _suspend(turn: Turn, args: list[str]) -> Outcome | None:
    _need(args, 1, "suspend", "<tenant> [reason]")
    t = await _tenant(turn, args[0])
    reason = " ".join(args[1:])[:200]
    try:
        await turn.services.tenants.suspend(t.id, actor=turn.actor, reason=reason)
    except TenantError:
        raise Refusal(texts.ADMIN_NO_TENANT.format(ref=args[0][:80])) from None
    await turn.services.agents.forget(t.id)
    told = await _notify(
        turn, t.id, texts.TENANT_SUSPENDED_NOTICE.format(reason=f" ({reason})" if reason else "")
    )
    await turn.say(texts.ADMIN_SUSPENDED.format(id=t.id) + told, sensitive=True)
    return None


async def _resume(turn: Turn, args: list[str]) -> Outcome | None:
    _need(args, 1, "resume", "<tenant>")
    t = await _tenant(turn, args[0])
    try:
        await turn.services.tenants.resume(t.id, actor=turn.actor)
    except TenantError:
        raise Refusal(texts.ADMIN_NO_TENANT.format(ref=args[0][:80])) from None
    told = await _notify(turn, t.id, texts.TENANT_RESUMED_NOTICE)
    await turn.say(texts.ADMIN_RESUMED.format(id=t.id) + told, sensitive=True)
    return None


async def _setplan(turn: Turn, args: list[str]) -> Outcome | None:
    _need(args, 2, "setplan", "<tenant> <plan>")
    t = await _tenant(turn, args[0])
    s = turn.services
    try:
        await s.tenants.set_plan(t.id, args[1].lower(), actor=turn.actor)
    except PlanError:
        raise Refusal(
            texts.PLAN_UNKNOWN.format(plan=args[1][:40], plans=texts.join(s.plans.ids))
        ) from None
    except TenantError:
        raise Refusal(texts.ADMIN_NO_TENANT.format(ref=args[0][:80])) from None
    await s.agents.reconfigure(t.id)
    await turn.say(texts.ADMIN_PLAN_SET.format(id=t.id, plan=args[1].lower()), sensitive=True)
    return None


async def _audit(turn: Turn, args: list[str]) -> Outcome | None:
    tenant_id = (await _tenant(turn, args[0])).id if args else None
    async with turn.services.db.session() as session:
        entries = await audit.read(session, tenant_id=tenant_id, limit=20)
    if not entries:
        await turn.say(texts.ADMIN_AUDIT_EMPTY, sensitive=True)
        return None
    lines = [
        texts.ADMIN_AUDIT_LINE.format(
            at=e.at.strftime("%Y-%m-%d %H:%M:%S"),
            actor=e.actor,
            action=e.action,
            tenant=e.tenant_id or "-",
            detail=" ".join(f"{k}={v}" for k, v in e.detail.items()),
        ).rstrip()
        for e in entries
    ]
    await turn.say("\n".join(lines), sensitive=True)
    return None


async def _broadcast(turn: Turn, args: list[str]) -> Outcome | None:
    _, _, rest = turn.event.text.strip().partition(" ")
    _, _, message = rest.strip().partition(" ")
    message = message.strip()
    if not message:
        raise Refusal(texts.ADMIN_USAGE.format(sub="broadcast", args="<text>"))
    targets = await turn.services.tenants.dm_targets()
    tenants = {t for t, _, _ in targets}
    reached: set[str] = set()
    for tid, platform, chat_id in targets:
        if await _send(turn, platform, chat_id, texts.ADMIN_BROADCAST.format(text=message)):
            reached.add(tid)
    await turn.services.audit(
        "admin.broadcast", actor=turn.actor, tenant_id=None, sent=len(reached), chars=len(message)
    )
    await turn.say(
        texts.ADMIN_BROADCAST_DONE.format(sent=len(reached), total=len(tenants)), sensitive=True
    )
    return None


async def _rotate_master_key(turn: Turn, args: list[str]) -> Outcome | None:
    rotate = turn.services.rotate_master_key
    if rotate is None:
        raise Refusal(texts.ADMIN_ROTATE_ENV.format(env=turn.services.config.core.master_key_env))
    version, count = await rotate()
    await turn.say(texts.ADMIN_REWRAP_DONE.format(version=version, count=count), sensitive=True)
    return None


async def _invite(turn: Turn, args: list[str]) -> Outcome | None:
    s = turn.services
    if s.access is None:
        raise Refusal(texts.ADMIN_UNKNOWN.format(sub="invite"))
    plan: str | None = None
    uses = 1
    for arg in args[:2]:
        if arg.isdigit() and int(arg) > 0:
            uses = min(int(arg), 10_000)
        elif arg.lower() in s.plans:
            plan = arg.lower()
        else:
            raise Refusal(texts.ADMIN_USAGE.format(sub="invite", args="[plan] [uses]"))
    invite = await s.access.create_invite(plan=plan, uses=uses, actor=turn.actor)
    await turn.say(
        texts.ADMIN_INVITE.format(
            code=invite.code, uses=uses, plan=f" for the {plan} plan" if plan else ""
        ),
        sensitive=True,
    )
    return None


async def _requests(turn: Turn, args: list[str]) -> Outcome | None:
    s = turn.services
    waiting = await s.access.pending() if s.access is not None else []
    if not waiting:
        await turn.say(texts.ADMIN_REQUESTS_EMPTY, sensitive=True)
        return None
    lines = [
        texts.ADMIN_REQUEST_LINE.format(
            identity=r.identity, name=r.display_name or "—", plan=r.plan, at=texts.day(r.created_at)
        )
        for r in waiting
    ]
    await turn.say("\n".join(lines), sensitive=True)
    return None


async def _revenue(turn: Turn, args: list[str]) -> Outcome | None:
    s = turn.services
    if s.billing is None:
        raise Refusal(texts.ADMIN_UNKNOWN.format(sub="revenue"))
    r = await s.billing.revenue()
    paid = texts.join(
        f"{amount} ⭐" if provider == "stars" else f"{provider} ${amount / 100:,.2f}"
        for provider, amount in sorted(r.paid_30d.items())
    )
    await turn.say(
        texts.ADMIN_REVENUE.format(
            stars=r.mrr_stars,
            usd=r.mrr_usd,
            states=texts.join(f"{k} {v}" for k, v in sorted(r.by_state.items())) or "none",
            providers=texts.join(f"{k} {v}" for k, v in sorted(r.by_provider.items())) or "none",
            paid=paid or "nothing",
        ),
        sensitive=True,
    )
    return None


async def _comp(turn: Turn, args: list[str]) -> Outcome | None:
    _need(args, 3, "comp", "<tenant> <plan> <days>")
    s = turn.services
    if s.billing is None:
        raise Refusal(texts.ADMIN_UNKNOWN.format(sub="comp"))
    t = await _tenant(turn, args[0])
    plan = args[1].lower()
    if plan not in s.plans:
        raise Refusal(texts.PLAN_UNKNOWN.format(plan=args[1][:40], plans=texts.join(s.plans.ids)))
    try:
        days = float(args[2])
    except ValueError:
        days = 0.0
    if not 0 < days <= 3660:
        raise Refusal(texts.ADMIN_COMP_BAD_DAYS.format(days=args[2][:20]))
    try:
        sub = await s.billing.grant(t.id, plan, days, actor=turn.actor)
    except TenantError:
        raise Refusal(texts.ADMIN_NO_TENANT.format(ref=args[0][:80])) from None
    await turn.say(
        texts.ADMIN_COMP_DONE.format(id=t.id, plan=plan, end=day(sub.period_end)),
        sensitive=True,
    )
    return None


async def _refund(turn: Turn, args: list[str]) -> Outcome | None:
    _need(args, 1, "refund", "<charge id>")
    s = turn.services
    if s.billing is None:
        raise Refusal(texts.ADMIN_UNKNOWN.format(sub="refund"))
    charge = args[0]
    payment = await s.billing.payment(charge)
    if payment is None or payment.refunded:
        raise Refusal(texts.ADMIN_REFUND_UNKNOWN.format(charge=charge[:80]))
    if payment.provider != "stars":
        raise Refusal(texts.ADMIN_REFUND_NOT_STARS)
    if s.stars is None:
        raise Refusal(texts.ADMIN_REFUND_FAILED.format(reason="Telegram is not enabled here"))
    try:
        await s.stars.refund_stars(payment.payer, charge)
    except Exception as exc:  # Telegram's refusal, in one line for the operator
        log.warning("stars refund of %s refused: %s", charge[:80], exc, exc_info=True)
        raise Refusal(texts.ADMIN_REFUND_FAILED.format(reason=str(exc)[:200])) from None
    done = await s.billing.refunded(charge, actor=turn.actor)
    amount = f"{payment.amount} ⭐" if done is not None else "already refunded"
    await turn.say(
        texts.ADMIN_REFUND_DONE.format(charge=charge[:80], amount=amount), sensitive=True
    )
    return None


_SUBCOMMANDS = {
    "invite": _invite,
    "requests": _requests,
    "revenue": _revenue,
    "comp": _comp,
    "refund": _refund,
    "stats": _stats,
    "tenants": _tenants,
    "tenant": _tenant_detail,
    "suspend": _suspend,
    "resume": _resume,
    "setplan": _setplan,
    "audit": _audit,
    "broadcast": _broadcast,
    "rotate-master-key": _rotate_master_key,
    "models": _models,
}
