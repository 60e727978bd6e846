"""The router: every event passes here, one conversation at a time, into exactly one flow.

It owns the cross-cutting rules: the leak guard runs first on every message, then the
per-person rate limit, then the per-conversation lock, the admin gate, and the one catch-all
that logs (redacted) and answers with a friendly text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from bot import texts
from bot.flows import (
    account,
    admin,
    agent,
    billing,
    cancel,
    conversations,
    keys,
    media,
    tasks,
    whoami,
)
from bot.flows.base import EPHEMERAL_PLATFORMS, Refusal, Services, Turn
from core.chat import Event, EventKind, Outcome, Reply, button_owner_tag
from core.flowstate import FlowState
from core.keys import continues_leak, find_leaks, is_key_fragment
from core.metrics import LEAK_GUARD_HITS, UPDATES

log = logging.getLogger("byokbot.router")

Handler = Callable[[Turn], Awaitable[Outcome | None]]
ButtonHandler = Callable[[Turn, list[str]], Awaitable[Outcome | None]]

COMMANDS: dict[str, Handler] = {
    "start": account.handle_start,
    "help": account.handle_help,
    "plan": account.handle_plan,
    "status": account.handle_status,
    "pause": account.handle_pause,
    "resume": account.handle_resume,
    "delete": account.handle_delete,
    "link": account.handle_link,
    "key": keys.handle_key,
    "model": agent.handle_model,
    "persona": agent.handle_persona,
    "reset": agent.handle_reset,
    "stop": agent.handle_stop,
    "usage": agent.handle_usage,
    "memory": agent.handle_memory,
    "compact": conversations.handle_compact,
    "new": conversations.handle_new,
    "history": conversations.handle_history,
    "tasks": tasks.handle_tasks,
    "timezone": tasks.handle_timezone,
    "admin": admin.handle_admin,
    "cancel": cancel.handle_cancel,
    "whoami": whoami.handle_whoami,
}

LOCK_FREE_COMMANDS = frozenset({"stop"})

BUTTONS: dict[str, ButtonHandler] = {
    "plan": account.on_plan_button,
    "del": account.on_delete_button,
    "prov": keys.on_provider_button,
    "model": agent.on_model_button,
    "mem": agent.on_memory_button,
    "task": tasks.on_task_button,
    "conv": conversations.on_history_button,
    "cancel": cancel.on_cancel_button,
    "acc": billing.on_access_button,
}

# Payments are answered at once: no rate limit, no conversation lock (Telegram gives a
# pre-checkout query 10 s), and they carry no text for the leak guard.
PAYMENT_KINDS = frozenset({EventKind.PAYMENT_CHECK, EventKind.PAYMENT})


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    warned: bool = False


@dataclass(slots=True)
class RateLimiter:
    """A token bucket per person: ``per_minute`` messages, bursting up to the same number."""

    per_minute: int
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def allow(self, key: str) -> tuple[bool, bool]:
        """(allowed, first refusal since the bucket ran dry)."""
        now = time.monotonic()
        rate = self.per_minute / 60.0
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) > 100_000:  # bound memory: forget idle people
                self._buckets = {k: v for k, v in self._buckets.items() if now - v.at < 60}
            b = self._buckets[key] = _Bucket(tokens=float(self.per_minute), at=now)
        b.tokens = min(float(self.per_minute), b.tokens + (now - b.at) * rate)
        b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            b.warned = False
            return True, False
        first = not b.warned
        b.warned = True
        return False, first


# How long a conversation's last message is kept to catch a key split over two messages.
SPLIT_WINDOW_SECONDS = 120.0


class _RecentTexts:
    """The last message text per conversation, in memory for a short window only.

    Never persisted: it exists so the leak guard can read two consecutive messages together.
    """

    def __init__(self, window: float = SPLIT_WINDOW_SECONDS, max_items: int = 100_000) -> None:
        self._window = window
        self._max = max_items
        self._texts: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def swap(self, key: str, text: str) -> str:
        """Remember ``text`` for ``key``; return the one before it if still within the window."""
        now = time.monotonic()
        while self._texts:
            oldest, (at, _) = next(iter(self._texts.items()))
            if now - at < self._window and len(self._texts) < self._max:
                break
            del self._texts[oldest]
        previous = self._texts.pop(key, None)
        self._texts[key] = (now, text)
        if previous is None or now - previous[0] >= self._window:
            return ""
        return previous[1]


class _Locks:
    """One asyncio lock per conversation, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def __call__(self, key: str) -> _Held:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        await lock.acquire()
        return _Held(self, key, lock)

    def _release(self, key: str, lock: asyncio.Lock) -> None:
        lock.release()
        _, users = self._locks[key]
        if users <= 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)


