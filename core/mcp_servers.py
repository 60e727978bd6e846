"""A tenant's remote MCP servers (``/mcp``): name, URL, and a token sealed with its data key.

The token arrives through the same one-time private intake as API keys (the session's
``provider`` is ``mcp:<name>``), is encrypted like a provider key (bound to the tenant, the
row, ``mcp:<name>`` and a version that grows on every rotation), and only ever leaves
decrypted in the tenant's agent profile, for its own sandboxed agent.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit
from core.changes import KEYS, announce
from core.credentials import Credentials
from core.db import Database
from core.db.models import McpServerRow
from core.keys import fingerprint
from core.ports import Clock
from core.runtime.protocol import McpServer
from core.secret import Secret

NAME: Final = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MAX_TOKEN_CHARS: Final = 4096


class BadMcpServer(ValueError):
    """A name or URL that cannot be used; the text says which rule it broke."""


@dataclass(frozen=True, slots=True)
class McpServerInfo:
    """One server as ``/mcp`` lists it (never the token)."""

    name: str
    url: str
    fingerprint: str  # "" while the token has not arrived
    created_at: datetime


def check_name(name: str) -> str:
    """The server's name, lower-cased; ``BadMcpServer`` unless it is a short identifier."""
    value = name.strip().lower()
    if not NAME.match(value):
        raise BadMcpServer("name")
    return value


def check_url(url: str, allowed: tuple[str, ...] = ()) -> str:
    """An ``https://`` (or ``http://`` on an allowed network) URL without credentials."""
    value = url.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(value) > 2000:
        raise BadMcpServer("url")
    if parts.username or parts.password:
        raise BadMcpServer("credentials")
    try:
        port = parts.port
    except ValueError:
        raise BadMcpServer("url") from None
    del port
    from core.runtime.tools.web import is_public

    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        literal = None
    if literal is not None and not is_public(literal, allowed):
        raise BadMcpServer("private")
    # The token must not cross the internet in clear: plain http only to an allowed network.
    nets = [ipaddress.ip_network(n, strict=False) for n in allowed]
    if parts.scheme != "https" and (literal is None or not any(literal in n for n in nets)):
        raise BadMcpServer("https")
    return value


class McpServers:
    """The ``mcp_servers`` table behind ``/mcp`` and the agent profile."""

    def __init__(self, db: Database, credentials: Credentials, clock: Clock) -> None:
        self._db = db
        self._credentials = credentials
        self._clock = clock
        # Called with the tenant id after a change here (committed): the agent's cached
        # profile carries the servers. Other replicas hear it as a KEYS change.
        self.listeners: list[Callable[[str], None]] = []

    def _changed(self, tenant_id: str) -> None:
        for listener in self.listeners:
            listener(tenant_id)

    async def list(self, tenant_id: str) -> list[McpServerInfo]:
        async with self._db.session() as s:
            rows = (
                await s.scalars(
                    select(McpServerRow)
                    .where(McpServerRow.tenant_id == tenant_id)
                    .order_by(McpServerRow.name)
                )
            ).all()
            return [McpServerInfo(r.name, r.url, r.fingerprint, r.created_at) for r in rows]

    async def add(self, tenant_id: str, name: str, url: str, *, actor: str) -> None:
        """Record a server (its token comes next, through the intake); replaces the URL."""
        now = self._clock.now()
        async with self._db.session() as s, s.begin():
            row = await s.scalar(
                select(McpServerRow).where(
                    McpServerRow.tenant_id == tenant_id, McpServerRow.name == name
                )
            )
            if row is None:
                s.add(
                    McpServerRow(
                        id=secrets.token_hex(16),
                        tenant_id=tenant_id,
                        name=name,
                        url=url,
                        version=0,
                        ciphertext=b"",
                        fingerprint="",
                        created_at=now,
                        updated_at=now,
                    )
                )
            else:
                row.url = url
                row.updated_at = now
            audit.record(
                s, at=now, actor=actor, tenant_id=tenant_id, action="mcp.added", server=name
            )
            await announce(s, KEYS, tenant_id)
        self._changed(tenant_id)

    async def exists(self, tenant_id: str, name: str) -> bool:
        async with self._db.session() as s:
            found = await s.scalar(
                select(McpServerRow.id).where(
                    McpServerRow.tenant_id == tenant_id, McpServerRow.name == name
                )
            )
            return found is not None

    async def set_token(
        self, tenant_id: str, name: str, token: Secret, *, actor: str
    ) -> str | None:
        """Seal the token (a rotation bumps the version); its fingerprint, None if no server."""
        now = self._clock.now()
        async with self._db.session() as s, s.begin():
            row = await s.scalar(
                select(McpServerRow).where(
                    McpServerRow.tenant_id == tenant_id, McpServerRow.name == name
                )
            )
            if row is None:
                return None
            dek = await self._credentials.data_key(s, tenant_id)
            rotated = bool(row.fingerprint)
            row.version += 1
            row.ciphertext = self._credentials.vault.encrypt(
                dek,
                token.reveal().encode(),
                secret_id=row.id,
                provider=f"mcp:{name}",
                secret_version=row.version,
            )
            row.fingerprint = fingerprint(token)
            row.updated_at = now
            audit.record(
                s,
                at=now,
                actor=actor,
                tenant_id=tenant_id,
                action="mcp.token_rotated" if rotated else "mcp.token_added",
                server=name,
                fingerprint=row.fingerprint,
            )
            await announce(s, KEYS, tenant_id)
            sealed = row.fingerprint
        self._changed(tenant_id)
        return sealed

    async def remove(self, tenant_id: str, name: str, *, actor: str) -> bool:
        now = self._clock.now()
        async with self._db.session() as s, s.begin():
            row = await s.scalar(
                select(McpServerRow).where(
                    McpServerRow.tenant_id == tenant_id, McpServerRow.name == name
                )
            )
            if row is None:
                return False
            await s.delete(row)
            audit.record(
                s, at=now, actor=actor, tenant_id=tenant_id, action="mcp.removed", server=name
            )
            await announce(s, KEYS, tenant_id)
        self._changed(tenant_id)
        return True

    async def reveal(
        self, tenant_id: str, *, session: AsyncSession | None = None
    ) -> tuple[McpServer, ...]:
        """Every server with a token, decrypted for the tenant's own agent (fails closed).

        In ``session`` when given (one session for a message's reads).
        """
        if session is not None:
            return await self._reveal(session, tenant_id)
        async with self._db.session() as s:
            return await self._reveal(s, tenant_id)

    async def _reveal(self, s: AsyncSession, tenant_id: str) -> tuple[McpServer, ...]:
        rows = (
            await s.scalars(
                select(McpServerRow)
                .where(McpServerRow.tenant_id == tenant_id, McpServerRow.version > 0)
                .order_by(McpServerRow.name)
            )
        ).all()
        if not rows:
            return ()
        dek = await self._credentials.data_key(s, tenant_id)
        out: list[McpServer] = []
        for row in rows:
            plain = self._credentials.vault.decrypt(
                dek,
                row.ciphertext,
                secret_id=row.id,
                provider=f"mcp:{row.name}",
                secret_version=row.version,
            )
            out.append(McpServer(row.name, row.url, Secret(plain.decode())))
        return tuple(out)
