"""Encrypted conversation memory: versions bound into the blob refuse an older copy (rollback)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, update

from core.agent_data import DatabaseMemory
from core.chat import Platform, UserRef
from core.config import Config
from core.credentials import Credentials
from core.db import Database, upgrade
from core.db.models import MemoryRow
from core.errors import DecryptionError, VaultError
from core.plans import PlanCatalog
from core.ports import ManualClock
from core.runtime.ports import Turn
from core.tenants import Tenants
from core.vault import MasterKeyRing, Vault, decrypt_blob, encrypt_blob

CONV = "telegram:1@1"


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    await upgrade(db_url)
    database = Database(db_url)
    yield database
    await database.dispose()


async def _setup(db: Database) -> tuple[str, Credentials, ManualClock]:
    clock = ManualClock()
    ring = MasterKeyRing({1: bytes(range(32))}, primary=1)
    credentials = Credentials(db, Vault(ring), clock)
    tenants = Tenants(db, credentials, PlanCatalog(Config().plans), clock)
    tenant = await tenants.sign_up(UserRef(Platform.TELEGRAM, "1"), "byok", dm_chat_id=None)
    return tenant.id, credentials, clock


async def _row(db: Database, tenant_id: str) -> tuple[bytes, int]:
    async with db.session() as s:
        found = (
            await s.execute(
                select(MemoryRow.blob, MemoryRow.version).where(MemoryRow.tenant_id == tenant_id)
            )
        ).one()
    return bytes(found[0]), int(found[1])


async def _put(db: Database, tenant_id: str, **values: object) -> None:
    async with db.session() as s, s.begin():
        await s.execute(update(MemoryRow).where(MemoryRow.tenant_id == tenant_id).values(**values))


async def test_versions_grow_and_an_old_blob_is_refused(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    tenant_id, credentials, clock = await _setup(db)
    memory = DatabaseMemory(db, credentials, clock)
    await memory.save(tenant_id, CONV, [Turn("user", "one")])
    old_blob, v1 = await _row(db, tenant_id)
    await memory.save(tenant_id, CONV, [Turn("user", "one"), Turn("user", "two")])
    _, v2 = await _row(db, tenant_id)
    assert (v1, v2) == (1, 2)
    assert [t.content for t in await memory.load(tenant_id, CONV)] == ["one", "two"]

    # Only the blob copied back: it does not open under the row's version.
    await _put(db, tenant_id, blob=old_blob)
    with caplog.at_level(logging.WARNING, logger="byokbot.memory"):
        assert await memory.load(tenant_id, CONV) == []
    assert "rolled back or tampered" in caplog.text
    assert all("one" not in m for m in caplog.messages)

    # A fresh save goes past every version seen, and is trusted again.
    await memory.save(tenant_id, CONV, [Turn("user", "three")])
    assert (await _row(db, tenant_id))[1] == 3
    assert [t.content for t in await memory.load(tenant_id, CONV)] == ["three"]


async def test_the_whole_old_row_copied_back_is_refused_by_a_running_process(
    db: Database,
) -> None:
    tenant_id, credentials, clock = await _setup(db)
    memory = DatabaseMemory(db, credentials, clock)
    await memory.save(tenant_id, CONV, [Turn("user", "one")])
    old_blob, old_version = await _row(db, tenant_id)
    await memory.save(tenant_id, CONV, [Turn("user", "two")])
    assert [t.content for t in await memory.load(tenant_id, CONV)] == ["two"]
    await _put(db, tenant_id, blob=old_blob, version=old_version)
    assert await memory.load(tenant_id, CONV) == []


async def test_reset_keeps_the_version_growing(db: Database) -> None:
    tenant_id, credentials, clock = await _setup(db)
    memory = DatabaseMemory(db, credentials, clock)
    await memory.save(tenant_id, CONV, [Turn("user", "one")])
    old_blob, old_version = await _row(db, tenant_id)
    await memory.clear(tenant_id, CONV)
    assert await memory.load(tenant_id, CONV) == []
    # After a restart (a new process, nothing remembered) the stored version still refuses it.
    restarted = DatabaseMemory(db, credentials, clock)
    await _put(db, tenant_id, blob=old_blob)
    assert (await _row(db, tenant_id))[1] > old_version
    assert await restarted.load(tenant_id, CONV) == []


async def test_memory_written_before_versions_still_opens(db: Database) -> None:
    tenant_id, credentials, clock = await _setup(db)
    memory = DatabaseMemory(db, credentials, clock)
    await memory.save(tenant_id, CONV, [Turn("user", "x")])
    async with db.session() as s:
        dek = await credentials.data_key(s, tenant_id)
    legacy = encrypt_blob(
        dek, b'[{"role": "user", "content": "legacy"}]', purpose="memory", object_id=CONV
    )
    await _put(db, tenant_id, blob=legacy, version=0)
    assert [
        t.content for t in await DatabaseMemory(db, credentials, clock).load(tenant_id, CONV)
    ] == ["legacy"]


def test_blob_version_is_bound() -> None:
    from core.vault import DataKey

    dek = DataKey("t1", bytes(32))
    blob = encrypt_blob(dek, b"data", purpose="memory", object_id="c", version=2)
    assert decrypt_blob(dek, blob, purpose="memory", object_id="c", version=2) == b"data"
    for version in (1, 3, None):
        with pytest.raises(DecryptionError):
            decrypt_blob(dek, blob, purpose="memory", object_id="c", version=version)
    unversioned = encrypt_blob(dek, b"data", purpose="memory", object_id="c")
    with pytest.raises(DecryptionError):
        decrypt_blob(dek, unversioned, purpose="memory", object_id="c", version=1)
    for bad in (0, -1, True):
        with pytest.raises(VaultError):
            encrypt_blob(dek, b"d", purpose="memory", object_id="c", version=bad)
