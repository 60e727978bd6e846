"""Scoped proxy tokens: shape, hash-only storage, rotation window, revocation, audit."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import delete, select

from core import audit
from core.db import Database
from core.db.models import ProxyTokenRow
from core.keys import find_leaks
from core.ports import ManualClock
from core.proxy_tokens import ProxyTokens, TokenOwner, looks_like_token, record_revocation
from core.secret import Secret
from tests.test_budget import add_tenant, open_db


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await open_db(db_url)
    await add_tenant(database, "t1")
    await add_tenant(database, "t2", "byok")
    yield database
    await database.dispose()


async def test_a_token_has_the_leak_detectors_shape_and_only_its_hash_is_stored(
    db: Database,
) -> None:
    tokens = ProxyTokens(db, ManualClock())
    token = await tokens.issue("t1")
    assert isinstance(token, Secret)
    value = token.reveal()
    assert (value[:5], len(value), looks_like_token(value)) == ("byok-", 48, True)
    assert [leak.kind for leak in find_leaks(f"my token is {value} ok")] == ["byok"]
    async with db.session() as s:
        rows = (await s.scalars(select(ProxyTokenRow))).all()
    assert [(r.tenant_id, r.token_hash) for r in rows] == [
        ("t1", hashlib.sha256(value.encode()).hexdigest())
    ]
    assert value not in repr(rows[0].__dict__)
    assert await tokens.resolve(value) == "t1"
    assert await tokens.owner(value) == TokenOwner("t1", "managed", "active", False)


async def test_unknown_and_malformed_tokens_resolve_to_none(db: Database) -> None:
    tokens = ProxyTokens(db, ManualClock())
    real = (await tokens.issue("t1")).reveal()
    for candidate in (
        "",
        "byok-",
        real[:-1],
        real + "A",
        real[:-1] + ("A" if real[-1] != "A" else "B"),
        "byok-" + "é" * 43,
        "sk-ant-" + real[5:],
    ):
        assert await tokens.resolve(candidate) is None


async def test_each_issue_keeps_the_newest_three(db: Database) -> None:
    tokens = ProxyTokens(db, ManualClock(), keep=3)
    issued = [(await tokens.issue("t1")).reveal() for _ in range(5)]
    other = (await tokens.issue("t2")).reveal()
    assert [await tokens.resolve(t) for t in issued] == [None, None, "t1", "t1", "t1"]
    assert await tokens.resolve(other) == "t2"


async def test_two_processes_issuing_at_once_keep_both_new_tokens(
    db: Database, db_url: str
) -> None:
    # Two replicas start the tenant's agent at the same moment, each on its own connection.
    other = await open_db(db_url)
    try:
        mine, theirs = ProxyTokens(db, ManualClock(), keep=3), ProxyTokens(other, ManualClock())
        for _ in range(20):
            issued = await asyncio.gather(mine.issue("t1"), theirs.issue("t1"))
            assert [await mine.resolve(t.reveal()) for t in issued] == ["t1", "t1"]
    finally:
        await other.dispose()


async def test_revoke_all_is_immediate_scoped_to_the_tenant_and_audited(db: Database) -> None:
    tokens = ProxyTokens(db, ManualClock())
    mine = [(await tokens.issue("t1")).reveal() for _ in range(2)]
    theirs = (await tokens.issue("t2")).reveal()
    assert await tokens.revoke_all("t1", actor="telegram:900") == 2
    assert [await tokens.resolve(t) for t in mine] == [None, None]
    assert await tokens.resolve(theirs) == "t2"
    assert await tokens.revoke_all("t1") == 0
    async with db.session() as s:
        entries = await audit.read(s, tenant_id="t1")
    assert [(e.actor, e.action, dict(e.detail)) for e in entries] == [
        ("system", "proxy_tokens.revoked", {"count": 0}),
        ("telegram:900", "proxy_tokens.revoked", {"count": 2}),
    ]
    fresh = (await tokens.issue("t1")).reveal()
    assert await tokens.resolve(fresh) == "t1"


def test_keep_must_be_positive() -> None:
    with pytest.raises(ValueError, match="keep must be at least 1"):
        ProxyTokens(Database("sqlite+aiosqlite:///:memory:"), ManualClock(), keep=0)


async def test_the_cache_skips_lookups_but_not_revocations(db: Database) -> None:
    tokens = ProxyTokens(db, ManualClock(), cache_seconds=60)
    token = (await tokens.issue("t1")).reveal()
    assert await tokens.resolve(token) == "t1"
    other = (await tokens.issue("t2")).reveal()
    assert await tokens.resolve(other) == "t2"
    elsewhere = ProxyTokens(db, ManualClock())  # e.g. the bot, in this process
    assert await elsewhere.revoke_all("t1") == 1
    # In the same process a revocation through any ProxyTokens object applies at once.
    assert await tokens.resolve(token) is None
    assert await tokens.resolve(other) == "t2"


async def test_a_revocation_counted_by_another_process_empties_the_cache(db: Database) -> None:
    tokens = ProxyTokens(db, ManualClock(), cache_seconds=60, check_seconds=0.05)
    token = (await tokens.issue("t1")).reveal()
    assert await tokens.resolve(token) == "t1"
    async with db.session() as s, s.begin():  # what another process's revoke_all commits
        await s.execute(delete(ProxyTokenRow))
        await record_revocation(s)
    await asyncio.sleep(0.06)  # past the check window: the next hit re-reads the counter
    assert await tokens.resolve(token) is None


async def test_rotation_evicts_cached_tokens_too(db: Database) -> None:
    tokens = ProxyTokens(db, ManualClock(), keep=2, cache_seconds=60)
    first = (await tokens.issue("t1")).reveal()
    assert await tokens.resolve(first) == "t1"
    newer = [(await tokens.issue("t1")).reveal() for _ in range(2)]
    assert [await tokens.resolve(t) for t in (first, *newer)] == [None, "t1", "t1"]
