"""SECURITY.md test 9: intake tokens — reuse, expiry, another user, wrong tenant, attempts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from core.chat import Platform, UserRef
from core.db import Database, upgrade
from core.db.models import IntakeSessionRow
from core.errors import IntakeExpired, IntakeLocked, IntakeNotYours, IntakeUsed
from core.flowstate import FlowStates
from core.intake import Intake, IntakePurpose
from core.ports import ManualClock
from core.scheduler import expire_intake_sessions

ADA = UserRef(Platform.TELEGRAM, "1", "Ada")
EVE = UserRef(Platform.TELEGRAM, "2", "Eve")


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    await upgrade(db_url)
    database = Database(db_url)
    # Intake sessions reference tenants; two bare tenant rows are enough here.
    from datetime import UTC, datetime

    from core.db.models import TenantRow

    now = datetime.now(UTC)
    async with database.session() as s, s.begin():
        for tid in ("t-ada", "t-eve"):
            s.add(
                TenantRow(
                    id=tid,
                    plan="byok",
                    status="trial",
                    status_reason="",
                    paused=False,
                    persona="",
                    created_at=now,
                    updated_at=now,
                )
            )
    yield database
    await database.dispose()


async def _open(intake: Intake, user: UserRef = ADA, tenant: str = "t-ada") -> tuple[str, object]:
    return await intake.open(
        tenant_id=tenant,
        user=user,
        provider="anthropic",
        purpose=IntakePurpose.ADD,
        origin_chat_id="dm",
    )


async def test_only_a_hash_of_the_token_is_stored(db: Database) -> None:
    intake = Intake(db, ManualClock(), ttl_seconds=600, max_attempts=3)
    token, _ = await _open(intake)
    assert len(token) >= 32  # 192 random bits, url-safe
    async with db.session() as s:
        row = await s.scalar(select(IntakeSessionRow))
    assert row is not None
    assert token not in (row.token_hash, row.id)
    assert len(row.token_hash) == 64


async def test_single_use(db: Database) -> None:
    intake = Intake(db, ManualClock(), ttl_seconds=600, max_attempts=3)
    token, _ = await _open(intake)
    ticket = await intake.by_token(token, ADA, tenant_id="t-ada")
    await intake.consume(ticket)
    with pytest.raises(IntakeUsed):
        await intake.by_token(token, ADA, tenant_id="t-ada")
    with pytest.raises(IntakeUsed):
        await intake.consume(ticket)


async def test_concurrent_consumption_succeeds_once(db: Database) -> None:
    intake = Intake(db, ManualClock(), ttl_seconds=600, max_attempts=3)
    token, _ = await _open(intake)
    ticket = await intake.by_token(token, ADA, tenant_id="t-ada")
    results = await asyncio.gather(
        *(intake.consume(ticket) for _ in range(8)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, IntakeUsed) for r in results if r is not None)


async def test_expiry_and_the_scheduler_job(db: Database) -> None:
    clock = ManualClock()
    intake = Intake(db, clock, ttl_seconds=600, max_attempts=3)
    token, _ = await _open(intake)
    clock.advance(599)
    await intake.by_token(token, ADA, tenant_id="t-ada")
    clock.advance(2)
    with pytest.raises(IntakeExpired):
        await intake.by_token(token, ADA, tenant_id="t-ada")
    assert await intake.pending_for(ADA) is None
    assert await expire_intake_sessions(intake, FlowStates(db, clock)) == 1
    assert await expire_intake_sessions(intake, FlowStates(db, clock)) == 0
    async with db.session() as s:
        assert await s.scalar(select(IntakeSessionRow.status)) == "expired"


async def test_another_user_or_tenant_is_refused(db: Database) -> None:
    intake = Intake(db, ManualClock(), ttl_seconds=600, max_attempts=3)
    token, _ = await _open(intake)
    with pytest.raises(IntakeNotYours):
        await intake.by_token(token, EVE, tenant_id="t-ada")
    with pytest.raises(IntakeNotYours):
        await intake.by_token(token, ADA, tenant_id="t-eve")
    with pytest.raises(IntakeExpired):
        await intake.by_token("not-a-token", ADA, tenant_id="t-ada")
    # The real owner can still use it: refusals for others do not burn the session.
    await intake.by_token(token, ADA, tenant_id="t-ada")


async def test_too_many_attempts_lock_the_session(db: Database) -> None:
    intake = Intake(db, ManualClock(), ttl_seconds=600, max_attempts=3)
    token, _ = await _open(intake)
    ticket = await intake.by_token(token, ADA, tenant_id="t-ada")
    assert await intake.failed_attempt(ticket) == 2
    assert await intake.failed_attempt(ticket) == 1
    assert await intake.failed_attempt(ticket) == 0
    with pytest.raises(IntakeLocked):
        await intake.by_token(token, ADA, tenant_id="t-ada")


async def test_a_new_session_cancels_the_old_one(db: Database) -> None:
    intake = Intake(db, ManualClock(), ttl_seconds=600, max_attempts=3)
    old, _ = await _open(intake)
    new, ticket = await _open(intake)
    with pytest.raises(IntakeExpired):
        await intake.by_token(old, ADA, tenant_id="t-ada")
    pending = await intake.pending_for(ADA)
    assert pending is not None
    assert pending.id == ticket.id  # type: ignore[attr-defined]
    await intake.by_token(new, ADA, tenant_id="t-ada")
