"""Bookkeeping off the reply path: writes that may wait, retried until the database takes them.

A reply must never wait for, or fail on, a locked or restarting database once the answer is
shown. Usage, conversation memory and the inbox's "done" marks go through ``WriteBehind``: one
worker runs them in order, retrying transient database errors with back-off, so a lock held for
seconds delays them and loses nothing. ``DeferredMemory`` keeps a conversation's unsaved turns
in memory meanwhile, so the next message of that conversation already sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from core.runtime.ports import MemoryStore, Turn, UsageSink

log = logging.getLogger("byokbot.bookkeeping")

Write = Callable[[], Awaitable[None]]


def transient(exc: BaseException) -> bool:
    """Whether a failed write is worth retrying: locked, restarting or unreachable database."""
    if isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


@dataclass(slots=True)
class _Item:
    label: str
    write: Write
    tries: int = 0


class WriteBehind:
    """An ordered queue of writes, run by one task, each retried while its error is transient.

    ``first_delay`` doubles up to ``max_delay`` between retries of the same write. A write that
    fails for any other reason is logged and dropped (retrying a bug forever would block every
    write behind it). ``close`` waits up to ``grace`` seconds for the queue to empty.
    """

    def __init__(self, *, first_delay: float = 0.2, max_delay: float = 5.0) -> None:
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._first = first_delay
        self._max = max_delay
        self.retried = 0
        self._behind = 0

    def submit(self, label: str, write: Write) -> None:
        """Queue ``write`` (an async callable run later); returns at once."""
        self._queue.append(_Item(label, write))
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def drained(self) -> None:
        """Wait until every queued write has been done (or dropped)."""
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._behind:
                    log.info("bookkeeping: caught up (%d write attempt(s) retried)", self._behind)
                    self._behind = 0
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._queue[0]
            try:
                await item.write()
            except Exception as exc:
                if not transient(exc):
                    log.error("bookkeeping: %s failed and was dropped", item.label, exc_info=exc)
                    self._queue.popleft()
                    continue
                item.tries += 1
                self.retried += 1
                self._behind += 1
                delay = min(self._first * 2 ** (item.tries - 1), self._max)
                log.warning(
                    "bookkeeping: %s could not be written (%s); retrying in %.1f s (%d queued)",
                    item.label,
                    type(exc).__name__,
                    delay,
                    len(self._queue),
                )
                await asyncio.sleep(delay)
                continue
            self._queue.popleft()
            if item.tries:
                log.info("bookkeeping: %s written after %d retries", item.label, item.tries)

    async def close(self, grace: float = 10.0) -> None:
        """Give queued writes ``grace`` seconds, then stop; what is left is logged, not hidden."""
        if self._queue:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        if self._queue:
            log.error(
                "bookkeeping: %d write(s) not done at shutdown: %s",
                len(self._queue),
                ", ".join(sorted({i.label for i in self._queue})),
            )
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class DeferredUsage:
    """A ``UsageSink`` whose writes go through ``WriteBehind``."""

    def __init__(self, sink: UsageSink, writer: WriteBehind) -> None:
        self._sink = sink
        self._writer = writer

    async def record(
        self, tenant_id: str, model: str, input_tokens: int, output_tokens: int
    ) -> None:
        async def write() -> None:
            await self._sink.record(tenant_id, model, input_tokens, output_tokens)

        self._writer.submit("usage", write)


class DeferredMemory:
    """A ``MemoryStore`` that saves through ``WriteBehind`` and reads its own unsaved turns.

    Only the newest unsaved state of a conversation is written (a later save replaces an
    earlier one still queued); ``clear`` forgets the unsaved state and clears at once.
    """

    def __init__(self, store: MemoryStore, writer: WriteBehind) -> None:
        self._store = store
        self._writer = writer
        self._unsaved: dict[tuple[str, str], list[Turn]] = {}

    async def load(self, tenant_id: str, conversation: str) -> list[Turn]:
        unsaved = self._unsaved.get((tenant_id, conversation))
        if unsaved is not None:
            return list(unsaved)
        return await self._store.load(tenant_id, conversation)

    async def save(self, tenant_id: str, conversation: str, turns: Sequence[Turn]) -> None:
        key = (tenant_id, conversation)
        self._unsaved[key] = list(turns)

        async def write() -> None:
            turns = self._unsaved.get(key)
            if turns is None:
                return  # cleared, or a later write already saved the newest state
            try:
                await self._store.save(tenant_id, conversation, turns)
            except Exception as exc:
                if not transient(exc) and self._unsaved.get(key) is turns:
                    del self._unsaved[key]  # dropped: reads go to the store again
                raise
            if self._unsaved.get(key) is turns:
                del self._unsaved[key]

        self._writer.submit("memory", write)

    async def clear(self, tenant_id: str, conversation: str) -> None:
        self._unsaved.pop((tenant_id, conversation), None)
        # A save already running would land after the clear and bring the turns back.
        await self._writer.drained()
        await self._store.clear(tenant_id, conversation)
