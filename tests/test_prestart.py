"""Whether ``byokbot run`` starts the agent template at once: only if a tenant may ask."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from core.runtime.prestart import agents_may_be_asked


def url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def test_a_new_sqlite_database_has_no_one_to_ask(tmp_path: Path) -> None:
    db = tmp_path / "byokbot.db"
    assert not agents_may_be_asked(url(db))  # no file yet
    db.touch()
    assert not agents_may_be_asked(url(db))  # the empty file start-up creates
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE other (id INTEGER)")
    assert not agents_may_be_asked(url(db))  # not migrated yet
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE tenants (id TEXT)")
    assert not agents_may_be_asked(url(db))  # migrated, nobody signed up
    assert not agents_may_be_asked("sqlite+aiosqlite:///:memory:")


def test_a_database_with_a_tenant_or_one_not_readable_here_may_ask(tmp_path: Path) -> None:
    db = tmp_path / "byokbot.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE tenants (id TEXT)")
        conn.execute("INSERT INTO tenants VALUES ('t1')")
    assert agents_may_be_asked(url(db))
    assert agents_may_be_asked(f"{url(db)}?timeout=5")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    assert agents_may_be_asked(url(garbage))
    assert agents_may_be_asked("postgresql+asyncpg://byok@127.0.0.1:5432/byokbot")
