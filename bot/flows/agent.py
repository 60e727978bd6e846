"""Talking to the agent: plain messages, model, persona, reset, stop and usage."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator

from bot import texts
from bot.alerts import cap_text
from bot.charts import usage_chart
from bot.flows import mcp, media
from bot.flows.base import Refusal, Turn, button, trial_cap_refusal
from bot.replytimer import ReplyTimer
from core.agent_data import current_model
from core.chat import Button, ButtonStyle, MessageRef, Outcome, Reply
from core.errors import AgentUnavailable
from core.llm import ImageInput
from core.llm.models import chat_models
from core.runtime.ports import NotesStore, StoredNote, ToolActivity
from core.tenants import TenantStatus, TenantView

log = logging.getLogger("byokbot.flows.agent")

PERSONA_LIMIT = 2000
# /usage waits up to 40 x 50 ms for a reply still being settled (its tokens reserved).
USAGE_SETTLE_POLLS = 40


def conversation_of(turn: Turn) -> str:
    """Memory is kept per chat (and per thread where the platform has them)."""
    chat = turn.chat
    thread = f":{chat.thread_id}" if chat.thread_id else ""
    return f"{chat.platform.value}:{chat.id}{thread}"


def unavailable_text(
    exc: AgentUnavailable, *, model: str | None = None, managed: bool = False
) -> str:
    """What to tell the person; on a managed plan, a failure of our proxy path is ours."""
    template = (texts.AGENT_UNAVAILABLE_MANAGED if managed else {}).get(exc.reason)
    template = template or texts.AGENT_UNAVAILABLE.get(exc.reason)
    if template is None:
        return texts.AGENT_GENERIC.format(reason=exc.reason)
    retry_after = getattr(exc, "retry_after", None)
    retry = texts.retry_in(retry_after)
    return template.format(retry=retry, model=model or "you chose")


def _usable(turn: Turn) -> TenantView:
    tenant = turn.require_tenant()
    if tenant.status is TenantStatus.SUSPENDED:
        raise Refusal(texts.AGENT_UNAVAILABLE["suspended"])
    if tenant.paused:
        raise Refusal(texts.PAUSED)
    return tenant


class StatusLine:
    """The short line a chat shows while the agent runs a tool ("🔎 reading example.com…").

    Posted when a tool starts, edited for the next one, and deleted as soon as the answer's
    text continues (or the reply ends), so the answer takes its place.
    """

    def __init__(self, turn: Turn) -> None:
        self._turn = turn
        self._ref: MessageRef | None = None
        self._shown = ""

    async def on_tool(self, activity: ToolActivity) -> None:
        if activity.done:
            return  # the line stays until the answer (or the next tool) replaces it
        text = texts.tool_status(activity.name, activity.target)
        if text == self._shown:
            return
        messenger = self._turn.messenger
        if self._ref is not None:
            try:
                await messenger.edit(self._ref, Reply(text))
            except Exception as exc:  # noqa: BLE001 - a status line must not end the reply
                # Deleted by the person, or too old to edit: the next one is posted anew.
                log.info("tool status line not edited (%s); posting it anew", type(exc).__name__)
                self._ref = None
        if self._ref is None:
            self._ref = await messenger.respond(self._turn.event, Reply(text))
        self._shown = text

    async def clear(self) -> None:
        ref, self._ref, self._shown = self._ref, None, ""
        if ref is not None:
            await self._turn.messenger.delete(ref.chat, ref.id)


async def handle_message(turn: Turn) -> Outcome | None:
    tenant = _usable(turn)
    agents = turn.services.agents
    plans = turn.services.plans
    billing = turn.services.billing
    if billing is not None and not await billing.entitled(tenant):
        name = plans.get(tenant.plan).name if tenant.plan in plans else tenant.plan
        raise Refusal(texts.BILLING_NEEDS_PAYMENT.format(plan=name))
    budget = turn.services.budget
    cap: int | None = None
    if billing is not None and budget is not None:
        cap = await billing.trial_cap(tenant)
        # The proxy enforces the cap on every request; this check words it for the person.
        if cap is not None and (await budget.summary(tenant.id, tenant.plan)).spent.tokens >= cap:
            raise Refusal(texts.BILLING_TRIAL_CAP.format(cap=cap))
    managed = tenant.plan in plans and not plans.get(tenant.plan).byok
    text, images = turn.event.text, tuple[ImageInput, ...]()
    if turn.event.attachments:
        # Photos, voice notes and documents become images, a transcript, the document's text.
        prepared = await media.prepare(turn, tenant, managed=managed)
        text, images = prepared.text, prepared.images
    timer = ReplyTimer(turn.user.platform.value)
    # Beside the agent's request, not before it: under load a chat action can take seconds
    # to come back, and the provider need not wait for it.
    typing = asyncio.create_task(turn.messenger.typing(turn.chat))
    status = StatusLine(turn)
    stream = agents.reply(
        tenant.id,
        conversation_of(turn),
        text,
        on_tool=status.on_tool,
        on_confirm=functools.partial(mcp.ask, turn),
        images=images,
    )
    try:
        try:
            # The first chunk decides between a streamed reply and a clear refusal.
            first = await anext(stream)
        except StopAsyncIteration:
            return None
        except AgentUnavailable as exc:
            timer.done("unavailable")
            if exc.reason == "cap_reached" and cap is not None:
                # The proxy held the trial to its smaller cap: word it as the trial's.
                raise await trial_cap_refusal(
                    budget, tenant, cap, longest_reply=turn.services.config.agent.max_reply_tokens
                ) from None
            raise Refusal(unavailable_text(exc, model=tenant.model, managed=managed)) from None

        async def chunks() -> AsyncIterator[str]:
            await status.clear()
            timer.first_visible()  # handed to the messenger, which shows it at once
            yield first
            async for chunk in stream:
                await status.clear()
                yield chunk

        try:
            await turn.messenger.stream(turn.event, chunks())
        except AgentUnavailable as exc:
            timer.done("failed")
            await turn.say(unavailable_text(exc, model=tenant.model, managed=managed))
        else:
            timer.done("ok")
    finally:
        await _settle_typing(typing)
        await status.clear()
    return None


async def _settle_typing(typing: asyncio.Task[None]) -> None:
    # A chat action still on its way when the reply is over would show "typing..." after it.
    typing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await typing


MODEL_BUTTONS = 25  # Discord's limit of buttons on one message, and a readable list anywhere


async def _byok_choices(turn: Turn, tenant: TenantView) -> list[tuple[str, str]]:
    s = turn.services
    out: list[tuple[str, str]] = []
    for key in await s.credentials.list(tenant.id):
        if key.status.value != "active":
            continue
        provider = s.config.providers.get(key.provider)
        if provider is None:
            continue
        # A key's model list also names embedding, speech and image models: chat ones only.
        names = chat_models(key.models) or provider.models or (provider.default_model,)
        out.extend((provider.id, m) for m in names)
    return out


async def _choices(turn: Turn, tenant: TenantView) -> list[tuple[str, str]]:
    """Every model the tenant may choose, in a stable order (buttons carry indexes)."""
    plan = turn.services.plans.get(tenant.plan)
    if not plan.byok:
        return [("managed", m) for m in plan.models]
    return await _byok_choices(turn, tenant)


async def current_choice(turn: Turn, tenant: TenantView) -> tuple[str, str] | None:
    """``(provider, model)`` the agent uses now, the provider's default model included."""
    s = turn.services
    plan = s.plans.get(tenant.plan)
    keys = await s.credentials.list(tenant.id) if plan.byok else ()
    return current_model(s.config, plan, tenant, keys)


