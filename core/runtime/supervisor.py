"""The agent supervisor: one isolated process per tenant, started on demand, kept healthy.

It implements ``core.ports.Agents``. Memory lives on this side: each request carries the
trimmed conversation, and only answered turns are saved (through ``MemoryStore``), so a worker
killed mid-reply loses nothing already answered.

Lifecycle of a tenant's agent:

- **start** on the first message (forked from the template, or the operator's command), then
  ``configure`` over the pipe and wait for ``ready``;
- **crash** (the pipe closes while not stopping): requests in flight raise
  ``ReplyFailed("crashed")``; the next message restarts it at once the first time, then with
  a back-off of 1, 2, 4 ... 60 s between repeated crashes (``ReplyFailed("restarting")`` with
  ``retry_after`` meanwhile); a worker that ran a minute before crashing resets the back-off;
- **rotation** (``reconfigure``, or a request noticing a changed key/provider): a new worker
  takes every new request; the old one gets end-of-input, finishes what it has, and exits;
- **idle stop** (``stop_idle``, run by the ``idle_job`` APScheduler job) and the **live
  bound** (the least recently used idle agent stops to make room);
- **forget**: killed at once (paused, suspended, deleted).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from core.config import AgentSettings, ConversationSettings
from core.errors import AgentUnavailable
from core.llm import ChatMessage, ImageInput
from core.metrics import AGENT_CRASHES
from core.runtime import compaction, protocol, sandbox
from core.runtime.compaction import estimate_tokens
from core.runtime.errors import ProtocolError, ReplyFailed
from core.runtime.launch import CommandLauncher, ForkserverLauncher, Launcher, WorkerHandle
from core.runtime.ports import (
    AgentProfile,
    Compacted,
    ConfirmRequest,
    KeyHealth,
    MemoryStore,
    NotesStore,
    ProfileSource,
    TaskSink,
    TaskVerdict,
    ThreadPointer,
    ToolActivity,
    ToolConfirmer,
    ToolObserver,
    Turn,
    UsageSink,
)
from core.runtime.sandbox import SandboxError

log = logging.getLogger(__name__)

READY_TIMEOUT: Final = 10.0
STOP_GRACE: Final = 5.0
BACKOFF_MAX: Final = 60.0
BACKOFF_RESET: Final = 60.0
RECYCLE_PER_TICK: Final = 32
"""A worker that lived this long before crashing resets the back-off."""
NOTE_TOOLS: Final = frozenset({"remember", "recall", "forget"})


class _Crashed:
    """Put on a request's queue when its worker died."""


_CRASHED: Final = _Crashed()
_Event = protocol.FromAgent | _Crashed


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """One live agent process, for admin stats and tests."""

    tenant_id: str
    pid: int
    key_id: str
    draining: bool
    in_flight: int
    idle_seconds: float


def trim_turns(turns: Sequence[Turn], budget: int) -> list[Turn]:
    """The newest turns that fit ``budget`` tokens, starting with a user turn.

    The last turn (the new message) is always kept, even alone over budget: the provider then
    says so, rather than the agent silently answering nothing.
    """
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        cost = estimate_tokens(turn.content)
        if kept and used + cost > budget:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    while len(kept) > 1 and kept[0].role != "user":
        kept.pop(0)
    return kept


class _Worker:
    """The supervisor's side of one agent process."""

    def __init__(
        self, tenant_id: str, profile: AgentProfile, handle: WorkerHandle, now: float
    ) -> None:
        self.tenant_id = tenant_id
        self.profile = profile
        self.handle = handle
        self.pending: dict[str, asyncio.Queue[_Event]] = {}
        self.started = now
        self.last_used = now
        self.stopping = False
        self.draining = False
        self.broken = False  # killed for breaking the protocol
        self.served = 0  # requests sent to it (a fresh one is not recycled again)
        self.recycle_timer: asyncio.TimerHandle | None = None
        self.dead = asyncio.Event()
        self.reader_task: asyncio.Task[None] | None = None

    def serves(self, profile: AgentProfile) -> bool:
        """Whether this worker's key and provider are still the tenant's."""
        p = self.profile
        return (p.provider_kind, p.base_url, p.key_id) == (
            profile.provider_kind,
            profile.base_url,
            profile.key_id,
        ) and (p.api_key, p.mcp) == (profile.api_key, profile.mcp)

    async def send(self, msg: protocol.ToAgent) -> None:
        self.handle.writer.write(protocol.encode(msg))
        await self.handle.writer.drain()

    def close_input(self) -> None:
        if not self.handle.writer.is_closing():
            self.handle.writer.close()


