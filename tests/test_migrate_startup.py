"""What start-up's migration step does on SQLite: one transaction, and nothing at the head.

An empty database gets the whole chain in a single transaction (a failing revision leaves it
empty, not half made); a database already at the head is read with the standard library and
Alembic is not even imported; the heads read from the revision files are Alembic's own.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from core.db import migrate
from core.db.migrate import alembic_config, shipped_heads, upgrade

ROOT = Path(__file__).resolve().parents[1]


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def test_the_heads_read_from_the_files_are_alembics() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert shipped_heads() == frozenset(script.get_heads())


async def test_a_failing_revision_leaves_an_empty_database_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = migrate.MIGRATIONS
    chain = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS, chain)
    (head,) = shipped_heads() or ()
    last = next(f for f in (chain / "versions").glob(f"{head}_*.py"))
    last.write_text(
        last.read_text() + "\n\n_up = upgrade\n\n\ndef upgrade() -> None:\n"
        "    _up()\n    raise RuntimeError('revision failed')\n"
    )
    monkeypatch.setattr(migrate, "MIGRATIONS", chain)
    db = tmp_path / "data" / "byokbot.db"
    with pytest.raises(RuntimeError, match="revision failed"):
        await upgrade(f"sqlite+aiosqlite:///{db}")
    assert tables(db) == set()  # every earlier revision rolled back with it

    monkeypatch.setattr(migrate, "MIGRATIONS", shipped)
    await upgrade(f"sqlite+aiosqlite:///{db}")
    assert {"tenants", "alembic_version", "mcp_servers"} <= tables(db)


def test_a_database_at_the_head_is_left_without_loading_alembic(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'byokbot.db'}"
    code = (
        "import asyncio, sys\n"
        "from core.db.migrate import upgrade\n"
        f"asyncio.run(upgrade({url!r}))\n"
        "print('alembic' in sys.modules)\n"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert runs == ["True", "False"]  # migrated by Alembic once, then only read
