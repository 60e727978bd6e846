"""Migration 0015 (subscriptions.due_at): one head, down and up again, live rows made due.

On both databases: rows written before 0015 have no ``due_at``; the upgrade makes every live
one (trial, active, past due) due at once, so the billing job's first round sets its real time,
and leaves ended ones out of the job's reads.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import select, text

from core.db import Database, upgrade
from core.db.migrate import alembic_config
from core.db.models import SubscriptionRow, TenantRow

AT = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def test_the_chain_has_one_head_and_0015_follows_0011(sqlite_url: str) -> None:
    script = ScriptDirectory.from_config(alembic_config(sqlite_url))
    assert script.get_heads() == ["0017"]  # mcp_servers came after, then 0016, 0017
    revision = script.get_revision("0015")
    assert revision is not None and revision.down_revision == "0011"
    after = script.get_revision("0010")
    assert after is not None and after.down_revision == "0015"


async def test_0015_goes_down_and_up_and_makes_live_rows_due(db_url: str) -> None:
    await upgrade(db_url)
    db = Database(db_url)
    states = {"t-trial": "trial", "t-active": "active", "t-late": "past_due", "t-gone": "cancelled"}
    try:
        async with db.session() as s, s.begin():
            for tid, state in states.items():
                s.add(
                    TenantRow(
                        id=tid,
                        plan="managed",
                        status="active",
                        status_reason="",
                        paused=False,
                        persona="",
                        created_at=AT,
                        updated_at=AT,
                    )
                )
                await s.flush()
                s.add(
                    SubscriptionRow(
                        tenant_id=tid,
                        plan="managed",
                        state=state,
                        provider="grant",
                        period_end=AT + timedelta(days=30),
                        auto_renew=False,
                        updated_at=AT,
                    )
                )
    finally:
        await db.dispose()

    # Back to 0011 (the column goes), then up again: the rows are as a pre-0015 database had them.
    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "0011")
    db = Database(db_url)
    try:
        async with db.session() as s:
            columns = await s.execute(text("SELECT * FROM subscriptions"))
            assert "due_at" not in list(columns.keys())
    finally:
        await db.dispose()
    await upgrade(db_url)
    db = Database(db_url)
    try:
        async with db.session() as s:
            rows = (
                await s.execute(select(SubscriptionRow.tenant_id, SubscriptionRow.due_at))
            ).all()
        due = {tid: at.replace(tzinfo=UTC) if at is not None else None for tid, at in rows}
    finally:
        await db.dispose()
    assert due == {"t-trial": AT, "t-active": AT, "t-late": AT, "t-gone": None}
