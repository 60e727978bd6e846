"""A platform-neutral outbound scheduler: sliding windows, priorities, fair order.

Each platform adapter owns one ``OutboundScheduler`` holding that platform's limits as named
windows (``"global"``, ``"channel"``, ``"update"``...). A request names the windows it counts
against as keys (``("channel", "C123")``) and takes a slot before it goes out, so nothing is
sent that the platform would refuse. A slot occupies its windows while in flight and is
counted from the moment its request finished: the platform counts a request when it arrives,
somewhere between our send and its answer, so the windows the platform sees are never fuller
than ours. Waiters are served by priority, then in arrival order (fair across chats):

* ``HIGH``: replies, notices, a stream's first visible text and its final text;
* ``LOW``: a stream's intermediate edits, which also leave each window's ``reserve`` free for
  HIGH requests, so a busy bot slows its edits rather than its first answers.

Coalescing is the streams' part: a stream waits for its slot and then sends its latest text.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

T = TypeVar("T")


class Priority(IntEnum):
    HIGH = 0
    LOW = 1


@dataclass(frozen=True, slots=True)
class Window:
    """At most ``limit`` requests in any ``seconds``; LOW ones leave ``reserve`` for HIGH."""

    limit: int
    seconds: float
    reserve: int = 0

    @property
    def low_share(self) -> float:
        """Seconds per LOW request when this window is shared by one stream."""
        return self.seconds / max(self.limit - self.reserve, 1)


Key = tuple[str, str]


class Slot:
    """Room in every window of one request, held from its grant until the request finished."""

    __slots__ = ("_owner", "keys", "open")

    def __init__(self, owner: OutboundScheduler, keys: tuple[Key, ...]) -> None:
        self._owner, self.keys, self.open = owner, keys, True

    def release(self) -> None:
        """The request is over (answered, failed or never made): the windows count it from now."""
        if self.open:
            self.open = False
            self._owner._release(self)


@dataclass(eq=False)
class _Waiter:
    priority: Priority
    seq: int
    keys: tuple[Key, ...]
    future: asyncio.Future[Slot]


class OutboundScheduler:
    """Sliding-window limits and a priority queue for one bot on one platform.

    Args:
        windows: the limits by window kind; every key's kind must be one of them.
        clock: monotonic seconds.
    """

    def __init__(
        self, windows: Mapping[str, Window], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.windows = dict(windows)
        self._clock = clock
        self._sent: dict[Key, collections.deque[float]] = {}
        self._inflight: dict[Key, int] = {}
        self._waiters: list[_Waiter] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for w in self._waiters:
            if not w.future.done():
                w.future.cancel()
        self._waiters.clear()

    def _wait_time(self, keys: tuple[Key, ...], priority: Priority, now: float) -> float:
        """0 when every window has room now, else seconds until the tightest one may.

        ``inf`` when only a request still in flight can make room: its end re-dispatches.
        """
        wait = 0.0
        for key in keys:
            w = self.windows[key[0]]
            sent = self._sent.get(key)
            while sent and sent[0] <= now - w.seconds:
                sent.popleft()
            if sent is not None and not sent and key not in self._inflight:
                del self._sent[key]  # forget idle chats
                sent = None
            done = len(sent) if sent else 0
            count = done + self._inflight.get(key, 0)
            room = w.limit - (w.reserve if priority is Priority.LOW else 0)
            if count >= room:
                idx = count - room  # the finished one that must expire first, oldest first
                if sent is None or idx >= done:
                    return math.inf
                wait = max(wait, sent[idx] + w.seconds - now)
        return wait

    def _occupy(self, keys: tuple[Key, ...]) -> Slot:
        for key in keys:
            self._inflight[key] = self._inflight.get(key, 0) + 1
        return Slot(self, keys)

    def _release(self, slot: Slot) -> None:
        now = self._clock()
        for key in slot.keys:
            left = self._inflight.get(key, 1) - 1
            if left > 0:
                self._inflight[key] = left
            else:
                self._inflight.pop(key, None)
            self._sent.setdefault(key, collections.deque()).append(now)
        if self._waiters:
            self.dispatch()

    def try_acquire(self, keys: tuple[Key, ...], priority: Priority = Priority.LOW) -> Slot | None:
        """A slot now if one is free and nobody of the same or higher priority waits."""
        if any(w.priority <= priority for w in self._waiters):
            return None
        if self._wait_time(keys, priority, self._clock()) > 0:
            return None
        return self._occupy(keys)

    async def acquire(self, keys: tuple[Key, ...], priority: Priority = Priority.HIGH) -> Slot:
        """Wait for a slot in every window of ``keys``; the caller releases it."""
        self._seq += 1
        future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(priority, self._seq, keys, future)
        self._waiters.append(waiter)
        self.dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if future.done() and not future.cancelled():
                future.result().release()  # granted just before the cancel
            raise

    @contextlib.asynccontextmanager
    async def slot(
        self, keys: tuple[Key, ...], priority: Priority = Priority.HIGH
    ) -> AsyncIterator[Slot]:
        """Hold a slot for the requests inside; released (and counted) on leaving."""
        granted = await self.acquire(keys, priority)
        try:
            yield granted
        finally:
            granted.release()

    def dispatch(self) -> None:
        """Grant every waiter that fits now, best priority and oldest first; re-arm the timer."""
        now = self._clock()
        self._waiters.sort(key=lambda w: (w.priority, w.seq))
        next_wait: float | None = None
        served: list[_Waiter] = []
        for w in self._waiters:
            if w.future.done():
                served.append(w)
                continue
            wait = self._wait_time(w.keys, w.priority, now)
            if wait <= 0:
                w.future.set_result(self._occupy(w.keys))
                served.append(w)
            elif wait < math.inf:
                next_wait = wait if next_wait is None else min(next_wait, wait)
        for w in served:
            self._waiters.remove(w)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if next_wait is not None:
            self._timer = asyncio.get_running_loop().call_later(next_wait + 0.001, self.dispatch)


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    retryable: Callable[[BaseException], bool],
    retries: int = 3,
    backoff: float = 0.25,
    on_retry: Callable[[BaseException, int], None] | None = None,
) -> T:
    """Await ``call()`` again after an error ``retryable`` accepts, backing off (at most 8 s)."""
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            if attempt >= retries or not retryable(exc):
                raise
            if on_retry is not None:
                on_retry(exc, attempt + 1)
            await asyncio.sleep(min(backoff * 2**attempt, 8.0))
            attempt += 1