@dataclass(slots=True)
class _Held:
    owner: _Locks
    key: str
    lock: asyncio.Lock

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        self.owner._release(self.key, self.lock)


def _expired(state: FlowState, now: datetime) -> bool:
    return state.expires_at is not None and state.expires_at <= now


class Router:
    """Maps events to flows. ``dispatch`` is what every adapter calls."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._rate = RateLimiter(services.config.core.messages_per_minute)
        self._locks = _Locks()
        self._dm_noted: set[str] = set()
        self._recent = _RecentTexts()

    async def dispatch(self, event: Event) -> Outcome:
        """Handle one event; never raises (the catch-all answers the person)."""
        UPDATES.labels(event.user.platform.value, event.kind.value).inc()
        try:
            return await self._dispatch(event)
        except Exception:
            # The one catch-all: the record passes the redaction filter; the event's text is
            # deliberately not logged.
            log.exception(
                "turn failed: platform=%s kind=%s command=%s",
                event.user.platform.value,
                event.kind.value,
                event.command,
            )
            await self._answer_safely(event, texts.OOPS)
            return Outcome(refused=True)

    async def _answer_safely(self, event: Event, text: str) -> None:
        messenger = self.services.messengers.get(event.user.platform)
        if messenger is None:
            return
        try:
            await messenger.respond(event, Reply(text=text))
        except Exception:
            log.exception("could not deliver the error answer on %s", event.user.platform.value)

    def _leaked(self, event: Event) -> bool:
        """The leak guard's reading of a message or command: does it carry a key?

        The text (folded: hidden format characters, look-alikes), the link targets it hides,
        a lone word that starts a key, and a key begun in the message just before it.
        """
        previous = self._recent.swap(event.conversation_key, event.text)
        return bool(
            find_leaks(event.text)
            or any(find_leaks(a) for a in event.args)
            or any(find_leaks(link) for link in event.links)
            or is_key_fragment(event.text)
            or continues_leak(previous, event.text)
        )

    async def _dispatch(self, event: Event) -> Outcome:
        if event.kind in PAYMENT_KINDS:
            tenant = await self.services.tenants.find(event.user.identity)
            turn = Turn(event, self.services, tenant)
            if event.kind is EventKind.PAYMENT_CHECK:
                return await billing.on_payment_check(turn)
            return await billing.on_payment(turn)
        leaked = event.kind in (EventKind.MESSAGE, EventKind.COMMAND) and self._leaked(event)
        if event.kind is EventKind.MESSAGE and not event.addressed and not leaked:
            return Outcome(handled=False)  # group chatter not meant for us
        allowed, first_refusal = self._rate.allow(event.user.identity)
        if not allowed and event.kind not in (EventKind.SECRET, EventKind.SECRET_CANCELLED):
            if first_refusal:
                await self._answer_safely(event, texts.SLOW_DOWN)
            return Outcome(refused=True)
        if event.kind is EventKind.COMMAND and event.command in LOCK_FREE_COMMANDS:
            # /stop must reach a reply that is streaming under the conversation's lock.
            return await self._turn(event, leaked)
        lock = await self._locks(event.conversation_key)
        async with lock:
            return await self._turn(event, leaked)

    async def _turn(self, event: Event, leaked: bool = False) -> Outcome:
        tenant = await self.services.tenants.find(event.user.identity)
        turn = Turn(event, self.services, tenant)
        try:
            result = await self._route(turn, leaked)
        except Refusal as r:
            if event.kind is EventKind.SECRET and event.via_modal:
                return Outcome(secret_error=r.text, refused=True, secret_retry=r.secret_retry)
            await turn.say(r.text, sensitive=r.sensitive)
            return Outcome(refused=True, secret_retry=r.secret_retry)
        return result or Outcome()

    async def _route(self, turn: Turn, leaked: bool = False) -> Outcome | None:
        event = turn.event
        s = self.services
        if turn.tenant is not None and event.chat.is_direct:
            await self._note_dm(turn)
        if event.kind is EventKind.SECRET:
            return await keys.on_secret_event(turn)
        if event.kind is EventKind.SECRET_CANCELLED:
            return await keys.on_secret_cancelled(turn)
        if event.kind is EventKind.BUTTON:
            return await self._route_button(turn)
        limit = s.config.core.max_message_chars
        if event.kind is EventKind.MESSAGE:
            readable = bool(media.readable_files(turn))
            if event.attachments and not event.text.strip() and not readable:
                # A sticker or video alone: nothing the agent can read (nor a key).
                raise Refusal(texts.MEDIA_ONLY.format(what=texts.media_names(event.attachments)))
            awaiting = None
            if event.chat.is_direct:
                state = await s.flow_states.get(event.user.identity, expired=True)
                if state is not None and state.flow == "keys" and state.step == "await_secret":
                    if keys.answers_prompt(turn, state):
                        # Past its time too: the key flow deletes it and says it expired.
                        return await keys.on_dm_secret(turn, state)
                    if not _expired(state, s.clock.now()):
                        awaiting = state  # not the key: an ordinary message, the request stays open
            if leaked or (
                # Where only the form takes the key, what looks like it never reaches the agent.
                awaiting is not None and keys.looks_like_awaited_key(turn, awaiting)
            ):
                LEAK_GUARD_HITS.labels(event.user.platform.value).inc()
                return await keys.on_leak(turn)
            if len(event.text) > limit:
                raise Refusal(texts.TOO_LONG.format(length=len(event.text), limit=limit))
            if not event.text.strip() and not readable:
                raise Refusal(texts.EMPTY_MESSAGE)
            if awaiting is not None:
                await keys.note_still_open(turn, awaiting)
            return await agent.handle_message(turn)
        # COMMAND
        if leaked:
            LEAK_GUARD_HITS.labels(event.user.platform.value).inc()
            return await keys.on_leak(turn)
        if len(event.text) > limit:
            raise Refusal(texts.TOO_LONG.format(length=len(event.text), limit=limit))
        handler = COMMANDS.get(event.command)
        if handler is None:
            raise Refusal(texts.UNKNOWN_COMMAND.format(command=event.command[:40]))
        return await handler(turn)

    async def _route_button(self, turn: Turn) -> Outcome | None:
        tag, sep, payload = turn.event.payload.partition("|")
        if not sep:
            raise Refusal(texts.STALE_BUTTON)
        if tag != button_owner_tag(turn.user):
            raise Refusal(
                texts.NOT_YOUR_BUTTON, sensitive=turn.user.platform in EPHEMERAL_PLATFORMS
            )
        action, *args = payload.split(":")
        handler = BUTTONS.get(action)
        if handler is None:
            raise Refusal(texts.STALE_BUTTON)
        return await handler(turn, args)

    async def _note_dm(self, turn: Turn) -> None:
        identity = turn.user.identity
        if identity not in self._dm_noted:
            await self.services.tenants.note_dm(turn.user, turn.chat.id)
            self._dm_noted.add(identity)