async def handle_model(turn: Turn) -> Outcome | None:
    tenant = _usable(turn)
    choices = await _choices(turn, tenant)
    if not choices:
        raise Refusal(texts.MODEL_NONE)
    if turn.event.args:
        wanted = turn.event.args[0]
        for i, (_, model) in enumerate(choices):
            if model == wanted:
                return await _set_model(turn, tenant, choices, i)
        raise Refusal(texts.AGENT_UNAVAILABLE["model_not_in_plan"])
    current = await current_choice(turn, tenant)
    # The current model first, then the others in their order.
    order = sorted(range(len(choices)), key=lambda i: choices[i] != current)
    rows: list[list[Button]] = [
        [button(f"{choices[i][1]} ({choices[i][0]})", f"model:{i}")] for i in order[:MODEL_BUTTONS]
    ]
    text = texts.MODEL_CHOOSE.format(current=current[1] if current else texts.MODEL_NOT_SET)
    if len(choices) > MODEL_BUTTONS:
        text += "\n" + texts.MODEL_MORE.format(count=len(choices) - MODEL_BUTTONS)
    await turn.say(text, buttons=rows)
    return None


async def on_model_button(turn: Turn, args: list[str]) -> Outcome | None:
    tenant = _usable(turn)
    choices = await _choices(turn, tenant)
    if len(args) != 1 or not args[0].isdigit() or int(args[0]) >= len(choices):
        raise Refusal(texts.STALE_BUTTON)
    return await _set_model(turn, tenant, choices, int(args[0]))


