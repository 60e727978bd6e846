"""The database side of the hosted agent: profiles, encrypted memory and key health.

Memory is a JSON list of turns encrypted with the tenant's data key (``purpose="memory"``,
bound to the conversation id), so deleting the tenant shreds it with everything else.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.cache import LISTENING_SECONDS, TTLCache
from core.config import Config, PlanSettings
from core.credentials import Credentials, KeyInfo, KeyStatus
from core.db import Database
from core.db.models import MemoryRow, NotesRow
from core.errors import AgentUnavailable, DecryptionError, TenantNotFound
from core.mcp_servers import McpServers
from core.plans import PlanCatalog
from core.ports import Clock
from core.proxy.config import ProxySettings
from core.proxy_tokens import ProxyTokens
from core.runtime.ports import AgentProfile, StoredNote, Turn
from core.secret import Secret
from core.tenants import Tenants, TenantStatus, TenantView
from core.vault import decrypt_blob, encrypt_blob

log = logging.getLogger("byokbot.memory")

DEFAULT_PERSONA = (
    "You are a helpful, concise assistant talking with one person in a chat app. "
    "Answer in the language they write in."
)


def pick_key(config: Config, tenant: TenantView, keys: Sequence[KeyInfo]) -> KeyInfo | None:
    """The stored key the agent uses.

    The chosen provider's, else the first active one in the operator's provider order, else
    the first key (so a dead one is reported as such).
    """
    chosen = next((k for k in keys if k.provider == tenant.provider), None)
    if chosen is not None or not keys:
        return chosen
    order = list(config.providers)
    ranked = sorted(
        keys, key=lambda k: order.index(k.provider) if k.provider in order else len(order)
    )
    return next((k for k in ranked if k.status is KeyStatus.ACTIVE), ranked[0])


def managed_model(plan: PlanSettings, tenant: TenantView) -> str:
    """The curated model a managed tenant uses: its choice if the plan has it, else the first."""
    return tenant.model if tenant.model and tenant.model in plan.models else plan.models[0]


def current_model(
    config: Config, plan: PlanSettings, tenant: TenantView, keys: Sequence[KeyInfo]
) -> tuple[str, str] | None:
    """``(provider id, model id)`` the agent answers with now.

    The provider is ``"managed"`` on a managed plan; None while a BYOK tenant has no key of a
    provider the operator allows.
    """
    if not plan.byok:
        return "managed", managed_model(plan, tenant)
    chosen = pick_key(config, tenant, keys)
    provider = config.providers.get(chosen.provider) if chosen is not None else None
    if provider is None:
        return None
    picked = tenant.model if tenant.provider == provider.id and tenant.model else None
    return provider.id, picked or provider.default_model


def offered_tools(config: Config, plan: PlanSettings) -> tuple[str, ...]:
    """The agent tools a plan offers: its switches, web_search only with a backend."""
    if config.agent.max_tool_steps == 0:
        return ()
    names = plan.tools.names()
    if not config.tools.web_search.backend:
        names = tuple(n for n in names if n != "web_search")
    return names


class ProxyAccess:
    """How a managed tenant's agent reaches the metering proxy: API kind, URL, scoped token.

    One token per tenant is issued when its agent first needs one and reused for every
    request (the supervisor compares profiles on each message); ``forget`` drops it after a
    revocation or a refusal, and the generation in ``key_id`` then moves the tenant to a new
    agent process with a fresh token.
    """

    def __init__(self, settings: ProxySettings, tokens: ProxyTokens) -> None:
        self._settings = settings
        self._tokens = tokens
        self._issued: dict[str, tuple[int, Secret]] = {}
        self._generation = 0
        # Called with the tenant id when its token is dropped (the cached profile carries it).
        self.listeners: list[Callable[[str], None]] = []

    async def __call__(self, tenant_id: str, model: str) -> tuple[str, str, str, Secret]:
        """(provider kind, base URL, key id, token) for ``model`` of a managed plan."""
        if not self._settings.enabled:
            raise AgentUnavailable("proxy_off")
        route = self._settings.models.get(model)
        if route is None:
            raise AgentUnavailable("model_not_in_plan")
        kind = self._settings.upstreams[route.upstream].kind
        base = self._settings.url if kind == "anthropic" else self._settings.url + "/v1"
        issued = await self._token(tenant_id)
        return kind, base, f"managed:{issued[0]}", issued[1]

    async def transcription(self, tenant_id: str) -> tuple[str, Secret]:
        """(OpenAI-compatible base URL, token) for a managed tenant's voice notes.

        The same scoped token as the tenant's agent: the bot never holds a provider key for a
        managed tenant. Raises ``AgentUnavailable("proxy_off")`` when the proxy is off or
        offers no transcription.
        """
        if not self._settings.enabled or self._settings.transcription is None:
            raise AgentUnavailable("proxy_off")
        return self._settings.url + "/v1", (await self._token(tenant_id))[1]

    async def _token(self, tenant_id: str) -> tuple[int, Secret]:
        issued = self._issued.get(tenant_id)
        if issued is None:
            self._generation += 1
            issued = (self._generation, await self._tokens.issue(tenant_id))
            self._issued[tenant_id] = issued
        return issued

    def forget(self, tenant_id: str) -> None:
        self._issued.pop(tenant_id, None)
        for listener in self.listeners:
            listener(tenant_id)

    async def revoke(self, tenant_id: str, *, actor: str) -> None:
        """Plan change, suspension or deletion: every token of the tenant stops working."""
        self.forget(tenant_id)
        await self._tokens.revoke_all(tenant_id, actor=actor)


class DatabaseProfiles:
    """Resolves a tenant's agent profile from its plan, chosen model, keys and persona.

    Every message needs its tenant's profile: a resolved one is kept per tenant and dropped by
    every change that touches it, made here (tenant, keys, MCP servers, proxy token) or
    announced by another replica (``core.changes``: the composition root calls ``forget``).
    Entries live ``cache_seconds`` (what another process's unannounced change may lag), or
    ``listening_seconds`` while ``listening()`` says the change feed is connected, since then
    every change is heard (and every reconnection drops everything).
    """

    def __init__(
        self,
        config: Config,
        plans: PlanCatalog,
        tenants: Tenants,
        credentials: Credentials,
        *,
        managed: ProxyAccess | None = None,
        mcp: McpServers | None = None,
        cache_seconds: float = 5.0,
        listening_seconds: float = LISTENING_SECONDS,
    ) -> None:
        self._mcp = mcp
        self._config = config
        self._plans = plans
        self._tenants = tenants
        self._credentials = credentials
        self._managed = managed
        self._cache: TTLCache[str, AgentProfile] = TTLCache(ttl=cache_seconds)
        self._listening_seconds = listening_seconds
        self.listening: Callable[[], bool] = lambda: False
        tenants.listeners.append(self.forget)
        credentials.listeners.append(self.forget)
        if mcp is not None:
            mcp.listeners.append(self.forget)
        if managed is not None:
            managed.listeners.append(self.forget)

    def forget(self, tenant_id: str | None = None) -> None:
        """Drop the cached profile of ``tenant_id`` (of every tenant when None)."""
        if tenant_id is None:
            self._cache.clear()
        else:
            self._cache.invalidate(tenant_id)

    async def profile(self, tenant_id: str) -> AgentProfile:
        ttl = self._listening_seconds if self.listening() else None
        hit, cached = self._cache.get(tenant_id, ttl=ttl)
        if hit and cached is not None:
            return cached
        since = self._cache.generation
        resolved = await self._resolve(tenant_id)  # a refusal is not kept: it is re-read
        self._cache.put(tenant_id, resolved, since=since)
        return resolved

    async def _resolve(self, tenant_id: str) -> AgentProfile:
        try:
            tenant = await self._tenants.get(tenant_id)
        except TenantNotFound:
            raise AgentUnavailable("no_key") from None
        # The keys and the MCP servers are read in one session, and nothing else is read while
        # it holds its connection (a second one per message could drain the pool under load).
        async with self._credentials.reading() as s:
            return await self._resolve_in(s, tenant)

    async def _resolve_in(self, s: AsyncSession, tenant: TenantView) -> AgentProfile:
        tenant_id = tenant.id
        profile = await self._profile(s, tenant)
        if self._mcp is None or self._config.agent.max_tool_steps == 0:
            return profile
        if profile.key_id.startswith("managed:") and not profile.tools:
            return profile  # the curated model takes no tool calls
        plan = self._plans.get(tenant.plan)
        if not plan.tools.mcp:
            return profile
        servers = await self._mcp.reveal(tenant_id, session=s)
        names = tuple(f"mcp:{m.name}" for m in servers)
        return dataclasses.replace(profile, tools=profile.tools + names, mcp=servers)

    async def _profile(self, s: AsyncSession, tenant: TenantView) -> AgentProfile:
        tenant_id = tenant.id
        if tenant.status is TenantStatus.SUSPENDED:
            raise AgentUnavailable("suspended")
        if tenant.status is TenantStatus.DELETED:
            raise AgentUnavailable("no_key")
        if tenant.paused:
            raise AgentUnavailable("paused")
        agent = self._config.agent
        persona = tenant.persona or DEFAULT_PERSONA
        plan = self._plans.get(tenant.plan)
        if not plan.byok:
            if self._managed is None:
                raise AgentUnavailable("proxy_off")
            model = managed_model(plan, tenant)
            kind, base_url, key_id, token = await self._managed(tenant_id, model)
            route = self._config.proxy.models.get(model)
            return AgentProfile(
                tenant_id=tenant_id,
                provider_kind=kind,
                base_url=base_url,
                api_key=token,
                key_id=key_id,
                model=model,
                persona=persona,
                max_reply_tokens=agent.max_reply_tokens,
                context_tokens=agent.context_tokens,
                # The curated catalog says which models take tool calls.
                tools=offered_tools(self._config, plan) if route is None or route.tools else (),
            )
        keys = list(await self._credentials.list(tenant_id, session=s))
        if not keys:
            raise AgentUnavailable("no_key")
        chosen = pick_key(self._config, tenant, keys)
        assert chosen is not None  # noqa: S101 - keys is not empty
        if chosen.status is not KeyStatus.ACTIVE:
            raise AgentUnavailable("invalid_key")
        choice = current_model(self._config, plan, tenant, keys)
        provider = self._config.providers.get(choice[0]) if choice is not None else None
        if choice is None or provider is None:
            raise AgentUnavailable("no_key")
        revealed = await self._credentials.reveal(tenant_id, provider.id, session=s)
        if revealed is None:
            raise AgentUnavailable("no_key")
        info, key = revealed
        return AgentProfile(
            tenant_id=tenant_id,
            provider_kind=provider.kind,
            base_url=provider.base_url,
            api_key=key,
            key_id=info.id,
            model=choice[1],
            persona=persona,
            max_reply_tokens=agent.max_reply_tokens,
            context_tokens=agent.context_tokens,
            tools=offered_tools(self._config, plan),
        )


class DatabaseMemory:
    """Conversation memory encrypted under the tenant's data key.

    Every save bumps the row's ``version`` and binds it into the blob's associated data; the
    highest version this process has seen per conversation is remembered too. A blob that
    does not open under its row's version, or a row older than one already seen (an old row
    copied back), is refused: logged without content, and the conversation starts afresh
    rather than trusting it.
    """

    def __init__(self, db: Database, credentials: Credentials, clock: Clock) -> None:
        self._db = db
        self._credentials = credentials
        self._clock = clock
        self._seen: dict[tuple[str, str], int] = {}

    async def load(self, tenant_id: str, conversation: str) -> list[Turn]:
        async with self._db.session() as s:
            found = (
                await s.execute(
                    select(MemoryRow.blob, MemoryRow.version).where(
                        MemoryRow.tenant_id == tenant_id, MemoryRow.conversation == conversation
                    )
                )
            ).first()
            if found is None:
                return []
            blob, version = found
            dek = await self._credentials.data_key(s, tenant_id)
        seen = self._seen.get((tenant_id, conversation), 0)
        try:
            if version < seen:
                raise DecryptionError("memory is older than a version already read")
            data = json.loads(
                decrypt_blob(
                    dek, blob, purpose="memory", object_id=conversation, version=version or None
                )
            )
            if not isinstance(data, list):
                raise DecryptionError("memory is not a list of turns")
        except (DecryptionError, ValueError) as exc:
            log.warning(
                "memory of tenant %s refused (%s; rolled back or tampered): "
                "the conversation starts afresh",
                tenant_id,
                exc,
            )
            return []
        self._seen[(tenant_id, conversation)] = version
        return [Turn(str(t["role"]), str(t["content"])) for t in data]

    async def save(self, tenant_id: str, conversation: str, turns: Sequence[Turn]) -> None:
        payload = json.dumps([{"role": t.role, "content": t.content} for t in turns]).encode()
        key = (tenant_id, conversation)
        async with self._db.session() as s, s.begin():
            dek = await self._credentials.data_key(s, tenant_id)
            row = await s.get(MemoryRow, (tenant_id, conversation))
            # Never reuse a version: past the stored one and past any this process has seen.
            version = max(row.version if row is not None else 0, self._seen.get(key, 0)) + 1
            blob = encrypt_blob(
                dek, payload, purpose="memory", object_id=conversation, version=version
            )
            if row is None:
                s.add(
                    MemoryRow(
                        tenant_id=tenant_id,
                        conversation=conversation,
                        blob=blob,
                        version=version,
                        updated_at=self._clock.now(),
                    )
                )
            else:
                row.blob = blob
                row.version = version
                row.updated_at = self._clock.now()
        self._seen[key] = version

    async def clear(self, tenant_id: str, conversation: str) -> None:
        # An empty memory at the next version rather than no row: the stored version keeps
        # growing, so an old row copied back after /reset is still refused after a restart.
        await self.save(tenant_id, conversation, [])


class DatabaseNotes:
    """A person's long-term notes: one JSON list per tenant, encrypted with its data key.

    ``purpose="notes"`` and the tenant id are bound into the blob, and a version as for
    ``DatabaseMemory`` (an old blob copied back is refused). Deleting the tenant deletes the
    row and shreds the key that opens it.
    """

    def __init__(
        self, db: Database, credentials: Credentials, clock: Clock, *, limit: int = 100
    ) -> None:
        self._db = db
        self._credentials = credentials
        self._clock = clock
        self._limit = limit
        self._seen: dict[str, int] = {}

    async def load(self, tenant_id: str) -> list[StoredNote]:
        async with self._db.session() as s:
            return (await self._read(s, tenant_id))[0]

    async def _read(self, s: AsyncSession, tenant_id: str) -> tuple[list[StoredNote], int]:
        row = await s.get(NotesRow, tenant_id)
        if row is None:
            return [], 0
        dek = await self._credentials.data_key(s, tenant_id)
        try:
            if row.version < self._seen.get(tenant_id, 0):
                raise DecryptionError("notes are older than a version already read")
            raw = decrypt_blob(
                dek, row.blob, purpose="notes", object_id=tenant_id, version=row.version
            )
            data = json.loads(raw)
            if not isinstance(data, list):
                raise DecryptionError("notes are not a list")
            notes = [StoredNote(str(n["id"]), str(n["text"])) for n in data]
        except (DecryptionError, ValueError, KeyError, TypeError) as exc:
            log.warning("notes of tenant %s refused (%s): starting afresh", tenant_id, exc)
            return [], row.version
        self._seen[tenant_id] = row.version
        return notes, row.version

    async def _write(self, tenant_id: str, change: Callable[[list[StoredNote]], bool]) -> bool:
        async with self._db.session() as s, s.begin():
            notes, stored = await self._read(s, tenant_id)
            if not change(notes):
                return False
            version = max(stored, self._seen.get(tenant_id, 0)) + 1
            payload = json.dumps([{"id": n.id, "text": n.text} for n in notes]).encode()
            dek = await self._credentials.data_key(s, tenant_id)
            blob = encrypt_blob(dek, payload, purpose="notes", object_id=tenant_id, version=version)
            row = await s.get(NotesRow, tenant_id)
            if row is None:
                s.add(
                    NotesRow(
                        tenant_id=tenant_id,
                        blob=blob,
                        version=version,
                        updated_at=self._clock.now(),
                    )
                )
            else:
                row.blob, row.version, row.updated_at = blob, version, self._clock.now()
        self._seen[tenant_id] = version
        return True

    async def add(self, tenant_id: str, note_id: str, text: str) -> bool:
        def change(notes: list[StoredNote]) -> bool:
            if len(notes) >= self._limit or any(n.id == note_id for n in notes):
                return False
            notes.append(StoredNote(note_id, text))
            return True

        return await self._write(tenant_id, change)

    async def forget(self, tenant_id: str, note_id: str) -> bool:
        def change(notes: list[StoredNote]) -> bool:
            before = len(notes)
            notes[:] = [n for n in notes if n.id != note_id]
            return len(notes) < before

        return await self._write(tenant_id, change)

    async def clear(self, tenant_id: str) -> int:
        count = 0

        def change(notes: list[StoredNote]) -> bool:
            nonlocal count
            count = len(notes)
            notes.clear()
            return count > 0

        await self._write(tenant_id, change)
        return count


class DatabaseKeyHealth:
    """Marks a key dead when its provider refuses it, so the next message asks for rotation."""

    def __init__(self, credentials: Credentials, *, proxy: ProxyAccess | None = None) -> None:
        self._credentials = credentials
        self._proxy = proxy

    async def key_dead(self, tenant_id: str, key_id: str, reason: str) -> None:
        if key_id.startswith("managed:"):
            # The proxy refused our own scoped token (revoked, or the tenant left the plan):
            # the next message gets a fresh one if the tenant is still entitled to it.
            if self._proxy is not None:
                self._proxy.forget(tenant_id)
            return
        await self._credentials.mark_dead(tenant_id, key_id, reason=reason)