@dataclass
class _Tenant:
    current: _Worker | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    crashes: int = 0
    next_start: float = 0.0
    active: dict[str, tuple[_Worker, str]] = field(default_factory=dict)
    locks: dict[str, tuple[asyncio.Lock, int]] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def conversation(self, conversation: str) -> AsyncIterator[None]:
        """One reply at a time per conversation (memory is read, extended, then saved)."""
        lock, users = self.locks.get(conversation, (asyncio.Lock(), 0))
        self.locks[conversation] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self.locks[conversation]
            if users == 1:
                del self.locks[conversation]  # nobody else holds or waits for it
            else:
                self.locks[conversation] = (lock, users - 1)


class AgentSupervisor:
    """Per-tenant agent processes behind the ``core.ports.Agents`` interface.

    Args:
        profiles: resolves each tenant's provider, key, model and persona.
        memory: conversation memory (encrypted by the database implementation).
        usage: receives token counts per answered request.
        key_health: told when a provider refuses a key.
        settings: the ``[agent]`` table.
        runtime_dir: parent of the agents' working directories (created 0700 if missing).
        launcher: how processes start; by default the fork-server template, or
            ``settings.command`` when the operator configured an external agent.
        clock: monotonic seconds, replaceable in tests.
        tools: the built-in tools' settings sent in ``configure`` (protocol version 2).
        notes: the tenants' long-term notes; without it no note tool is offered.
        tasks: where scheduled tasks go; without it ``schedule_task`` is not offered.
        confirm_timeout: seconds the person has to Allow an MCP tool that is not read-only.
        conversations: the ``[conversations]`` table (compaction of long conversations).
        threads: which stored conversation a chat continues (``/new``, ``/history``);
            without it each chat has one.
    """

    def __init__(
        self,
        profiles: ProfileSource,
        memory: MemoryStore,
        usage: UsageSink,
        key_health: KeyHealth,
        settings: AgentSettings,
        *,
        runtime_dir: Path,
        launcher: Launcher | None = None,
        clock: Callable[[], float] = time.monotonic,
        tools: protocol.ToolConfig | None = None,
        notes: NotesStore | None = None,
        tasks: TaskSink | None = None,
        confirm_timeout: float = 120.0,
        conversations: ConversationSettings | None = None,
        threads: ThreadPointer | None = None,
    ) -> None:
        self._confirm_timeout = confirm_timeout
        self._conversations = conversations or ConversationSettings()
        self._threads = threads
        self._tool_config = tools or protocol.ToolConfig(max_steps=settings.max_tool_steps)
        self._notes = notes
        self._tasks = tasks
        self._profiles = profiles
        self._memory = memory
        self._usage = usage
        self._key_health = key_health
        self._settings = settings
        self._runtime_dir = runtime_dir
        if launcher is None:
            launcher = (
                CommandLauncher(settings.command) if settings.command else ForkserverLauncher()
            )
        self._launcher = launcher
        self._report: sandbox.Report | None = None
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self._draining: set[_Worker] = set()
        self._ids = itertools.count(1)
        self._closed = False
        self._recycling: set[asyncio.Task[bool]] = set()
        # One reply-timed recycle at a time: the launcher starts processes one by one, and a
        # burst of replies ending together must not queue its recycles ahead of the next
        # message's own start.
        self._recycle_gate = asyncio.Semaphore(1)

    # --- the Agents port --------------------------------------------------------------------

    async def reply(
        self,
        tenant_id: str,
        conversation: str,
        text: str,
        *,
        on_tool: ToolObserver | None = None,
        on_confirm: ToolConfirmer | None = None,
        images: Sequence[ImageInput] = (),
    ) -> AsyncIterator[str]:
        """Stream the agent's answer to ``text``; raises ``AgentUnavailable`` (``ReplyFailed``).

        ``on_tool`` hears of each tool the agent runs meanwhile (start and end);
        ``on_confirm`` is asked before an MCP tool that is not read-only runs. ``images``
        go with this message only (memory keeps its text).
        """
        profile = await self._profiles.profile(tenant_id)
        offered = profile.tools if self._tool_config.max_steps > 0 else ()
        if self._notes is None:
            offered = tuple(t for t in offered if t not in NOTE_TOOLS)
        if self._tasks is None:
            offered = tuple(t for t in offered if t != "schedule_task")
        system = profile.persona
        if self._tasks is not None and "schedule_task" in offered:
            now = await self._tasks.context(tenant_id)
            system = f"{system}\n\n{now}" if system else now
        notes: tuple[protocol.Note, ...] = ()
        if self._notes is not None and NOTE_TOOLS & set(offered):
            notes = tuple(protocol.Note(n.id, n.text) for n in await self._notes.load(tenant_id))
        tenant = self._tenant(tenant_id)
        async with tenant.conversation(conversation):
            key = await self._thread(tenant_id, conversation)
            summary, history = compaction.split_summary(await self._memory.load(tenant_id, key))
            budget = profile.context_tokens - profile.max_reply_tokens - estimate_tokens(system)
            summary, history = await self._auto_compact(tenant, profile, summary, history, text)
            room = budget - (estimate_tokens(summary) if summary else 0)
            turns = trim_turns([*history, Turn("user", text)], room)
            worker = await self._acquire(tenant, profile)
            worker.served += 1
            rid = str(next(self._ids))
            queue: asyncio.Queue[_Event] = asyncio.Queue()
            worker.pending[rid] = queue
            tenant.active[conversation] = (worker, rid)
            parts: list[str] = []
            size = 0
            cap = self._settings.max_reply_chars
            reports: list[protocol.UsageReport] = []
            finished = False
            request = protocol.Request(
                id=rid,
                messages=(
                    *(ChatMessage(t.role, t.content) for t in turns[:-1]),
                    ChatMessage("user", text, tuple(images)),
                ),
                model=profile.model,
                system=compaction.system_with_summary(system, summary),
                max_tokens=profile.max_reply_tokens,
                tools=offered,
                notes=notes,
            )
            try:
                try:
                    await worker.send(request)
                except ConnectionError as exc:
                    # The process died between being chosen and being written to.
                    log.warning("agent %s: pipe broke (%s)", tenant_id, type(exc).__name__)
                    raise ReplyFailed("crashed") from None
                while True:
                    event = await queue.get()
                    if isinstance(event, protocol.Chunk):
                        piece = event.text[: cap - size]
                        size += len(piece)
                        if piece:
                            parts.append(piece)
                            yield piece
                        if len(piece) < len(event.text):
                            # Past the cap: stop reading, and recycle an agent that floods.
                            self._flooded(tenant, worker, cap)
                            finished = True  # it is being killed; no cancel to send
                            raise ReplyFailed("too_long")
                    elif isinstance(event, protocol.UsageReport):
                        # One per upstream call (a tool loop reports every step), booked
                        # after the reply: no database write inside the stream.
                        reports.append(event)
                    elif isinstance(event, protocol.ToolEvent):
                        if event.name not in offered:
                            log.warning("agent %s ran a tool it was not offered", tenant_id)
                        elif on_tool is not None:
                            await on_tool(
                                ToolActivity(
                                    event.name,
                                    event.target,
                                    done=event.state == "end",
                                    failed=event.failed,
                                )
                            )
                    elif isinstance(event, protocol.NoteEvent):
                        await self._note(tenant_id, offered, event)
                    elif isinstance(event, protocol.TaskEvent):
                        if self._tasks is None or "schedule_task" not in offered:
                            log.warning("agent %s scheduled a task unoffered", tenant_id)
                            verdict = TaskVerdict(False, "scheduled tasks are not available")
                        else:
                            verdict = await self._tasks.schedule(
                                tenant_id, conversation, event.when[:100], event.prompt[:2000]
                            )
                        # The tool waits for this (an agent that sent no ref does not: no
                        # answer); a dead pipe ends the reply below anyway.
                        if event.ref:
                            verdict_line = protocol.TaskResult(
                                rid, event.ref, verdict.ok, verdict.message
                            )
                            with contextlib.suppress(ConnectionError):
                                await worker.send(verdict_line)
                    elif isinstance(event, protocol.Confirm):
                        allow = await self._confirm(tenant_id, offered, event, on_confirm)
                        with contextlib.suppress(ConnectionError):
                            await worker.send(protocol.Confirmed(rid, event.call, allow))
                    elif isinstance(event, protocol.Done):
                        finished = True
                        break
                    elif isinstance(event, protocol.Error):
                        finished = True  # the agent closed this id; nothing to cancel
                        await self._failed(tenant, worker, event)
                    elif worker.stopping:
                        raise ReplyFailed("stopped")
                    else:
                        raise ReplyFailed("protocol" if worker.broken else "crashed")
            finally:
                worker.last_used = self._clock()
                worker.pending.pop(rid, None)
                if tenant.active.get(conversation) == (worker, rid):
                    del tenant.active[conversation]
                if not finished and not worker.dead.is_set():
                    # The reader went away (the flow was cancelled): stop paying for tokens.
                    with contextlib.suppress(ConnectionError):
                        await worker.send(protocol.Cancel(rid))
                self._maybe_drained(worker)
                self._recycle_when_idle(tenant_id, worker)
                for report in reports:
                    await self._usage.record(tenant_id, profile.model, report.input, report.output)
            answer = "".join(parts)
            # Memory keeps text only: later turns know an image was sent, not its bytes.
            said = f"[{len(images)} image(s)] {text}".strip() if images else text
            saved = [*history, Turn("user", said)]
            if answer:
                saved.append(Turn("assistant", answer))
            await self._memory.save(tenant_id, key, compaction.join_summary(summary, saved))

    async def _thread(self, tenant_id: str, conversation: str) -> str:
        """The memory key of the conversation ``conversation``'s chat continues."""
        if self._threads is None:
            return conversation
        return await self._threads.active(tenant_id, conversation)

    async def _auto_compact(
        self,
        tenant: _Tenant,
        profile: AgentProfile,
        summary: str,
        history: list[Turn],
        text: str,
    ) -> tuple[str, list[Turn]]:
        """``(summary, history)`` after compacting, if the new message overflows the budget.

        A failed summarisation keeps the turns as they were: the request is then trimmed to
        the budget, as before compaction existed, and the reply says what the provider says.
        """
        cfg = self._conversations
        if not cfg.compaction:
            return summary, history
        budget = profile.context_tokens - profile.max_reply_tokens
        budget -= estimate_tokens(profile.persona)
        keep = cfg.keep_recent_tokens or budget // 2
        split = compaction.plan_compaction(summary, [*history, Turn("user", text)], budget, keep)
        if split is None:
            return summary, history
        try:
            made = await self._summarise(tenant, profile, summary, split.old)
        except ReplyFailed as exc:
            log.warning("agent %s: compaction failed (%s)", profile.tenant_id, exc.reason)
            return summary, history
        if not made:
            log.warning("agent %s: compaction gave an empty summary", profile.tenant_id)
            return summary, history
        log.info("agent %s: compacted %d turns", profile.tenant_id, len(split.old))
        return made, split.recent[:-1]

    async def compact(self, tenant_id: str, conversation: str) -> Compacted | None:
        """Summarise the whole conversation now (``/compact``); None when there is nothing.

        Raises ``AgentUnavailable`` (``ReplyFailed``) when the model cannot be asked.
        """
        profile = await self._profiles.profile(tenant_id)
        tenant = self._tenant(tenant_id)
        async with tenant.conversation(conversation):
            key = await self._thread(tenant_id, conversation)
            summary, history = compaction.split_summary(await self._memory.load(tenant_id, key))
            if not history:
                return None
            made = await self._summarise(tenant, profile, summary, history)
            if not made:
                raise ReplyFailed("empty_summary")
            await self._memory.save(tenant_id, key, compaction.join_summary(made, []))
            return Compacted(
                turns=len(history),
                before_tokens=compaction.cost(summary, history),
                after_tokens=estimate_tokens(made),
            )

    async def _summarise(
        self, tenant: _Tenant, profile: AgentProfile, summary: str, turns: Sequence[Turn]
    ) -> str:
        """The summary of ``summary`` and ``turns``: one request, or one per part that fits.

        Turns too many for one request are summarised oldest part first, each part with the
        summary so far, so no turn is dropped unread.
        """
        cfg = self._conversations
        limit = max(profile.context_tokens - cfg.summary_max_tokens, 256) * 4
        made = summary
        for part in compaction.passes(turns, limit, cfg.summary_max_tokens * 4):
            made = await self._summarise_once(tenant, profile, made, part, limit)
            if not made:
                return ""
        return made

    async def _summarise_once(
        self,
        tenant: _Tenant,
        profile: AgentProfile,
        summary: str,
        turns: Sequence[Turn],
        limit: int,
    ) -> str:
        """One summarisation request through the tenant's agent (its key, or the proxy).

        No tools are offered; the usage is booked like a reply's, so the managed cap counts it.
        """
        cfg = self._conversations
        worker = await self._acquire(tenant, profile)
        rid = str(next(self._ids))
        queue: asyncio.Queue[_Event] = asyncio.Queue()
        worker.pending[rid] = queue
        request = protocol.Request(
            id=rid,
            messages=(ChatMessage("user", compaction.transcript(summary, turns, limit)),),
            model=profile.model,
            system=compaction.SUMMARY_SYSTEM,
            max_tokens=cfg.summary_max_tokens,
        )
        parts: list[str] = []
        size = 0
        cap = cfg.summary_max_tokens * 8  # a summary far past its token bound is cut
        reports: list[protocol.UsageReport] = []
        finished = False
        try:
            try:
                await worker.send(request)
            except ConnectionError:
                raise ReplyFailed("crashed") from None
            while True:
                event = await queue.get()
                if isinstance(event, protocol.Chunk):
                    piece = event.text[: cap - size]
                    size += len(piece)
                    parts.append(piece)
                elif isinstance(event, protocol.UsageReport):
                    reports.append(event)
                elif isinstance(event, protocol.Done):
                    finished = True
                    break
                elif isinstance(event, protocol.Error):
                    finished = True
                    await self._failed(tenant, worker, event)
                elif isinstance(event, _Crashed):
                    raise ReplyFailed("stopped" if worker.stopping else "crashed")
                else:
                    log.warning("agent %s: unexpected event in a summary", profile.tenant_id)
        finally:
            worker.last_used = self._clock()
            worker.pending.pop(rid, None)
            if not finished and not worker.dead.is_set():
                with contextlib.suppress(ConnectionError):
                    await worker.send(protocol.Cancel(rid))
            self._maybe_drained(worker)
            self._recycle_when_idle(profile.tenant_id, worker)
            for report in reports:
                await self._usage.record(
                    profile.tenant_id, profile.model, report.input, report.output
                )
        return "".join(parts).strip()

    async def _note(
        self, tenant_id: str, offered: Sequence[str], event: protocol.NoteEvent
    ) -> None:
        """Store (or drop) a note the agent took, within the configured bounds."""
        cfg = self._tool_config
        if self._notes is None or not NOTE_TOOLS & set(offered):
            log.warning("agent %s sent a note without the note tools", tenant_id)
            return
        if not 0 < len(event.note) <= 32 or not event.note.isalnum():
            log.warning("agent %s sent a note with a malformed id", tenant_id)
            return
        if event.op == "forget":
            await self._notes.forget(tenant_id, event.note)
            return
        text = event.text.strip()[: cfg.max_note_chars]
        if text and not await self._notes.add(tenant_id, event.note, text):
            log.info("note of %s not kept (limit or duplicate)", tenant_id)

    async def _confirm(
        self,
        tenant_id: str,
        offered: Sequence[str],
        event: protocol.Confirm,
        on_confirm: ToolConfirmer | None,
    ) -> bool:
        """The person's Allow (True) or Deny; no answer within the timeout is a Deny."""
        if event.name not in offered or not event.name.startswith("mcp:"):
            log.warning("agent %s asked to confirm a tool it was not offered", tenant_id)
            return False
        if on_confirm is None:
            return False  # nobody to ask (a scheduled task): such tools do not run
        ask = ConfirmRequest(event.name[4:], event.tool[:200], event.arguments[:500])
        try:
            async with asyncio.timeout(self._confirm_timeout):
                return await on_confirm(ask)
        except TimeoutError:
            return False

    async def cancel(self, tenant_id: str, conversation: str) -> bool:
        """Stop a reply in progress; the partial answer stays as it was shown."""
        tenant = self._tenants.get(tenant_id)
        entry = tenant.active.get(conversation) if tenant else None
        if entry is None:
            return False
        worker, rid = entry
        try:
            await worker.send(protocol.Cancel(rid))
        except ConnectionError:
            return False
        return True

    async def reset(self, tenant_id: str, conversation: str) -> None:
        await self._memory.clear(tenant_id, conversation)

    async def reconfigure(self, tenant_id: str) -> None:
        """Swap to the tenant's new key/provider with no downtime (model/persona need nothing)."""
        tenant = self._tenants.get(tenant_id)
        if tenant is None or tenant.current is None:
            return  # the next message starts a worker with the new settings anyway
        try:
            profile = await self._profiles.profile(tenant_id)
        except AgentUnavailable:
            await self.forget(tenant_id)
            return
        async with tenant.lock:
            old = tenant.current
            if old is None or old.serves(profile):
                return
            tenant.current = await self._start(tenant_id, profile)
            self._retire(old)

    async def forget(self, tenant_id: str) -> None:
        tenant = self._tenants.pop(tenant_id, None)
        if tenant is None:
            return
        workers = [w for w in self._draining if w.tenant_id == tenant_id]
        if tenant.current is not None:
            workers.append(tenant.current)
        await asyncio.gather(*(self._stop(w, kill=True) for w in workers))

    # --- maintenance ------------------------------------------------------------------------

    async def warm(self) -> None:
        """Start the agent template now (call once at bot start-up), so no agent pays for it."""
        await self._launcher.warm()

    def sandbox_report(self) -> sandbox.Report:
        """The sandbox layers agents get on this machine under ``[agent] sandbox`` (cached)."""
        if self._report is None:
            self._report = sandbox.report_for(self._settings)
        return self._report

    async def stop_idle(self, now: float | None = None) -> int:
        """Stop agents idle for ``idle_timeout_seconds``; returns how many stopped."""
        now = self._clock() if now is None else now
        limit = self._settings.idle_timeout_seconds
        idle = [
            t.current
            for t in self._tenants.values()
            if t.current is not None
            and not t.current.pending
            and now - t.current.last_used >= limit
        ]
        for worker in idle:
            self._detach(worker)
        await asyncio.gather(*(self._stop(w) for w in idle))
        if idle:
            log.info("stopped %d idle agents", len(idle))
        recycled = await self._recycle(now)
        if recycled:
            log.info("recycled %d idle agents", recycled)
        return len(idle)

    async def _recycle(self, now: float) -> int:
        """Replace agents idle ``recycle_after_idle_seconds`` since a reply with fresh forks.

        A reply leaves ~2.5 MiB of the template's pages copied into the agent (reference
        counts written on shared objects, heap the allocator keeps); a fresh fork has none
        of it. Agents are stateless between requests (the supervisor sends the history), so
        the swap is the key rotation's: the new one is started before the old one retires.
        """
        after = self._settings.recycle_after_idle_seconds
        if after <= 0 or self._closed:
            return 0
        done = 0
        for tenant_id, tenant in list(self._tenants.items()):
            if done >= RECYCLE_PER_TICK:
                break  # the rest next tick: a tick's forks stay a fraction of a second
            old = tenant.current
            if old is None or old.pending or not old.served or now - old.last_used < after:
                continue
            done += await self._recycle_one(tenant_id, old, old.last_used)
        return done

    async def _recycle_one(self, tenant_id: str, old: _Worker, used: float) -> bool:
        """Swap ``old`` for a fresh fork if it is still the tenant's, idle since ``used``."""
        tenant = self._tenants.get(tenant_id)
        if tenant is None or self._closed:
            return False
        async with tenant.lock:
            if (
                tenant.current is not old
                or old.pending
                or old.dead.is_set()
                or old.last_used != used
                or self._closed
            ):
                return False  # a message took it meanwhile, or it is gone
            try:
                fresh = await self._start(tenant_id, old.profile)
            except ReplyFailed as exc:
                log.warning("agent for %s not recycled (%s)", tenant_id, exc.reason)
                return False
            if (
                self._closed
                or self._tenants.get(tenant_id) is not tenant
                or tenant.current is not old
            ):
                # Forgotten (or shut down) while the fork started: the fresh one must not
                # outlive it.
                await self._stop(fresh, kill=True)
                return False
            fresh.last_used = old.last_used  # still stopped at the same idle timeout
            tenant.current = fresh
            self._retire(old)
            return True

    def _recycle_when_idle(self, tenant_id: str, worker: _Worker) -> None:
        """Recycle ``worker`` ``recycle_after_idle_seconds`` after this reply if nothing uses it.

        Timed from the reply, not from the idle job's tick (every
        ``idle_check_interval_seconds``), so an agent carries a reply's copied pages for
        seconds, not minutes. The default (5 s) is the HTTP client's keep-alive expiry: by
        then the agent's pooled provider connection has closed anyway, so the fresh one
        loses nothing the old one still had.
        """
        after = self._settings.recycle_after_idle_seconds
        if after <= 0 or self._closed or worker.pending or worker.draining or not worker.served:
            return
        if worker.recycle_timer is not None:
            worker.recycle_timer.cancel()
        used = worker.last_used

        async def recycle() -> bool:
            async with self._recycle_gate:
                return await self._recycle_one(tenant_id, worker, used)

        def due() -> None:
            worker.recycle_timer = None
            task = asyncio.ensure_future(recycle())
            self._recycling.add(task)
            task.add_done_callback(self._recycled)

        worker.recycle_timer = asyncio.get_running_loop().call_later(after, due)

    def _recycled(self, task: asyncio.Task[bool]) -> None:
        self._recycling.discard(task)
        if not task.cancelled() and task.exception() is None and task.result():
            log.info("recycled 1 idle agents")

    async def idle_job(self) -> None:
        """The APScheduler job (every ``[agent] idle_check_interval_seconds``; see ``App.jobs``)."""
        await self.stop_idle()

    def status(self) -> list[AgentStatus]:
        """Every live agent process (current and draining)."""
        now = self._clock()
        workers = [t.current for t in self._tenants.values() if t.current is not None]
        return [
            AgentStatus(
                w.tenant_id,
                w.handle.pid,
                w.profile.key_id,
                w.draining,
                len(w.pending),
                now - w.last_used,
            )
            for w in [*workers, *self._draining]
        ]

    async def aclose(self) -> None:
        """Stop every agent (graceful, then killed after a grace period)."""
        self._closed = True
        workers = [t.current for t in self._tenants.values() if t.current is not None]
        workers += list(self._draining)
        for worker in workers:
            if worker.recycle_timer is not None:
                worker.recycle_timer.cancel()
        # A recycle under way sees the supervisor closed and stops the fork it started.
        await asyncio.gather(*self._recycling, return_exceptions=True)
        self._tenants.clear()
        await asyncio.gather(*(self._stop(w) for w in workers))
        self._launcher.close()

    # --- internals --------------------------------------------------------------------------

    def _tenant(self, tenant_id: str) -> _Tenant:
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            tenant = self._tenants[tenant_id] = _Tenant()
        return tenant

    async def _acquire(self, tenant: _Tenant, profile: AgentProfile) -> _Worker:
        async with tenant.lock:
            current = tenant.current
            if current is not None and not current.dead.is_set():
                if current.serves(profile):
                    current.last_used = self._clock()
                    return current
                tenant.current = None
                self._retire(current)
            now = self._clock()
            if now < tenant.next_start:
                raise ReplyFailed("restarting", retry_after=tenant.next_start - now)
            await self._make_room()
            try:
                tenant.current = await self._start(profile.tenant_id, profile)
            except ReplyFailed:
                self._crashed(tenant)
                raise
            return tenant.current

    def _tool_ports(self, profile: AgentProfile) -> tuple[int, ...]:
        """The TCP ports the tools offered to ``profile`` connect to, for the sandbox."""
        if self._tool_config.max_steps <= 0:
            return ()
        ports: set[int] = set()
        if "web_fetch" in profile.tools:
            ports.update((80, 443))
        if "web_search" in profile.tools and self._tool_config.search_url:
            ports.add(sandbox.connect_ports(self._tool_config.search_url, ())[0])
        for server in profile.mcp:
            # Each MCP server's port, for this tenant's agent only (its client runs there).
            if f"mcp:{server.name}" in profile.tools:
                ports.add(sandbox.connect_ports(server.url, ())[0])
        return tuple(sorted(ports))

    async def _start(self, tenant_id: str, profile: AgentProfile) -> _Worker:
        if self._closed:
            raise ReplyFailed("stopped")
        self._runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        workdir = self._runtime_dir / hashlib.sha256(tenant_id.encode()).hexdigest()[:24]
        report = self.sandbox_report()
        if report.refused:
            log.error("agent for %s not started: %s", tenant_id, report.line())
            raise ReplyFailed("sandbox")
        try:
            handle = await self._launcher.launch(
                workdir,
                sandbox.spec_for(
                    self._settings,
                    self.sandbox_report(),
                    tenant_id,
                    profile.base_url,
                    workdir,
                    self._tool_ports(profile),
                ),
            )
        except SandboxError as exc:
            log.error("agent for %s not started: sandbox layer %s", tenant_id, exc)
            raise ReplyFailed("sandbox") from None
        except OSError as exc:
            # fork/exec refused: out of memory or processes, a missing agent command.
            log.error("agent for %s could not be launched (%s)", tenant_id, exc.strerror)
            raise ReplyFailed("start_failed") from None
        worker = _Worker(tenant_id, profile, handle, self._clock())
        s = self._settings
        try:
            await worker.send(
                protocol.Configure(
                    provider_kind=profile.provider_kind,
                    base_url=profile.base_url,
                    api_key=profile.api_key,
                    workdir=str(workdir),
                    request_timeout=float(s.request_timeout_seconds),
                    memory_limit_mb=s.memory_limit_mb,
                    max_open_files=s.max_open_files,
                    tools=self._tool_config,
                    mcp=tuple(m for m in profile.mcp if f"mcp:{m.name}" in profile.tools),
                    confirm_timeout=self._confirm_timeout,
                )
            )
            async with asyncio.timeout(READY_TIMEOUT):
                line = await handle.reader.readline()
            ready = protocol.decode(line) if line else None
            if not isinstance(ready, protocol.Ready):
                raise ProtocolError("the agent did not answer configure with ready")
        except (TimeoutError, ProtocolError, ConnectionError, ValueError) as exc:
            log.warning("agent for %s did not start (%s)", tenant_id, type(exc).__name__)
            # A hung agent is killed now; one that is exiting gets to finish writing its log.
            await _end(handle, grace=0.0 if isinstance(exc, TimeoutError) else STOP_GRACE)
            raise ReplyFailed("start_failed") from None
        log.info("agent for %s started (pid %d, key %s)", tenant_id, handle.pid, profile.key_id)
        worker.reader_task = asyncio.create_task(self._read(worker))
        return worker

    async def _read(self, worker: _Worker) -> None:
        reader = worker.handle.reader
        try:
            while line := await reader.readline():
                if not line.strip():
                    continue
                msg = protocol.decode(line)
                rid = getattr(msg, "id", None)
                queue = worker.pending.get(rid) if isinstance(rid, str) else None
                if queue is not None:
                    queue.put_nowait(msg)  # type: ignore[arg-type]
        except (ProtocolError, ValueError, ConnectionError) as exc:
            # ValueError: a line over MAX_LINE. Either way the agent is no longer trustworthy.
            log.warning("agent %s broke the protocol (%s)", worker.tenant_id, exc)
            worker.broken = True
            worker.handle.kill()
        worker.dead.set()
        crashed = not worker.stopping
        if crashed:
            # Book the crash before anyone waits on the exit, so the next message sees it.
            tenant = self._tenants.get(worker.tenant_id)
            if tenant is not None and tenant.current is worker:
                tenant.current = None
                if self._clock() - worker.started >= BACKOFF_RESET:
                    tenant.crashes = 0  # it ran fine for a while: this is a fresh failure
                self._crashed(tenant)
        for queue in worker.pending.values():
            queue.put_nowait(_CRASHED)
        code = await worker.handle.wait()
        self._draining.discard(worker)
        if crashed:
            log.warning("agent for %s exited unexpectedly (code %s)", worker.tenant_id, code)

    def _crashed(self, tenant: _Tenant) -> None:
        AGENT_CRASHES.inc()
        delay = 0.0 if tenant.crashes == 0 else min(2.0 ** (tenant.crashes - 1), BACKOFF_MAX)
        tenant.crashes += 1
        tenant.next_start = self._clock() + delay

    async def _failed(self, tenant: _Tenant, worker: _Worker, event: protocol.Error) -> None:
        log.warning("agent for %s: provider error %s", worker.tenant_id, event.code)
        if event.code == "invalid_key":
            await self._key_health.key_dead(worker.tenant_id, worker.profile.key_id, event.code)
            if tenant.current is worker:
                tenant.current = None
                self._retire(worker)
        raise ReplyFailed(event.code, retry_after=event.retry_after)

    def _flooded(self, tenant: _Tenant, worker: _Worker, cap: int) -> None:
        """Kill ``worker``: it sent a reply over ``cap`` characters.

        The next message gets a fresh one. Not a crash: no back-off (asking was no fault).
        """
        log.warning(
            "agent for %s sent a reply over %d characters; cut there and the agent restarted",
            worker.tenant_id,
            cap,
        )
        if tenant.current is worker:
            tenant.current = None
        worker.stopping = True
        self._draining.discard(worker)
        worker.handle.kill()
        worker.close_input()

    def _detach(self, worker: _Worker) -> None:
        tenant = self._tenants.get(worker.tenant_id)
        if tenant is not None and tenant.current is worker:
            tenant.current = None

    def _retire(self, worker: _Worker) -> None:
        """Let ``worker`` finish its requests, then end its input so it exits."""
        worker.draining = True
        self._draining.add(worker)
        self._maybe_drained(worker)

    def _maybe_drained(self, worker: _Worker) -> None:
        if worker.draining and not worker.pending and not worker.stopping:
            worker.stopping = True
            worker.close_input()
            asyncio.get_running_loop().create_task(self._reap(worker))

    async def _reap(self, worker: _Worker) -> None:
        await _end(worker.handle, grace=STOP_GRACE)
        self._draining.discard(worker)
        log.info("agent for %s (pid %d) drained and exited", worker.tenant_id, worker.handle.pid)

    async def _stop(self, worker: _Worker, *, kill: bool = False) -> None:
        worker.stopping = True
        self._draining.discard(worker)
        if kill:
            worker.handle.kill()
        worker.close_input()
        await _end(worker.handle, grace=STOP_GRACE)
        if worker.reader_task is not None:
            await worker.reader_task

    async def _make_room(self) -> None:
        live = [t.current for t in self._tenants.values() if t.current is not None]
        excess = len(live) + len(self._draining) + 1 - self._settings.max_live_agents
        if excess <= 0:
            return
        idle = sorted((w for w in live if not w.pending), key=lambda w: w.last_used)
        if len(idle) < excess:
            raise ReplyFailed("busy")
        victims = idle[:excess]
        for worker in victims:
            self._detach(worker)
            log.info("stopping agent for %s to stay within max_live_agents", worker.tenant_id)
        await asyncio.gather(*(self._stop(w) for w in victims))


async def _end(handle: WorkerHandle, *, grace: float) -> None:
    """Wait up to ``grace`` seconds for the process to exit, then kill it."""
    try:
        async with asyncio.timeout(grace):
            await handle.wait()
            return
    except TimeoutError:
        pass  # still running after the grace period: kill below
    handle.kill()
    await handle.wait()