async def _set_model(
    turn: Turn, tenant: TenantView, choices: list[tuple[str, str]], index: int
) -> Outcome | None:
    provider, model = choices[index]
    await turn.services.tenants.set_model(tenant.id, provider, model, actor=turn.actor)
    await turn.services.agents.reconfigure(tenant.id)
    await turn.say(texts.MODEL_SET.format(model=model))
    return None


async def handle_persona(turn: Turn) -> Outcome | None:
    tenant = _usable(turn)
    _, _, rest = turn.event.text.strip().partition(" ")
    persona = rest.strip()
    if not persona:
        if tenant.persona:
            await turn.say(texts.PERSONA_SHOW.format(persona=tenant.persona), sensitive=True)
        else:
            await turn.say(texts.PERSONA_NONE)
        return None
    if persona.lower() == "clear":
        persona = ""
    if len(persona) > PERSONA_LIMIT:
        raise Refusal(texts.PERSONA_TOO_LONG.format(limit=PERSONA_LIMIT, length=len(persona)))
    await turn.services.tenants.set_persona(tenant.id, persona, actor=turn.actor)
    await turn.services.agents.reconfigure(tenant.id)
    await turn.say(texts.PERSONA_SET if persona else texts.PERSONA_CLEARED)
    return None


async def handle_reset(turn: Turn) -> Outcome | None:
    tenant = turn.require_tenant()
    await turn.services.agents.reset(tenant.id, conversation_of(turn))
    await turn.say(texts.RESET_DONE)
    return None


async def handle_stop(turn: Turn) -> Outcome | None:
    tenant = turn.require_tenant()
    stopped = await turn.services.agents.cancel(tenant.id, conversation_of(turn))
    await turn.say(texts.STOPPED if stopped else texts.NOTHING_TO_STOP)
    return None


async def handle_usage(turn: Turn) -> Outcome | None:
    tenant = turn.require_tenant()
    s = turn.services
    days = await s.usage.month(tenant.id)
    allowance = ""
    plan = s.plans.get(tenant.plan)
    caps = None
    if not plan.byok and s.budget is not None:
        summary = await s.budget.summary(tenant.id, plan.id)
        # A reply that just ended may not be settled yet (its reservation still held): give it
        # a moment, so /usage right after a reply counts that reply.
        for _ in range(USAGE_SETTLE_POLLS):
            if not summary.tokens_reserved:
                break
            await asyncio.sleep(0.05)
            summary = await s.budget.summary(tenant.id, plan.id)
        allowance = texts.USAGE_MANAGED.format(
            used=cap_text(summary.spent, summary.caps),
            pct=summary.percent,
            resets=summary.spent.resets_on.isoformat(),
        )
        caps = summary.caps
        allowance += await _voice_line(turn, tenant.id)
    if not days:
        text = f"{allowance}\n{texts.USAGE_NONE}" if allowance else texts.USAGE_NONE
        await turn.say(text, sensitive=True)
        return None
    lines = "\n".join(
        f"{d.day:%m-%d}: {d.input_tokens + d.output_tokens} tokens ({d.requests} requests)"
        for d in days
    )
    text = texts.USAGE.format(
        input=sum(d.input_tokens for d in days),
        output=sum(d.output_tokens for d in days),
        requests=sum(d.requests for d in days),
        lines=lines,
    )
    await turn.say(
        f"{allowance}\n{text}" if allowance else text,
        sensitive=True,
        image=await usage_chart(s, tenant.id, byok=plan.byok, caps=caps),
    )
    return None


