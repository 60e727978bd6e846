"""The Telegram outbound scheduler: one per bot, owning Telegram's flood limits.

Every Bot API request passes through ``FloodScheduler.process_request`` (python-telegram-bot's
rate-limiter hook). Message-producing requests take a slot from sliding windows (the whole bot,
the chat, and the group) before they go out, so nothing is sent that Telegram would answer
with a 429. A slot is counted from the moment its request *finished* (and occupies its windows
while in flight): Telegram counts a request when it arrives, which is somewhere between our
send and its answer, so however late a request travels the windows Telegram sees are never
fuller than ours. Waiters are served by priority, then in arrival order (fair across chats):

* ``HIGH`` (the default): replies, notices, a stream's first visible text and its final text;
* ``LOW``: a stream's intermediate drafts and edits, which must also leave a reserve of each
  window free for HIGH requests, so a busy bot slows its edits rather than its first answers.

Server errors (5xx) and timeouts are retried with back-off. A request that creates a message
(``sendMessage``...) is retried only when it surely never reached Telegram: a lost answer
would otherwise show the message twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Final

import httpx
from telegram.error import BadRequest, NetworkError, RetryAfter, TimedOut
from telegram.ext import BaseRateLimiter

from core.metrics import PLATFORM_RATE_LIMITED, PLATFORM_RETRIES
from core.pacing import Key, OutboundScheduler, Priority, Slot, Window

__all__ = ["FloodLimits", "FloodScheduler", "Priority", "Slot", "Window", "granted"]

log = logging.getLogger(__name__)


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


BOT: Final = Window(30, 1.05, reserve=8)
CHAT: Final = Window(3, 3.3, reserve=1)  # about 1 a second, small bursts
GROUP: Final = Window(20, 61.0, reserve=6)  # 20 a minute in a group


@dataclass(frozen=True, slots=True)
class FloodLimits:
    """Telegram's documented limits, with a margin: the windows are a little longer."""

    bot: Window = BOT
    chat: Window = CHAT
    group: Window = GROUP

    @classmethod
    def of(
        cls, *, chat_burst: int, chat_seconds: float, group_per_minute: int, bot_per_second: int
    ) -> FloodLimits:
        """Limits from ``[telegram]``; the defaults there give exactly the class defaults.

        Each window keeps the same share for first and final texts as Telegram's does.
        """
        return cls(
            bot=Window(bot_per_second, 1.05, reserve=round(bot_per_second * 8 / 30)),
            chat=Window(chat_burst, chat_seconds, reserve=1 if chat_burst > 1 else 0),
            group=Window(group_per_minute, 61.0, reserve=round(group_per_minute * 0.3)),
        )


# A stream that took its slot itself (``try_acquire``) hands it to its next request.
_GRANTED: contextvars.ContextVar[Slot | None] = contextvars.ContextVar(
    "telegram_slot", default=None
)


@contextlib.contextmanager
def granted(slot: Slot) -> Iterator[None]:
    """The next message request made inside uses ``slot``; released on leaving if unused."""
    token = _GRANTED.set(slot)
    try:
        yield
    finally:
        _GRANTED.reset(token)
        slot.release()


class FloodScheduler(BaseRateLimiter[dict[str, Any]]):
    """Telegram's windows on the platform-neutral scheduler, its priority queue and retries.

    A request counts against the whole bot, its chat, and its group (negative chat ids).

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
        self._backoff = backoff
        self._windows = OutboundScheduler(
            {"bot": self.limits.bot, "chat": self.limits.chat, "group": self.limits.group},
            clock=clock,
        )
        self.rate_limited = 0  # 429s met (should stay 0)
        self.retried = 0  # 5xx/timeouts retried

    @property
    def _clock(self) -> Callable[[], float]:
        return self._windows._clock

    @_clock.setter
    def _clock(self, clock: Callable[[], float]) -> None:
        self._windows._clock = clock

    async def initialize(self) -> None:
        return None

    async def shutdown(self) -> None:
        self._windows.close()

    @staticmethod
    def _keys(chat_id: str | None) -> tuple[Key, ...]:
        if chat_id is None or chat_id == "":
            return (("bot", ""),)
        # Telegram's groups and channels have negative ids.
        if chat_id.startswith("-"):
            return (("bot", ""), ("chat", chat_id), ("group", chat_id))
        return (("bot", ""), ("chat", chat_id))

    def try_acquire(self, chat_id: str | None, priority: Priority = Priority.LOW) -> Slot | None:
        """A slot now if one is free and nobody of the same or higher priority waits.

        Hand it to the request with ``granted(slot)``.
        """
        return self._windows.try_acquire(self._keys(chat_id), priority)

    async def acquire(self, chat_id: str | None, priority: Priority = Priority.HIGH) -> Slot:
        """Wait for a slot in every window of ``chat_id``; the caller releases it."""
        return await self._windows.acquire(self._keys(chat_id), priority)

    def dispatch(self) -> None:
        """Grant every waiter that fits now, best priority and oldest first; re-arm the timer."""
        self._windows.dispatch()

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
            try:
                return await callback(*args, **kwargs)
            except RetryAfter:
                self._count_429()
                raise
        limited = endpoint in MESSAGE_METHODS
        chat = data.get("chat_id")
        chat_id = None if chat is None else str(chat)
        slot: Slot | None = None
        if limited:
            slot = _GRANTED.get()
            _GRANTED.set(None)  # for this request only
        priority = Priority(int((rate_limit_args or {}).get("priority", Priority.HIGH)))
        attempt = 0
        while True:
            if limited and slot is None:
                slot = await self.acquire(chat_id, priority)
            try:
                try:
                    return await callback(*args, **kwargs)
                finally:
                    # Counted from its end (answered or not), before any back-off below.
                    if slot is not None:
                        slot.release()
                        slot = None
            except RetryAfter as exc:
                self._count_429()
                if attempt >= self.retries:
                    raise
                PLATFORM_RETRIES.labels("telegram").inc()
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
                PLATFORM_RETRIES.labels("telegram").inc()
                log.info(
                    "telegram: %s failed (%s); retry %d", endpoint, type(exc).__name__, attempt + 1
                )
                await asyncio.sleep(min(self._backoff * 2**attempt, 8.0))
            attempt += 1
            priority = Priority.HIGH  # a retry must not queue behind fresh edits

    def _count_429(self) -> None:
        # The one place a Telegram 429 is counted: every request passes through here, and the
        # adapter's error wrapping does not count again.
        self.rate_limited += 1
        PLATFORM_RATE_LIMITED.labels("telegram").inc()


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
