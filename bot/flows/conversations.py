"""A chat's conversations: ``/compact``, ``/new`` and ``/history`` (switch back, export)."""

from __future__ import annotations

from datetime import datetime

from bot import texts
from bot.flows.agent import conversation_of, unavailable_text
from bot.flows.base import Refusal, Turn, button
from core.chat import Button, Document, Outcome, Platform
from core.conversations import DatabaseThreads, ThreadInfo
from core.errors import AgentUnavailable
from core.runtime.compaction import SUMMARY_ROLE
from core.runtime.ports import Turn as MemoryTurn
from core.tenants import TenantStatus

# Where the adapter attaches ``Reply.document`` (Slack's file upload is not wired yet).
FILE_PLATFORMS = frozenset({Platform.TELEGRAM, Platform.DISCORD})


def _threads(turn: Turn) -> DatabaseThreads:
    threads = turn.services.conversations
    if threads is None:
        raise Refusal(texts.HISTORY_OFF)
    return threads


def _usable(turn: Turn) -> str:
    tenant = turn.require_tenant()
    if tenant.status is TenantStatus.SUSPENDED:
        raise Refusal(texts.AGENT_UNAVAILABLE["suspended"])
    return tenant.id


async def handle_compact(turn: Turn) -> Outcome | None:
    """Summarise the conversation now; the answer says how much became how little."""
    tenant_id = _usable(turn)
    tenant = turn.require_tenant()
    plans = turn.services.plans
    managed = tenant.plan in plans and not plans.get(tenant.plan).byok
    await turn.messenger.typing(turn.chat)
    try:
        done = await turn.services.agents.compact(tenant_id, conversation_of(turn))
    except AgentUnavailable as exc:
        raise Refusal(unavailable_text(exc, model=tenant.model, managed=managed)) from None
    if done is None:
        await turn.say(texts.COMPACT_NOTHING)
        return None
    await turn.say(
        texts.COMPACTED.format(turns=done.turns, before=done.before_tokens, after=done.after_tokens)
    )
    return None


async def handle_new(turn: Turn) -> Outcome | None:
    tenant_id = _usable(turn)
    started = await _threads(turn).start_new(tenant_id, conversation_of(turn))
    await turn.say(texts.NEW_CONVERSATION if started else texts.NEW_ALREADY)
    return None


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M") if at is not None else texts.HISTORY_NEW_WHEN


def _line(info: ThreadInfo, index: int) -> str:
    return texts.HISTORY_LINE.format(
        n=index,
        when=_when(info.updated_at),
        words=info.first_words or texts.HISTORY_EMPTY_WORDS,
        turns=info.turns,
        current=texts.HISTORY_CURRENT if info.current else "",
    )


async def handle_history(turn: Turn) -> Outcome | None:
    """``/history`` lists, ``/history <n>`` switches, ``/history export`` sends a file."""
    tenant_id = _usable(turn)
    threads = _threads(turn)
    conversation = conversation_of(turn)
    args = [a.lower() for a in turn.event.args]
    if args == ["export"]:
        return await _export(turn, threads, tenant_id, conversation)
    listed = await threads.recent(
        tenant_id, conversation, turn.services.config.conversations.history_listed
    )
    if not args:
        lines = "\n".join(_line(info, i) for i, info in enumerate(listed, 1))
        rows: list[list[Button]] = [
            [button(texts.HISTORY_BUTTON.format(n=i), f"conv:{info.number}")]
            for i, info in enumerate(listed, 1)
            if not info.current
        ]
        await turn.say(texts.HISTORY_LIST.format(lines=lines), buttons=rows, sensitive=True)
        return None
    if len(args) == 1 and args[0].isdigit() and 1 <= int(args[0]) <= len(listed):
        await _switch(turn, threads, tenant_id, listed[int(args[0]) - 1])
        return None
    if len(args) == 1 and args[0].isdigit():
        raise Refusal(texts.HISTORY_NONE.format(arg=args[0][:10]))
    raise Refusal(texts.HISTORY_USAGE)


async def _switch(turn: Turn, threads: DatabaseThreads, tenant_id: str, info: ThreadInfo) -> None:
    if info.current:
        await turn.say(texts.HISTORY_SAME)
        return
    if not await threads.switch(tenant_id, conversation_of(turn), info.number):
        raise Refusal(texts.STALE_BUTTON)
    words = info.first_words or texts.HISTORY_EMPTY_WORDS
    await turn.say(texts.HISTORY_SWITCHED.format(words=words), sensitive=True)


async def on_history_button(turn: Turn, args: list[str]) -> Outcome | None:
    tenant_id = _usable(turn)
    threads = _threads(turn)
    if len(args) != 1 or not args[0].isdigit():
        raise Refusal(texts.STALE_BUTTON)
    number = int(args[0])
    listed = await threads.recent(
        tenant_id, conversation_of(turn), turn.services.config.conversations.history_listed
    )
    info = next((i for i in listed if i.number == number), None)
    if info is None:
        raise Refusal(texts.STALE_BUTTON)
    await _switch(turn, threads, tenant_id, info)
    return None


def render_export(turns: list[MemoryTurn], when: datetime) -> str:
    """The conversation as plain text: a title, the summary if compacted, then the messages."""
    out = [texts.EXPORT_TITLE.format(when=when.strftime("%Y-%m-%d %H:%M UTC")), ""]
    for t in turns:
        if t.role == SUMMARY_ROLE:
            out += [texts.EXPORT_SUMMARY, t.content, ""]
        else:
            who = texts.EXPORT_PERSON if t.role == "user" else texts.EXPORT_AGENT
            out += [f"{who}: {t.content}", ""]
    return "\n".join(out)


async def _export(
    turn: Turn, threads: DatabaseThreads, tenant_id: str, conversation: str
) -> Outcome | None:
    if turn.chat.platform not in FILE_PLATFORMS:
        raise Refusal(texts.HISTORY_EXPORT_NO_FILES)
    turns = await threads.current_turns(tenant_id, conversation)
    if not turns:
        raise Refusal(texts.HISTORY_EXPORT_EMPTY)
    now = turn.services.clock.now()
    text = render_export(turns, now)
    messages = sum(1 for t in turns if t.role != SUMMARY_ROLE)
    await turn.say(
        texts.HISTORY_EXPORTED.format(turns=messages),
        sensitive=True,
        document=Document(f"conversation-{now:%Y%m%d-%H%M}.txt", text.encode()),
    )
    return None
