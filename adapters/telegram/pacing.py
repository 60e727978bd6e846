"""The Telegram outbound scheduler: one per bot, owning Telegram's flood limits.

Every Bot API request passes through ``FloodScheduler.process_request`` (python-telegram-bot's
rate-limiter hook). Message-producing requests take a slot from sliding windows (the whole bot,
the chat, and the group) before they go out, so nothing is sent that Telegram would answer
with a 429. Waiters are served by priority, then in arrival order (fair across chats):

* ``HIGH`` (the default): replies, notices, a stream's first visible text and its final text;
* ``LOW``: a stream's intermediate drafts and edits, which must also leave a reserve of each
  window free for HIGH requests, so a busy bot slows its edits rather than its first answers.

Server errors (5xx) and timeouts are retried with back-off. A request that creates a message
(``sendMessage``...) is retried only when it surely never reached Telegram: a lost answer
would otherwise show the message twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

import httpx
from telegram.error import BadRequest, NetworkError, RetryAfter, TimedOut
from telegram.ext import BaseRateLimiter

from core.metrics import PLATFORM_RATE_LIMITED

log = logging.getLogger(__name__)


class Priority(IntEnum):
    HIGH = 0
    LOW = 1


# Requests Telegram counts against its message limits (chat actions, deletions, callback and
# checkout answers are not throttled: they are small and often time-critical).
MESSAGE_METHODS: Final = frozenset(
    {
        "sendMessage",
        "sendMessageDraft",
        "sendPhoto",
        "sendDocument",
        "sendMediaGroup",
        "copyMessage",
        "forwardMessage",
        "editMessageText",
        "editMessageCaption",
        "editMessageReplyMarkup",
    }
)
# Requests that create a message: never repeated after an answer that may have been lost.
CREATING: Final = frozenset(
    {"sendMessage", "sendPhoto", "sendDocument", "sendMediaGroup", "copyMessage", "forwardMessage"}
)
# getUpdates has its own retry loop in the adapter (its 409 means something else).
_BYPASS: Final = frozenset({"getUpdates"})


@dataclass(frozen=True, slots=True)
class Window:
    """At most ``limit`` requests in any ``seconds``; LOW ones leave ``reserve`` for HIGH."""

    limit: int
    seconds: float
    reserve: int = 0


@dataclass(frozen=True, slots=True)
class FloodLimits:
    """Telegram's documented limits, with a margin: the windows are a little longer."""

    bot: Window = Window(30, 1.05, reserve=8)
    chat: Window = Window(3, 3.3, reserve=1)  # about 1 a second, small bursts
    group: Window = Window(20, 61.0, reserve=6)  # 20 a minute in a group


# A stream that took its slot itself (``try_acquire``) marks its next request as granted.
_GRANTED: contextvars.ContextVar[bool] = contextvars.ContextVar("telegram_slot", default=False)


@contextlib.contextmanager
def granted() -> Iterator[None]:
    """The next request made inside already holds its slot (taken by the stream itself)."""
    token = _GRANTED.set(True)
    try:
        yield
    finally:
        _GRANTED.reset(token)


@dataclass(eq=False)
class _Waiter:
    priority: Priority
    seq: int
    keys: tuple[tuple[str, str], ...]
    future: asyncio.Future[None]


