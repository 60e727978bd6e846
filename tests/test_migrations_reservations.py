"""Migration 0016 (budget_reservations without secondary indexes), on both databases."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from core.db import Database, upgrade
from core.db.migrate import alembic_config


def test_0016_is_the_head_after_0010(sqlite_url: str) -> None:
    script = ScriptDirectory.from_config(alembic_config(sqlite_url))
    assert script.get_heads() == ["0016"]
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
