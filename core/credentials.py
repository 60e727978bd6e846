"""Provider keys at rest: per-tenant data keys, encrypted keys, rotation and master-key rewrap."""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit
from core.changes import KEYS, announce
from core.db import Database
from core.db.models import DataKeyRow, KekUsageRow, ProviderKeyRow, TenantRow
from core.errors import KeyRetiredError, TenantDeleted, VaultError
from core.keys import fingerprint
from core.ports import Clock
from core.secret import Secret
from core.vault import DataKey, Vault


class KeyStatus(StrEnum):
    """A stored key's state."""

    ACTIVE = "active"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown about a stored key: never the key."""

    id: str
    provider: str
    fingerprint: str
    status: KeyStatus
    status_reason: str
    models: tuple[str, ...]
    created_at: datetime
    replaced_same_key: bool = False


def _info(row: ProviderKeyRow, *, same: bool = False) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        provider=row.provider,
        fingerprint=row.fingerprint,
        status=KeyStatus(row.status),
        status_reason=row.status_reason,
        models=tuple(row.models.get("models", [])),
        created_at=row.created_at,
        replaced_same_key=same,
    )


class Credentials:
    """Stores, lists, reveals and removes tenants' provider keys under envelope encryption."""

    def __init__(self, db: Database, vault: Vault, clock: Clock) -> None:
        self._db = db
        self.vault = vault
        self._clock = clock
        # Re-reads the master key file into the vault; True when the ring changed.
        self.reload_ring: Callable[[], bool] | None = None
        # Called with the tenant id after a key of theirs was stored, removed or marked dead
        # (committed): caches of what the agent uses drop it.
        self.listeners: list[Callable[[str], None]] = []

    def _changed(self, tenant_id: str) -> None:
        for listener in self.listeners:
            listener(tenant_id)

    async def load_wrap_counts(self) -> dict[int, int]:
        """Persisted wraps per master key version, to seed the vault at start."""
        async with self._db.session() as s:
            rows = await s.execute(select(KekUsageRow.version, KekUsageRow.wraps))
            return {v: w for v, w in rows.all()}

    async def _count_wrap(self, s: AsyncSession, version: int) -> None:
        # One upsert: an update-then-insert lets two first sign-ups both insert (PostgreSQL
        # then refuses the second with a duplicate key on pk_kek_usage).
        if self._db.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert  # type: ignore[assignment]
        statement = dialect_insert(KekUsageRow).values(version=version, wraps=1)
        await s.execute(
            statement.on_conflict_do_update(
                index_elements=[KekUsageRow.version],
                set_={"wraps": KekUsageRow.wraps + 1},
            )
        )

    async def create_data_key(self, s: AsyncSession, tenant_id: str) -> DataKey:
        """Make and store a tenant's data key inside the caller's transaction."""
        dek, wrapped = self.vault.new_data_key(tenant_id)
        version = Vault.kek_version_of(wrapped)
        s.add(
            DataKeyRow(
                tenant_id=tenant_id,
                kek_version=version,
                wrapped=wrapped,
                created_at=self._clock.now(),
            )
        )
        await self._count_wrap(s, version)
        return dek

    async def data_key(self, s: AsyncSession, tenant_id: str) -> DataKey:
        """Unwrap a tenant's data key; a shredded tenant has none."""
        wrapped = await s.scalar(
            select(DataKeyRow.wrapped).where(DataKeyRow.tenant_id == tenant_id)
        )
        if wrapped is None:
            raise TenantDeleted(tenant_id)
        try:
            return self.vault.unwrap(tenant_id, wrapped)
        except KeyRetiredError:
            # Another process rotated the master key (its file now has a newer version).
            if self.reload_ring is None or not self.reload_ring():
                raise
            return self.vault.unwrap(tenant_id, wrapped)

    async def store(
        self,
        tenant_id: str,
        provider: str,
        key: Secret,
        *,
        actor: str,
        models: Sequence[str] = (),
    ) -> KeyInfo:
        """Encrypt and store a key, replacing the tenant's current key for that provider."""
        now = self._clock.now()
        key_id = secrets.token_hex(16)
        async with self._db.session() as s, s.begin():
            # First, a write to the tenant's row: two stores of one tenant (a corrected key
            # landing on another replica) take turns, or both would read the old key and the
            # second delete would miss it (SQLite) or leave two current keys (PostgreSQL).
            await s.execute(
                update(TenantRow).where(TenantRow.id == tenant_id).values(id=TenantRow.id)
            )
            dek = await self.data_key(s, tenant_id)
            tag = dek.equality_tag(key.reveal())
            old = (
                await s.scalars(
                    select(ProviderKeyRow).where(
                        ProviderKeyRow.tenant_id == tenant_id, ProviderKeyRow.provider == provider
                    )
                )
            ).all()
            same = any(o.equality_tag == tag for o in old)
            version = max((o.version for o in old), default=0) + 1
            for o in old:
                await s.delete(o)
            row = ProviderKeyRow(
                id=key_id,
                tenant_id=tenant_id,
                provider=provider,
                version=version,
                ciphertext=self.vault.encrypt(
                    dek,
                    key.reveal().encode(),
                    secret_id=key_id,
                    provider=provider,
                    secret_version=version,
                ),
                fingerprint=fingerprint(key),
                equality_tag=tag,
                status=KeyStatus.ACTIVE.value,
                status_reason="",
                models={"models": list(models)},
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            audit.record(
                s,
                at=now,
                actor=actor,
                tenant_id=tenant_id,
                action="key.rotated" if old else "key.added",
                provider=provider,
                fingerprint=row.fingerprint,
            )
            await announce(s, KEYS, tenant_id)
        self._changed(tenant_id)
        return _info(row, same=same)

    async def list(self, tenant_id: str, *, session: AsyncSession | None = None) -> list[KeyInfo]:
        """The tenant's keys; in ``session`` when given (one session for a message's reads)."""
        if session is not None:
            return await self._list(session, tenant_id)
        async with self._db.session() as s:
            return await self._list(s, tenant_id)

    @staticmethod
    async def _list(s: AsyncSession, tenant_id: str) -> builtins.list[KeyInfo]:
        rows = (
            await s.scalars(
                select(ProviderKeyRow)
                .where(ProviderKeyRow.tenant_id == tenant_id)
                .order_by(ProviderKeyRow.provider)
            )
        ).all()
        return [_info(r) for r in rows]

    async def remove(self, tenant_id: str, provider: str, *, actor: str) -> KeyInfo | None:
        try:
            return await self._remove(tenant_id, provider, actor=actor)
        finally:
            self._changed(tenant_id)

    async def _remove(self, tenant_id: str, provider: str, *, actor: str) -> KeyInfo | None:
        now = self._clock.now()
        async with self._db.session() as s, s.begin():
            row = await s.scalar(
                select(ProviderKeyRow).where(
                    ProviderKeyRow.tenant_id == tenant_id, ProviderKeyRow.provider == provider
                )
            )
            if row is None:
                return None
            info = _info(row)
            await s.delete(row)
            audit.record(
                s,
                at=now,
                actor=actor,
                tenant_id=tenant_id,
                action="key.removed",
                provider=provider,
                fingerprint=row.fingerprint,
            )
            await announce(s, KEYS, tenant_id)
            return info

    async def reveal(
        self, tenant_id: str, provider: str, *, session: AsyncSession | None = None
    ) -> tuple[KeyInfo, Secret] | None:
        """Decrypt a tenant's active key for its own agent. Fails closed on any tampering.

        In ``session`` when given (one session for a message's reads).
        """
        if session is not None:
            return await self._reveal(session, tenant_id, provider)
        async with self._db.session() as s:
            return await self._reveal(s, tenant_id, provider)

    async def _reveal(
        self, s: AsyncSession, tenant_id: str, provider: str
    ) -> tuple[KeyInfo, Secret] | None:
        row = await s.scalar(
            select(ProviderKeyRow).where(
                ProviderKeyRow.tenant_id == tenant_id,
                ProviderKeyRow.provider == provider,
                ProviderKeyRow.status == KeyStatus.ACTIVE.value,
            )
        )
        if row is None:
            return None
        dek = await self.data_key(s, tenant_id)
        plain = self.vault.decrypt(
            dek,
            row.ciphertext,
            secret_id=row.id,
            provider=row.provider,
            secret_version=row.version,
        )
        return _info(row), Secret(plain.decode())

    def reading(self) -> AsyncSession:
        """A session for several reads in a row (``async with``)."""
        return self._db.session()

    async def mark_dead(self, tenant_id: str, key_id: str, *, reason: str) -> bool:
        """The provider refused the key (revoked or invalid); returns False if already marked."""
        try:
            return await self._mark_dead(tenant_id, key_id, reason=reason)
        finally:
            self._changed(tenant_id)

    async def _mark_dead(self, tenant_id: str, key_id: str, *, reason: str) -> bool:
        now = self._clock.now()
        async with self._db.session() as s, s.begin():
            res = await s.execute(
                update(ProviderKeyRow)
                .where(
                    ProviderKeyRow.id == key_id,
                    ProviderKeyRow.tenant_id == tenant_id,
                    ProviderKeyRow.status == KeyStatus.ACTIVE.value,
                )
                .values(status=KeyStatus.DEAD.value, status_reason=reason[:200], updated_at=now)
            )
            if res.rowcount == 0:  # type: ignore[attr-defined]
                return False
            audit.record(
                s,
                at=now,
                actor="system",
                tenant_id=tenant_id,
                action="key.dead",
                key_id=key_id,
                reason=reason,
            )
            await announce(s, KEYS, tenant_id)
            return True

    async def kek_versions_in_use(self) -> dict[int, int]:
        """Data keys per master key version."""
        async with self._db.session() as s:
            rows = await s.execute(
                select(DataKeyRow.kek_version, func.count()).group_by(DataKeyRow.kek_version)
            )
            return dict(rows.all())

    async def master_key_problem(self) -> tuple[int, int, VaultError] | None:
        """The first master key version whose data keys the loaded ring cannot open.

        Returns ``(version, data keys under it, error)``, or None when one stored data key per
        version in use unwraps (a wrong key fails GCM authentication on the first one).
        """
        counts = await self.kek_versions_in_use()
        async with self._db.session() as s:
            for version in sorted(counts):
                row = (
                    await s.execute(
                        select(DataKeyRow.tenant_id, DataKeyRow.wrapped)
                        .where(DataKeyRow.kek_version == version)
                        .limit(1)
                    )
                ).first()
                if row is None:
                    continue
                try:
                    self.vault.unwrap(row[0], row[1])
                except VaultError as exc:
                    return version, counts[version], exc
        return None

    async def rewrap_all(self, *, batch: int = 200) -> int:
        """Lift every data key to the primary master key, in committed batches.

        Idempotent and resumable: an interrupted run leaves every row readable (each row is
        rewritten whole in its own batch's transaction), and a rerun picks up what is left.
        """
        primary = self.vault.ring.primary_version
        done = 0
        while True:
            async with self._db.session() as s, s.begin():
                rows = (
                    await s.scalars(
                        select(DataKeyRow)
                        .where(DataKeyRow.kek_version < primary)
                        .order_by(DataKeyRow.tenant_id)
                        .limit(batch)
                    )
                ).all()
                if not rows:
                    return done
                now = self._clock.now()
                for row in rows:
                    row.wrapped = self.vault.rewrap(row.tenant_id, row.wrapped)
                    row.kek_version = Vault.kek_version_of(row.wrapped)
                    row.rewrapped_at = now
                    await self._count_wrap(s, row.kek_version)
                done += len(rows)
                audit.record(
                    s,
                    at=now,
                    actor="system",
                    action="master_key.rewrap",
                    count=len(rows),
                    version=primary,
                )
