"""The durable inbox, the write-behind queue and crash recovery, against a real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from bot import texts
from bot.recovery import Recovery
from core.bookkeeping import DeferredMemory, WriteBehind
from core.chat import ChatRef, Event, EventKind, Outcome, Platform, UserRef
from core.db import Database, upgrade
from core.db.models import InboxRow
from core.inbox import DatabaseInbox
from core.ports import ManualClock
from core.runtime.ports import Turn
from core.secret import Secret
from core.vault import MasterKeyRing
from tests.canaries import anthropic_key
from tests.fakes.messenger import FakeMessenger


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    await upgrade(db_url)
    database = Database(db_url)
    yield database
    await database.dispose()


RING = MasterKeyRing({1: bytes(range(32))}, primary=1)


def _event(n: int, text: str = "hi", platform: Platform = Platform.TELEGRAM) -> Event:
    return Event(
        EventKind.MESSAGE,
        UserRef(platform, "42", "Ada"),
        ChatRef(platform, "42", is_direct=True),
        text=text,
        message_id=str(n),
        event_id=f"{platform.value}:update:{n}",
    )


def _inbox(db: Database, clock: ManualClock, writer: WriteBehind) -> DatabaseInbox:
    return DatabaseInbox(db, clock, lambda: RING, writer, lease_seconds=10)


async def test_a_delivery_is_new_once_across_processes_and_its_text_is_sealed(
    db: Database,
) -> None:
    clock, writer = ManualClock(), WriteBehind()
    one, two = _inbox(db, clock, writer), _inbox(db, clock, writer)
    key = anthropic_key()
    fresh = await one.record([_event(1, key), _event(2), _event(1, key)])
    assert [e.event_id for e in fresh] == ["telegram:update:1", "telegram:update:2"]
    assert await two.record([_event(1, key), _event(3)]) == [_event(3)]
    async with db.session() as s:
        rows = (await s.scalars(select(InboxRow))).all()
    assert all(key.encode() not in (r.body or b"") for r in rows)
    assert all(key not in str(r.meta) for r in rows)
    one.finish(_event(1))
    await writer.drained()
    async with db.session() as s:
        done = await s.get(InboxRow, "telegram:update:1")
    assert done is not None and done.state == "done" and done.body is None


async def test_an_orphan_is_claimed_by_one_process_only_after_its_lease(db: Database) -> None:
    clock, writer = ManualClock(), WriteBehind()
    dead, a, b = (_inbox(db, clock, writer) for _ in range(3))
    await dead.record([_event(1, "resume me")])
    assert await a.claim_orphans(["telegram"]) == []  # the lease still runs
    clock.advance(11)
    claims = await asyncio.gather(a.claim_orphans(["telegram"]), b.claim_orphans(["telegram"]))
    won = [c for claim in claims for c in claim]
    assert len(won) == 1
    orphan = won[0]
    assert orphan.resumable and orphan.attempts == 2
    assert orphan.event.text == "resume me" and orphan.event.message_id == "1"
    # The winner's heartbeat keeps it: nobody else takes it later.
    clock.advance(9)
    await a.renew()
    await b.renew()
    clock.advance(5)
    assert await b.claim_orphans(["telegram"]) == []
    assert await a.claim_orphans(["telegram"]) == []


async def test_recovery_replays_telegram_and_tells_the_others_to_resend(db: Database) -> None:
    clock, writer = ManualClock(), WriteBehind()
    dead, live = _inbox(db, clock, writer), _inbox(db, clock, writer)
    secret = Event(
        EventKind.SECRET,
        UserRef(Platform.DISCORD, "7"),
        ChatRef(Platform.DISCORD, "dm7", is_direct=True),
        secret=Secret(anthropic_key()),
        event_id="discord:interaction:9",
    )
    await dead.record([_event(1, "again"), _event(2, "slack one", Platform.SLACK), secret])
    clock.advance(11)
    replayed: list[Event] = []

    async def dispatch(event: Event) -> Outcome:
        replayed.append(event)
        return Outcome()

    messengers = {
        p: FakeMessenger(p) for p in (Platform.TELEGRAM, Platform.SLACK, Platform.DISCORD)
    }
    recovery = Recovery(
        live,
        messengers,
        dispatch,
        resume_attempts=1,
        platforms=lambda: list(messengers),
    )
    await recovery.run()
    await recovery.drain()
    await writer.drained()
    assert [e.text for e in replayed] == ["again"]
    assert messengers[Platform.SLACK].texts() == [texts.INBOX_RESEND]
    assert messengers[Platform.DISCORD].texts() == [texts.INBOX_RESEND]
    async with db.session() as s:
        states = (await s.scalars(select(InboxRow.state))).all()
    assert set(states) == {"done"}


async def test_the_write_behind_retries_a_locked_database_and_memory_reads_unsaved_turns() -> None:
    saved: list[list[Turn]] = []
    failures = [OperationalError("UPDATE", {}, Exception("database is locked"))] * 2

    class Store:
        async def load(self, tenant_id: str, conversation: str) -> list[Turn]:
            return saved[-1] if saved else []

        async def save(self, tenant_id: str, conversation: str, turns: list[Turn]) -> None:
            if failures:
                raise failures.pop()
            saved.append(list(turns))

        async def clear(self, tenant_id: str, conversation: str) -> None:
            saved.clear()

    writer = WriteBehind(first_delay=0.01)
    memory = DeferredMemory(Store(), writer)
    await memory.save("t", "c", [Turn("user", "hello")])
    assert await memory.load("t", "c") == [Turn("user", "hello")]  # before it is written
    await writer.drained()
    assert saved == [[Turn("user", "hello")]] and writer.retried == 2
    await writer.close()


async def test_two_first_data_keys_at_once_both_count_their_wrap(db: Database) -> None:
    """The first sign-ups race on ``kek_usage``: one upsert each, neither fails (PostgreSQL)."""
    from core.credentials import Credentials
    from core.db.models import KekUsageRow
    from core.vault import Vault

    credentials = Credentials(db, Vault(RING), ManualClock())
    async with db.session() as first, db.session() as second:
        await first.begin()
        await credentials._count_wrap(first, 1)  # inserted, not committed
        if db.is_sqlite:
            await first.commit()  # SQLite has one writer: the second waits its turn anyway
        racing = asyncio.create_task(_count_in(credentials, second))
        await asyncio.sleep(0.3)  # the second waits on the first's uncommitted row
        if not db.is_sqlite:
            await first.commit()
        await asyncio.wait_for(racing, 10)
    async with db.session() as s:
        assert await s.scalar(select(KekUsageRow.wraps).where(KekUsageRow.version == 1)) == 2


async def _count_in(credentials: object, session: object) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    from core.credentials import Credentials

    assert isinstance(credentials, Credentials) and isinstance(session, AsyncSession)
    async with session.begin():
        await credentials._count_wrap(session, 1)
