"""A chat's conversations: ``/new`` starts another, ``/history`` lists and switches back.

A chat's first conversation is stored under the chat's own memory key (as before this module
existed); the n-th after it under ``key#n``. ``agent_threads`` holds only which one the chat
continues and the highest number used — no text: the turns (and the first words ``/history``
shows) are read through the memory store, encrypted with the tenant's data key, and shredded
with it on delete.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from core.db import Database
from core.db.models import MemoryRow, ThreadRow
from core.ports import Clock
from core.runtime.compaction import SUMMARY_ROLE
from core.runtime.ports import MemoryStore, Turn


def thread_key(conversation: str, number: int) -> str:
    """The memory key of conversation ``number`` of a chat."""
    return conversation if number == 0 else f"{conversation}#{number}"


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    """One stored conversation of a chat, for ``/history``."""

    number: int
    updated_at: datetime | None  # None: started and not written to yet
    first_words: str
    turns: int
    current: bool


def first_words(turns: list[Turn], limit: int = 40) -> str:
    """The start of the first thing the person said (or of the summary, once compacted)."""
    first = next((t for t in turns if t.role == "user"), None)
    first = first or next((t for t in turns if t.role == SUMMARY_ROLE), None)
    if first is None:
        return ""
    text = " ".join(first.content.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def stamp(at: datetime | None) -> float:
    return at.timestamp() if at is not None else 0.0


class DatabaseThreads:
    """The ``ThreadPointer`` of the supervisor and what ``/new`` and ``/history`` change."""

    def __init__(self, db: Database, memory: MemoryStore, clock: Clock) -> None:
        self._db = db
        self._memory = memory
        self._clock = clock

    async def _row(self, tenant_id: str, conversation: str) -> tuple[int, int]:
        async with self._db.session() as s:
            row = await s.get(ThreadRow, (tenant_id, conversation))
            return (row.active, row.last) if row is not None else (0, 0)

    async def active(self, tenant_id: str, conversation: str) -> str:
        active, _ = await self._row(tenant_id, conversation)
        return thread_key(conversation, active)

    async def current_turns(self, tenant_id: str, conversation: str) -> list[Turn]:
        return await self._memory.load(tenant_id, await self.active(tenant_id, conversation))

    async def start_new(self, tenant_id: str, conversation: str) -> bool:
        """Switch the chat to a new, empty conversation; False when the current one is empty."""
        if not await self.current_turns(tenant_id, conversation):
            return False
        await self._set(tenant_id, conversation, new=True)
        return True

    async def switch(self, tenant_id: str, conversation: str, number: int) -> bool:
        """Continue conversation ``number``; False when the chat has none by that number."""
        _, last = await self._row(tenant_id, conversation)
        if not 0 <= number <= last:
            return False
        if number and not await self._memory.load(tenant_id, thread_key(conversation, number)):
            return False
        await self._set(tenant_id, conversation, number=number)
        return True

    async def _set(
        self, tenant_id: str, conversation: str, *, new: bool = False, number: int = 0
    ) -> None:
        async with self._db.session() as s, s.begin():
            row = await s.get(ThreadRow, (tenant_id, conversation))
            if row is None:
                row = ThreadRow(
                    tenant_id=tenant_id,
                    conversation=conversation,
                    active=0,
                    last=0,
                    updated_at=self._clock.now(),
                )
                s.add(row)
            if new:
                row.last += 1
                row.active = row.last
            else:
                row.active = number
            row.updated_at = self._clock.now()

    async def recent(self, tenant_id: str, conversation: str, limit: int) -> list[ThreadInfo]:
        """The chat's ``limit`` most recently used conversations, newest first."""
        active, last = await self._row(tenant_id, conversation)
        keys = {thread_key(conversation, n): n for n in range(last + 1)}
        async with self._db.session() as s:
            rows = (
                await s.execute(
                    select(MemoryRow.conversation, MemoryRow.updated_at).where(
                        MemoryRow.tenant_id == tenant_id, MemoryRow.conversation.in_(keys)
                    )
                )
            ).all()
        touched: dict[int, datetime | None] = {keys[k]: at for k, at in rows}
        # The newest few may not be written yet (memory is saved just after a reply).
        for n in (active, *range(max(0, last - limit), last + 1)):
            touched.setdefault(n, None)
        # Unwritten ones first (the newest numbers first), then by last use.
        order = sorted(
            touched,
            key=lambda n: (touched[n] is not None, -(stamp(touched[n]) if touched[n] else n)),
        )
        found: list[ThreadInfo] = []
        for number in order:
            turns = await self._memory.load(tenant_id, thread_key(conversation, number))
            if not turns and number != active:
                continue  # emptied by /reset: nothing to go back to
            found.append(
                ThreadInfo(
                    number=number,
                    updated_at=touched[number],
                    first_words=first_words(turns),
                    turns=sum(1 for t in turns if t.role != SUMMARY_ROLE),
                    current=number == active,
                )
            )
            if len(found) >= limit:
                break
        return found