class FloodScheduler(BaseRateLimiter[dict[str, Any]]):
    """Sliding-window flood control, priority queue and retries for one bot.

    Args:
        limits: the windows (tests pass small ones).
        retries: how many times a 429, a 5xx or a timeout is retried.
        clock: monotonic seconds (unit tests pass a manual clock and call ``dispatch``).
        backoff: first back-off in seconds after a 5xx or timeout (doubles, at most 8 s).
    """

    def __init__(
        self,
        limits: FloodLimits | None = None,
        *,
        retries: int = 3,
        clock: Callable[[], float] = time.monotonic,
        backoff: float = 0.25,
    ) -> None:
        self.limits = limits or FloodLimits()
        self.retries = retries
        self._clock = clock
        self._backoff = backoff
        self._sent: dict[tuple[str, str], collections.deque[float]] = {}
        self._waiters: list[_Waiter] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self.rate_limited = 0  # 429s met (should stay 0)
        self.retried = 0  # 5xx/timeouts retried

    async def initialize(self) -> None:
        return None

    async def shutdown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for w in self._waiters:
            if not w.future.done():
                w.future.cancel()
        self._waiters.clear()

    # ----- windows -------------------------------------------------------------------------

    def _keys(self, chat_id: str | None) -> tuple[tuple[str, str], ...]:
        if chat_id is None or chat_id == "":
            return (("bot", ""),)
        # Telegram's groups and channels have negative ids.
        if chat_id.startswith("-"):
            return (("bot", ""), ("chat", chat_id), ("group", chat_id))
        return (("bot", ""), ("chat", chat_id))

    def _window(self, kind: str) -> Window:
        limits = self.limits
        return limits.bot if kind == "bot" else limits.chat if kind == "chat" else limits.group

    def _wait_time(
        self, keys: tuple[tuple[str, str], ...], priority: Priority, now: float
    ) -> float:
        """0 when every window has room now, else seconds until the tightest one may."""
        wait = 0.0
        for key in keys:
            w = self._window(key[0])
            sent = self._sent.get(key)
            if not sent:
                continue
            while sent and sent[0] <= now - w.seconds:
                sent.popleft()
            room = w.limit - (w.reserve if priority is Priority.LOW else 0)
            if len(sent) >= room:
                # The oldest that must expire before one more fits.
                idx = len(sent) - room
                wait = max(wait, sent[idx] + w.seconds - now)
        return wait

    def _take(self, keys: tuple[tuple[str, str], ...], now: float) -> None:
        for key in keys:
            self._sent.setdefault(key, collections.deque()).append(now)

    def busy(self) -> float:
        """How many LOW requests wait: streams use it to slow their edits."""
        return float(sum(1 for w in self._waiters if w.priority is Priority.LOW))

    def try_acquire(self, chat_id: str | None, priority: Priority = Priority.LOW) -> bool:
        """Take a slot now if one is free and nobody of the same or higher priority waits."""
        keys = self._keys(chat_id)
        if any(w.priority <= priority for w in self._waiters):
            return False
        now = self._clock()
        if self._wait_time(keys, priority, now) > 0:
            return False
        self._take(keys, now)
        return True

    async def acquire(self, chat_id: str | None, priority: Priority = Priority.HIGH) -> None:
        """Wait for a slot in every window of ``chat_id``."""
        self._seq += 1
        future = asyncio.get_running_loop().create_future()
        waiter = _Waiter(priority, self._seq, self._keys(chat_id), future)
        self._waiters.append(waiter)
        self.dispatch()
        try:
            await future
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif future.done() and not future.cancelled():
                pass  # granted just before the cancel: the slot stays used (conservative)
            raise

    def dispatch(self) -> None:
        """Grant every waiter that fits now, best priority and oldest first; re-arm the timer."""
        now = self._clock()
        self._waiters.sort(key=lambda w: (w.priority, w.seq))
        next_wait: float | None = None
        granted: list[_Waiter] = []
        for w in self._waiters:
            if w.future.done():
                granted.append(w)
                continue
            wait = self._wait_time(w.keys, w.priority, now)
            if wait <= 0:
                self._take(w.keys, now)
                w.future.set_result(None)
                granted.append(w)
            else:
                next_wait = wait if next_wait is None else min(next_wait, wait)
        for w in granted:
            self._waiters.remove(w)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if next_wait is not None:
            self._timer = asyncio.get_running_loop().call_later(next_wait + 0.001, self.dispatch)

    # ----- python-telegram-bot's hook -------------------------------------------------------

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: dict[str, Any] | None,
    ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        if endpoint in _BYPASS:
            return await callback(*args, **kwargs)
        limited = endpoint in MESSAGE_METHODS
        chat = data.get("chat_id")
        chat_id = None if chat is None else str(chat)
        granted = _GRANTED.get()
        _GRANTED.set(False)
        priority = Priority(int((rate_limit_args or {}).get("priority", Priority.HIGH)))
        attempt = 0
        while True:
            if limited and not granted:
                await self.acquire(chat_id, priority)
            granted = False
            try:
                return await callback(*args, **kwargs)
            except RetryAfter as exc:
                self.rate_limited += 1
                PLATFORM_RATE_LIMITED.labels("telegram").inc()
                if attempt >= self.retries:
                    raise
                delay = exc.retry_after
                seconds = delay.total_seconds() if not isinstance(delay, int | float) else delay
                log.warning("telegram: %s answered 429; retrying in %.1f s", endpoint, seconds)
                await asyncio.sleep(float(seconds))
            except BadRequest:
                raise  # a refusal (python-telegram-bot files it under NetworkError)
            except NetworkError as exc:
                if attempt >= self.retries or not _may_repeat(endpoint, exc):
                    raise
                self.retried += 1
                log.info(
                    "telegram: %s failed (%s); retry %d", endpoint, type(exc).__name__, attempt + 1
                )
                await asyncio.sleep(min(self._backoff * 2**attempt, 8.0))
            attempt += 1
            priority = Priority.HIGH  # a retry must not queue behind fresh edits


def _may_repeat(endpoint: str, exc: NetworkError) -> bool:
    """Whether sending ``endpoint`` again cannot show something twice."""
    if endpoint not in CREATING:
        return True  # edits, drafts, deletions, chat actions: repeating is harmless
    if not isinstance(exc, TimedOut):
        # Telegram answered (a 5xx) or the connection failed: the message was not created.
        return True
    # A timeout before the request left (connecting, waiting for a pooled connection) is safe;
    # after it left, the answer may have been lost with the message already in the chat.
    cause = exc.__cause__
    return isinstance(cause, httpx.ConnectTimeout | httpx.PoolTimeout) or (
        "Pool timeout" in str(exc)
    )
