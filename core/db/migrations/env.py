"""Alembic environment: runs migrations over the async engine."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from core.db.engine import CONNECT_TIMEOUT
from core.db.models import Base

target_metadata = Base.metadata

# The advisory lock two starting processes agree on, so one migrates while the other waits.
MIGRATION_LOCK_ID = 0x6279_6F6B_6D69_67  # "byokmig"


def _run(connection: Connection, *, transactional_ddl: bool | None = None) -> None:
    if connection.dialect.name == "postgresql":
        # Held to the end of the transaction the migrations run in (alembic joins it), so the
        # second process reads alembic_version only after the first committed.
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        transactional_ddl=transactional_ddl,
    )
    with context.begin_transaction():
        context.run_migrations()


def _sqlite_manual_transactions(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # no implicit commits: BEGIN below opens the transaction


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


def _main_sqlite(url: str) -> None:
    # The standard library's driver, in this thread (aiosqlite would hand every statement to
    # its own thread and back). And one real transaction: sqlite3 by itself commits around
    # each DDL statement, a disk sync per statement, most of an empty database's migration
    # time; here the whole chain commits once, or not at all.
    engine = create_engine(url.replace("sqlite+aiosqlite:", "sqlite+pysqlite:", 1))
    event.listen(engine, "connect", _sqlite_manual_transactions)
    event.listen(engine, "begin", _sqlite_begin)
    try:
        with engine.connect() as conn:
            # Alembic assumes sqlite3's implicit commits and would commit after each revision.
            _run(conn, transactional_ddl=True)
            conn.commit()
    finally:
        engine.dispose()


async def _main(url: str) -> None:
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
    _url = context.config.get_main_option("sqlalchemy.url")
    assert _url is not None  # noqa: S101 - set by core.db.migrate
    if _url.startswith("sqlite+aiosqlite:"):
        _main_sqlite(_url)
    else:
        asyncio.run(_main(_url))
