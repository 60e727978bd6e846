"""Apply the Alembic migration chain shipped inside the package."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import fcntl
import functools
import os
import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import ArgumentError, DBAPIError

from core.errors import StartupError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).with_name("migrations")
_FIELD = re.compile(r"^(revision|down_revision)\s*(?::[^=\n]+)?=\s*(.+?)\s*$", re.MULTILINE)


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
    db_file: Path | None = None
    if url.startswith("sqlite+aiosqlite:///"):
        path = url.removeprefix("sqlite+aiosqlite:///")
        if path and ":memory:" not in path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # One process migrates, the others wait here (PostgreSQL: an advisory lock in env.py).
            lock = os.open(f"{path}.migrate.lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
            db_file = Path(path.split("?", 1)[0])
    try:
        # A restart finds its database at the head: read that with the standard library
        # rather than load Alembic and the whole chain (the lock above still orders it after
        # a process that is migrating).
        if not (db_file is not None and revision == "head" and _at_head(db_file)):
            _run_alembic(url, revision)
    finally:
        if lock is not None:
            os.close(lock)  # releases the flock


@functools.cache
def shipped_heads() -> frozenset[str] | None:
    """The heads of the shipped chain, read from the revision files' ``revision`` lines.

    None when a file does not say its revisions plainly: then only Alembic can tell.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for file in sorted((MIGRATIONS / "versions").glob("*.py")):
        fields = dict(_FIELD.findall(file.read_text(encoding="utf-8")))
        try:
            rev = ast.literal_eval(fields["revision"])
            down = ast.literal_eval(fields.get("down_revision", "None"))
        except (KeyError, ValueError, SyntaxError):
            return None
        if not isinstance(rev, str):
            return None
        revisions.add(rev)
        downs = down if isinstance(down, tuple | list) else (down,)
        parents.update(d for d in downs if isinstance(d, str))
    heads = frozenset(revisions - parents)
    return heads or None


def _at_head(path: Path) -> bool:
    """Whether the SQLite file at ``path`` records exactly the shipped heads."""
    heads = shipped_heads()
    if heads is None or not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        return False  # no version table yet, or not readable: Alembic says what is wrong
    return frozenset(str(r[0]) for r in rows) == heads


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
