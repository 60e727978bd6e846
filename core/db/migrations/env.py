"""Alembic environment: runs migrations over the async engine."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from core.db.engine import CONNECT_TIMEOUT
from core.db.models import Base

target_metadata = Base.metadata

# The advisory lock two starting processes agree on, so one migrates while the other waits.
MIGRATION_LOCK_ID = 0x6279_6F6B_6D69_67  # "byokmig"


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Held to the end of the transaction the migrations run in (alembic joins it), so the
        # second process reads alembic_version only after the first committed.
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None  # noqa: S101 - set by core.db.migrate
    # A database that does not answer fails start-up within seconds, not asyncpg's minute.
    connect_args = {"timeout": CONNECT_TIMEOUT} if url.startswith("postgresql+asyncpg") else {}
    engine = create_async_engine(url, connect_args=connect_args)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_main())
