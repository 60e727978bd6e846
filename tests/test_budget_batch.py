"""The SQLite group commit (``core.budget._batch``): a failing operation is rolled back alone."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from core.budget import _batch, _Failed


def _db(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID")
    return conn


def _insert(key: str, n: int):  # type: ignore[no-untyped-def]
    def op(conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE t SET n = n + 1 WHERE id = 'count'")
        conn.execute("INSERT INTO t (id, n) VALUES (?, ?)", (key, n))
        return n

    return op


def test_every_operation_commits_in_one_transaction(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    conn.execute("INSERT INTO t VALUES ('count', 0)")
    assert _batch(conn, [_insert("a", 1), _insert("b", 2), _insert("c", 3)]) == [1, 2, 3]
    assert not conn.in_transaction
    rows = dict(conn.execute("SELECT id, n FROM t").fetchall())
    assert rows == {"count": 3, "a": 1, "b": 2, "c": 3}


def test_a_failing_operation_is_rolled_back_alone_and_its_error_handed_back(
    tmp_path: Path,
) -> None:
    conn = _db(tmp_path)
    conn.execute("INSERT INTO t VALUES ('count', 0)")
    conn.execute("INSERT INTO t VALUES ('b', 0)")  # the second insert of "b" fails
    out = _batch(conn, [_insert("a", 1), _insert("b", 2), _insert("c", 3)])
    assert out[0] == 1 and out[2] == 3
    assert isinstance(out[1], _Failed) and isinstance(out[1].error, sqlite3.IntegrityError)
    assert not conn.in_transaction
    rows = dict(conn.execute("SELECT id, n FROM t").fetchall())
    # The failing operation's first statement (count + 1) was rolled back with it.
    assert rows == {"count": 2, "a": 1, "b": 0, "c": 3}


def test_one_failing_operation_alone(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    conn.execute("INSERT INTO t VALUES ('count', 0)")
    conn.execute("INSERT INTO t VALUES ('a', 0)")
    (out,) = _batch(conn, [_insert("a", 1)])
    assert isinstance(out, _Failed) and isinstance(out.error, sqlite3.IntegrityError)
    assert dict(conn.execute("SELECT id, n FROM t").fetchall()) == {"count": 0, "a": 0}


def test_a_busy_database_aborts_the_whole_batch(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    conn.execute("INSERT INTO t VALUES ('count', 0)")
    conn.execute("PRAGMA busy_timeout=0")
    other = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            _batch(conn, [_insert("a", 1), _insert("b", 2)])
    finally:
        other.execute("ROLLBACK")
    assert not conn.in_transaction
    assert dict(conn.execute("SELECT id, n FROM t").fetchall()) == {"count": 0}
