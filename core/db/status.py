"""Where a database stands in the migration chain, without changing it (doctor, ``/readyz``)."""

from __future__ import annotations

import functools

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from core.db.engine import Database
from core.db.migrate import alembic_config


@functools.cache
def head_revisions() -> frozenset[str]:
    """The heads of the migration chain shipped in this package."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return frozenset(script.get_heads())


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision of the shipped chain."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return frozenset(s.revision for s in script.walk_revisions())


async def current_revisions(db: Database) -> frozenset[str]:
    """The revisions the database records (empty for a database never migrated).

    Raises:
        sqlalchemy.exc.DBAPIError: the database cannot be reached.
    """
    async with db.engine.connect() as conn:
        try:
            rows = await conn.execute(text("SELECT version_num FROM alembic_version"))
        except (OperationalError, ProgrammingError) as exc:
            if "alembic_version" in str(exc):
                return frozenset()
            raise
        return frozenset(str(r[0]) for r in rows)


async def migration_problem(db: Database) -> str | None:
    """None when the database is at the head of the chain, else what is wrong, in one line."""
    current = await current_revisions(db)
    heads = head_revisions()
    if current == heads:
        return None
    if not current:
        return "not migrated (run byokbot db upgrade)"
    return (
        f"at revision {', '.join(sorted(current))}, expected {', '.join(sorted(heads))} "
        "(run byokbot db upgrade)"
    )


async def ping(db: Database) -> None:
    """One round trip to the database.

    Raises:
        sqlalchemy.exc.DBAPIError, OSError: it cannot be reached.
    """
    async with db.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


__all__ = [
    "DBAPIError",
    "current_revisions",
    "head_revisions",
    "known_revisions",
    "migration_problem",
    "ping",
]
