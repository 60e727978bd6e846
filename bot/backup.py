"""``byokbot backup`` and ``byokbot restore`` for a SQLite database.

The backup is one SQLite file made with SQLite's online backup API, so it is consistent while
the bot runs. It holds what the database holds: data keys wrapped by the master key, never the
master key itself (the key file or variable is backed up separately, and kept apart). Restore
refuses a backup the current master key does not open, and never overwrites a database
unless told to. PostgreSQL is backed up with ``pg_dump`` (README, "Backup and restore").
"""

# A one-shot CLI command with nothing else on its event loop: blocking file calls are fine.
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
from collections.abc import Mapping
from pathlib import Path

from core.config import Config
from core.db import Database
from core.db.instance import InstanceLock
from core.db.status import current_revisions, known_revisions
from core.errors import ConfigError, CoreError, StartupError

SQLITE = "sqlite+aiosqlite:///"


def sqlite_path(config: Config, what: str) -> Path:
    """The database file, or a ConfigError pointing PostgreSQL users at pg_dump."""
    url = config.database_url
    if not url.startswith(SQLITE) or ":memory:" in url:
        raise ConfigError(
            f"byokbot {what} handles SQLite only; back up PostgreSQL with pg_dump "
            "(README: Backup and restore)"
        )
    return Path(url.removeprefix(SQLITE))


def _copy(source: Path, target: Path) -> None:
    """SQLite's online backup of ``source`` into a new file ``target`` (readers never block)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal
        finally:
            dst.close()
    finally:
        src.close()


async def backup(config: Config, target: Path) -> str:
    """Write a consistent copy of the database to ``target``; returns a line for stdout.

    Raises:
        ConfigError: not SQLite, or ``target`` exists.
        StartupError: the database file is missing.
    """
    source = sqlite_path(config, "backup")
    if not source.exists():
        raise StartupError(f"{source}: no database to back up")
    if target.exists():
        raise ConfigError(f"{target} exists; choose a new file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        await asyncio.to_thread(_copy, source, partial)
        os.chmod(partial, 0o600)  # it holds wrapped keys and everyone's data
        partial.rename(target)
    finally:
        partial.unlink(missing_ok=True)
    key = config.resolve_path(config.core.master_key_file)
    return (
        f"backed up {source} to {target} ({target.stat().st_size} bytes); the master key is "
        f"not in it: keep {key} (or ${config.core.master_key_env}) in a separate safe place"
    )


async def _check_backup(config: Config, env: Mapping[str, str], file: Path) -> None:
    """Refuse a file that is not a byokbot database the current master key opens."""
    try:
        with sqlite3.connect(f"file:{file}?mode=ro", uri=True) as conn:
            conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{file}: not a byokbot backup ({exc})") from None
    from bot.app import load_master_keys, master_key_source
    from core.credentials import Credentials
    from core.ports import SystemClock
    from core.vault import Vault

    ring = load_master_keys(config, env, create=False)
    db = Database(SQLITE + str(file))
    try:
        # An older revision is fine (the next start migrates it); one this release does not
        # know came from a newer byokbot and would not start here.
        current = await current_revisions(db)
        if not current <= set(known_revisions()):
            raise ConfigError(
                f"{file}: made by a newer byokbot (revision {', '.join(sorted(current))}); "
                "restore it with that version"
            )
        probe = Credentials(db, Vault(ring), SystemClock())
        found = await probe.master_key_problem()
    finally:
        await db.dispose()
    if found is not None:
        version, count, _ = found
        raise ConfigError(
            f"{file}: the master key from {master_key_source(config, env)} does not open "
            f"its {count} data key(s) (master key v{version}); restore the key this backup "
            "was made with first"
        )


async def restore(config: Config, env: Mapping[str, str], file: Path, *, force: bool) -> str:
    """Put the backup ``file`` in place of the database; returns a line for stdout.

    Raises:
        ConfigError: not SQLite, no such file, not a byokbot backup, the master key does not
            open it, or a database exists and ``force`` is not given.
        StartupError: a running byokbot holds the database.
    """
    target = sqlite_path(config, "restore")
    if not file.is_file():
        raise ConfigError(f"{file}: no such backup file")
    await _check_backup(config, env, file)
    if target.exists():
        if not force:
            raise ConfigError(f"{target} exists; stop byokbot and pass --force to replace it")
        db = Database(config.database_url)
        lock = InstanceLock(db)
        try:
            if not await lock.try_exclusive():
                raise StartupError("a running byokbot holds the database; stop it first")
        finally:
            await lock.release()
            await db.dispose()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".restore")
    os.close(fd)
    partial = Path(name)
    try:
        await asyncio.to_thread(_copy, file, partial)
        for suffix in ("-wal", "-shm"):
            Path(str(target) + suffix).unlink(missing_ok=True)
        os.chmod(partial, 0o600)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return f"restored {file} to {target}"


__all__ = ["CoreError", "backup", "restore", "sqlite_path"]
