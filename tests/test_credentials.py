"""Keys at rest with a real database: rotation matrix, resumable rewrap, shredding, plaintext scan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from core.chat import Platform, UserRef
from core.config import Config
from core.credentials import Credentials
from core.db import Database, upgrade
from core.db.models import KekUsageRow, ProviderKeyRow
from core.errors import DecryptionError
from core.plans import PlanCatalog
from core.ports import ManualClock
from core.secret import Secret
from core.tenants import Tenants
from core.vault import MasterKeyRing, Vault
from tests.canaries import anthropic_key


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    await upgrade(db_url)
    database = Database(db_url)
    yield database
    await database.dispose()


def _services(db: Database, ring: MasterKeyRing) -> tuple[Tenants, Credentials]:
    clock = ManualClock()
    credentials = Credentials(db, Vault(ring), clock)
    return Tenants(db, credentials, PlanCatalog(Config().plans), clock), credentials


async def test_rotation_matrix_and_interrupted_rewrap(db: Database) -> None:
    ring = MasterKeyRing.parse(_fresh(), source="t")
    tenants, credentials = _services(db, ring)
    stored: dict[str, str] = {}
    # Tenants created under master keys v1..v4.
    for i in range(4):
        for j in range(3):
            t = await tenants.sign_up(UserRef(Platform.SLACK, f"U{i}{j}"), "byok", dm_chat_id=None)
            key = anthropic_key()
            await credentials.store(t.id, "anthropic", Secret(key), actor="test")
            stored[t.id] = key
        if i < 3:
            ring, _ = credentials.vault.ring.with_new_primary()
            credentials.vault.set_ring(ring)
    assert await credentials.kek_versions_in_use() == {1: 3, 2: 3, 3: 3, 4: 3}
    for tid, key in stored.items():
        revealed = await credentials.reveal(tid, "anthropic")
        assert revealed is not None
        assert revealed[1].reveal() == key

    # A rewrap that crashes in its second batch: the first batch is committed, the second
    # rolled back whole; everything stays readable and a rerun finishes the job.
    ring, _ = credentials.vault.ring.with_new_primary()
    credentials.vault.set_ring(ring)
    real_rewrap = credentials.vault.rewrap
    calls = 0

    def crashing_rewrap(tenant_id: str, wrapped: bytes) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 6:
            raise OSError("power cut")
        return real_rewrap(tenant_id, wrapped)

    credentials.vault.rewrap = crashing_rewrap  # type: ignore[method-assign]
    with pytest.raises(OSError, match="power cut"):
        await credentials.rewrap_all(batch=4)
    credentials.vault.rewrap = real_rewrap  # type: ignore[method-assign]
    used = await credentials.kek_versions_in_use()
    assert used[5] == 4
    assert sum(used.values()) == 12
    for tid, key in stored.items():
        revealed = await credentials.reveal(tid, "anthropic")
        assert revealed is not None
        assert revealed[1].reveal() == key
    assert await credentials.rewrap_all(batch=5) == 8
    assert await credentials.rewrap_all() == 0  # idempotent
    assert await credentials.kek_versions_in_use() == {5: 12}
    for old in (1, 2, 3, 4):
        ring = ring.without(old)
    credentials.vault.set_ring(ring)
    for tid, key in stored.items():
        revealed = await credentials.reveal(tid, "anthropic")
        assert revealed is not None
        assert revealed[1].reveal() == key
    async with db.session() as s:
        wraps = dict((await s.execute(select(KekUsageRow.version, KekUsageRow.wraps))).all())
    assert wraps == {1: 3, 2: 3, 3: 3, 4: 3, 5: 12}


async def test_ciphertext_moved_to_another_tenant_fails(db: Database) -> None:
    tenants, credentials = _services(db, MasterKeyRing.parse(_fresh(), source="t"))
    a = await tenants.sign_up(UserRef(Platform.DISCORD, "1"), "byok", dm_chat_id=None)
    b = await tenants.sign_up(UserRef(Platform.DISCORD, "2"), "byok", dm_chat_id=None)
    await credentials.store(a.id, "anthropic", Secret(anthropic_key()), actor="t")
    await credentials.store(b.id, "anthropic", Secret(anthropic_key()), actor="t")
    async with db.session() as s, s.begin():
        ra = await s.scalar(select(ProviderKeyRow).where(ProviderKeyRow.tenant_id == a.id))
        rb = await s.scalar(select(ProviderKeyRow).where(ProviderKeyRow.tenant_id == b.id))
        assert ra is not None and rb is not None
        rb.ciphertext = ra.ciphertext
    with pytest.raises(DecryptionError):
        await credentials.reveal(b.id, "anthropic")


async def test_database_file_holds_no_plaintext(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"
    await upgrade(url)
    db = Database(url)
    tenants, credentials = _services(db, MasterKeyRing.parse(_fresh(), source="t"))
    keys = [anthropic_key() for _ in range(5)]
    for i, key in enumerate(keys):
        t = await tenants.sign_up(UserRef(Platform.TELEGRAM, str(i)), "byok", dm_chat_id=None)
        await credentials.store(t.id, "anthropic", Secret(key), actor="t")
    await db.dispose()
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("k.db*"))
    assert b"anthropic" in blob  # the scan does see the file's contents
    for key in keys:
        assert key.encode() not in blob
        assert key[-40:].encode() not in blob


def _fresh() -> str:
    import base64
    import os

    return base64.b64encode(os.urandom(32)).decode()


async def test_a_tenant_read_by_id_is_cached_and_every_change_is_seen_at_once(
    db: Database,
) -> None:
    tenants, _ = _services(db, MasterKeyRing.parse(_fresh(), source="t"))
    other, _ = _services(db, MasterKeyRing.parse(_fresh(), source="t"))
    t = await tenants.sign_up(UserRef(Platform.TELEGRAM, "77"), "byok", dm_chat_id="77")
    assert (await tenants.get(t.id)).model is None

    # Another process's write is not seen until its announcement (or the cache's seconds):
    # the read is served from memory, not the database.
    await other.set_model(t.id, "anthropic", "model-large", actor="test")
    assert (await tenants.get(t.id)).model is None
    tenants.changed()  # what the change feed calls on its notification
    assert (await tenants.get(t.id)).model == "model-large"

    # This process's own writes are seen at once.
    await tenants.set_paused(t.id, True, actor="test")
    assert (await tenants.get(t.id)).paused
    await tenants.suspend(t.id, actor="test", reason="abuse")
    assert (await tenants.get(t.id)).status.value == "suspended"


async def test_two_replicas_storing_a_key_at_once_leave_one_key(db: Database, db_url: str) -> None:
    # The person pastes a key, then a corrected one, and the two land on different replicas.
    ring = MasterKeyRing.parse(_fresh(), source="t")
    tenants, mine = _services(db, ring)
    other = Database(db_url)
    try:
        theirs = Credentials(other, Vault(ring), ManualClock())
        t = await tenants.sign_up(UserRef(Platform.SLACK, "URACE"), "byok", dm_chat_id=None)
        for _ in range(10):
            await asyncio.gather(
                mine.store(t.id, "anthropic", Secret(anthropic_key()), actor="test"),
                theirs.store(t.id, "anthropic", Secret(anthropic_key()), actor="test"),
            )
            async with db.session() as s:
                rows = (
                    await s.scalars(select(ProviderKeyRow).where(ProviderKeyRow.tenant_id == t.id))
                ).all()
            assert len(rows) == 1, [(r.version, r.status) for r in rows]
    finally:
        await other.dispose()
