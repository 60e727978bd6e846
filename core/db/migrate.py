"""Apply the Alembic migration chain shipped inside the package."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import ArgumentError, DBAPIError

from core.errors import StartupError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> AlembicConfig:
    """An Alembic config that needs no ini file: the chain is found inside the package."""
    # Imported here: Alembic costs ~10 MiB, and only start-up and the CLI need it.
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # '%' would be read as interpolation by configparser.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def _upgrade(url: str, revision: str) -> None:
    lock: int | None = None
    if url.startswith("sqlite+aiosqlite:///"):
        path = url.removeprefix("sqlite+aiosqlite:///")
        if path and ":memory:" not in path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # One process migrates, the others wait here (PostgreSQL: an advisory lock in env.py).
            lock = os.open(f"{path}.migrate.lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        _run_alembic(url, revision)
    finally:
        if lock is not None:
            os.close(lock)  # releases the flock


def _run_alembic(url: str, revision: str) -> None:
    import logging

    # Alembic announces each of its plugins at INFO when it is imported (so before the
    # import); the migrations themselves are still logged.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def safe_url(url: str) -> str:
    """The database URL as an operator may see it: without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "the configured database_url"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


async def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision``; safe to call at every start.

    Alembic's env runs its own event loop, so it runs in a worker thread.

    Raises:
        StartupError: the database cannot be reached or refused us (one line, no password).
    """
    try:
        await asyncio.to_thread(_upgrade, url, revision)
    except (OSError, DBAPIError, TimeoutError) as exc:
        raise StartupError(
            f"cannot open the database at {safe_url(url)} ({_reason(exc)})"
        ) from None
