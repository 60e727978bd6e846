"""Migrations 0016 (budget_reservations without secondary indexes) and 0017 (on SQLite, without
rowid), on both databases."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text

from core.db import Database, upgrade
from core.db.migrate import alembic_config
from core.db.models import ReservationRow
from tests.test_budget import add_tenant


def test_0017_is_the_head_after_0016_after_0010(sqlite_url: str) -> None:
    script = ScriptDirectory.from_config(alembic_config(sqlite_url))
    assert script.get_heads() == ["0017"]
    revision = script.get_revision("0017")
    assert revision is not None and revision.down_revision == "0016"
    revision = script.get_revision("0016")
    assert revision is not None and revision.down_revision == "0010"


async def _indexes(db_url: str) -> set[str]:
    db = Database(db_url)
    try:
        async with db.engine.connect() as conn:
            return await conn.run_sync(
                lambda c: {ix["name"] for ix in sa.inspect(c).get_indexes("budget_reservations")}
            )
    finally:
        await db.dispose()


async def test_0016_drops_the_reservation_indexes_and_goes_down_again(db_url: str) -> None:
    await upgrade(db_url)
    assert await _indexes(db_url) == set()
    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "0010")
    assert await _indexes(db_url) == {
        "ix_budget_reservations_expires_at",
        "ix_budget_reservations_tenant_id",
    }
    await asyncio.to_thread(command.upgrade, alembic_config(db_url), "head")
    assert await _indexes(db_url) == set()


AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


async def _table(db_url: str) -> tuple[str, list[tuple[str, str, int]]]:
    """The table's DDL (SQLite; "" on PostgreSQL) and its rows."""
    db = Database(db_url)
    try:
        async with db.engine.connect() as conn:
            ddl = ""
            if db_url.startswith("sqlite"):
                ddl = (
                    await conn.execute(
                        text("SELECT sql FROM sqlite_master WHERE name = 'budget_reservations'")
                    )
                ).scalar_one()
            rows = (
                await conn.execute(
                    text("SELECT id, tenant_id, tokens FROM budget_reservations ORDER BY id")
                )
            ).all()
            return ddl, [tuple(r) for r in rows]
    finally:
        await db.dispose()


async def test_0017_keeps_reservations_in_flight_both_ways(db_url: str) -> None:
    await upgrade(db_url)
    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "0016")
    db = Database(db_url)
    try:
        await add_tenant(db, "t1")
        async with db.session() as s, s.begin():
            for i in range(3):
                s.add(
                    ReservationRow(
                        id=f"r{i}",
                        tenant_id="t1",
                        tokens=100 + i,
                        usd_micros=7,
                        created_at=AT,
                        expires_at=AT + timedelta(minutes=10),
                    )
                )
    finally:
        await db.dispose()
    held = [("r0", "t1", 100), ("r1", "t1", 101), ("r2", "t1", 102)]
    ddl, rows = await _table(db_url)
    assert "WITHOUT ROWID" not in ddl.upper() and rows == held

    await asyncio.to_thread(command.upgrade, alembic_config(db_url), "head")
    ddl, rows = await _table(db_url)
    assert rows == held
    if db_url.startswith("sqlite"):
        assert "WITHOUT ROWID" in ddl.upper()
        assert "FOREIGN KEY" in ddl.upper()  # still refers to its tenant

    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "0016")
    ddl, rows = await _table(db_url)
    assert "WITHOUT ROWID" not in ddl.upper() and rows == held