async def _voice_line(turn: Turn, tenant_id: str) -> str:
    """The managed plan's voice notes this month, priced at the proxy's per-minute price."""
    s = turn.services
    route = s.config.proxy.transcription
    notes, seconds = await s.usage.voice_month(tenant_id)
    if route is None or not notes:
        return ""
    usd = f"{seconds * route.usd_per_minute / 60:.4f}".rstrip("0")
    usd = usd + "0" * max(0, 2 - len(usd.partition(".")[2]))
    return "\n" + texts.USAGE_VOICE.format(notes=notes, seconds=seconds, usd=usd)


MEMORY_BUTTONS = 10


def _notes_store(turn: Turn) -> NotesStore:
    notes = turn.services.notes
    if notes is None:
        raise Refusal(texts.MEMORY_OFF)
    return notes


async def _show_memory(turn: Turn, notes: list[StoredNote]) -> None:
    if not notes:
        await turn.say(texts.MEMORY_NONE, sensitive=True)
        return
    lines = "\n".join(f"{i}. {n.text}" for i, n in enumerate(notes, 1))
    rows: list[list[Button]] = [
        [button(texts.MEMORY_FORGET_BUTTON.format(n=i), f"mem:{n.id}")]
        for i, n in enumerate(notes[:MEMORY_BUTTONS], 1)
    ]
    rows.append([button(texts.MEMORY_CLEAR_BUTTON, "mem:all", style=ButtonStyle.DANGER)])
    await turn.say(texts.MEMORY_LIST.format(lines=lines), buttons=rows, sensitive=True)


async def handle_memory(turn: Turn) -> Outcome | None:
    """``/memory`` lists the notes; ``/memory forget N`` and ``/memory clear`` erase them."""
    tenant = turn.require_tenant()
    store = _notes_store(turn)
    notes = await store.load(tenant.id)
    args = [a.lower() for a in turn.event.args]
    if not args:
        await _show_memory(turn, notes)
        return None
    if args[0] in ("clear", "forget-all") and len(args) == 1:
        count = await store.clear(tenant.id)
        await turn.say(texts.MEMORY_CLEARED.format(count=count))
        return None
    if args[0] in ("forget", "delete", "erase") and len(args) == 2:
        arg = args[1]
        if not arg.isdigit() or not 1 <= int(arg) <= len(notes):
            raise Refusal(texts.MEMORY_BAD_NUMBER.format(arg=arg[:20]))
        note = notes[int(arg) - 1]
        await store.forget(tenant.id, note.id)
        await turn.say(texts.MEMORY_FORGOTTEN.format(text=note.text), sensitive=True)
        return None
    raise Refusal(texts.MEMORY_USAGE)


async def on_memory_button(turn: Turn, args: list[str]) -> Outcome | None:
    tenant = turn.require_tenant()
    store = _notes_store(turn)
    if len(args) != 1:
        raise Refusal(texts.STALE_BUTTON)
    if args[0] == "all":
        count = await store.clear(tenant.id)
        await turn.say(texts.MEMORY_CLEARED.format(count=count))
        return None
    note = next((n for n in await store.load(tenant.id) if n.id == args[0]), None)
    if note is None or not await store.forget(tenant.id, note.id):
        raise Refusal(texts.STALE_BUTTON)
    await turn.say(texts.MEMORY_FORGOTTEN.format(text=note.text), sensitive=True)
    return None
