"""The agents' profiles are cached per tenant, and every change that touches one is seen at once.

This process's own writes (persona, key rotation, removal, a key refused, MCP servers) drop the
cached profile; another process's write is heard through the PostgreSQL change feed
(``core.changes``), wired here the way ``bot.app`` wires it. On SQLite nothing is announced:
another process's change waits for the cache's seconds, as for the tenants' cache.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from core.agent_data import DatabaseProfiles
from core.changes import KEYS, TENANT, ChangeFeed
from core.chat import Platform, UserRef
from core.config import Config
from core.credentials import Credentials
from core.db import Database, upgrade
from core.errors import AgentUnavailable
from core.mcp_servers import McpServers
from core.plans import PlanCatalog
from core.ports import ManualClock
from core.secret import Secret
from core.tenants import Tenants
from core.vault import MasterKeyRing, Vault
from tests.canaries import anthropic_key
from tests.fakes.agents import eventually


@dataclass
class Process:
    """One bot process's services over the shared database."""

    db: Database
    tenants: Tenants
    credentials: Credentials
    mcp: McpServers
    profiles: DatabaseProfiles


def _process(url: str, ring: MasterKeyRing) -> Process:
    db = Database(url)
    clock = ManualClock()
    config = Config()
    credentials = Credentials(db, Vault(ring), clock)
    tenants = Tenants(db, credentials, PlanCatalog(config.plans), clock)
    mcp = McpServers(db, credentials, clock)
    profiles = DatabaseProfiles(config, PlanCatalog(config.plans), tenants, credentials, mcp=mcp)
    return Process(db, tenants, credentials, mcp, profiles)


@pytest.fixture
async def two(db_url: str) -> AsyncIterator[tuple[Process, Process]]:
    await upgrade(db_url)
    ring = MasterKeyRing.parse(base64.b64encode(os.urandom(32)).decode(), source="t")
    mine, theirs = _process(db_url, ring), _process(db_url, ring)
    yield mine, theirs
    await mine.db.dispose()
    await theirs.db.dispose()


async def _tenant(p: Process, key: str) -> str:
    t = await p.tenants.sign_up(UserRef(Platform.TELEGRAM, "4242"), "byok", dm_chat_id="4242")
    await p.credentials.store(t.id, "anthropic", Secret(key), actor="test")
    return t.id


async def test_this_process_s_own_changes_reach_the_cached_profile_at_once(
    two: tuple[Process, Process],
) -> None:
    mine, _ = two
    first, second = anthropic_key(), anthropic_key()
    tid = await _tenant(mine, first)
    profile = await mine.profiles.profile(tid)
    assert profile.api_key.reveal() == first
    # Served from memory: the same object until something changes.
    assert await mine.profiles.profile(tid) is profile

    await mine.tenants.set_persona(tid, "You are a pirate.", actor="test")
    assert (await mine.profiles.profile(tid)).persona == "You are a pirate."
    await mine.tenants.set_model(tid, "anthropic", "model-small", actor="test")
    assert (await mine.profiles.profile(tid)).model == "model-small"

    await mine.credentials.store(tid, "anthropic", Secret(second), actor="test")
    rotated = await mine.profiles.profile(tid)
    assert rotated.api_key.reveal() == second

    await mine.mcp.add(tid, "notes", "https://mcp.example.com/sse", actor="test")
    await mine.mcp.set_token(tid, "notes", Secret("mcp-token-0123456789"), actor="test")
    with_mcp = await mine.profiles.profile(tid)
    assert [m.name for m in with_mcp.mcp] == ["notes"]
    await mine.mcp.remove(tid, "notes", actor="test")
    assert (await mine.profiles.profile(tid)).mcp == ()

    await mine.credentials.mark_dead(tid, rotated.key_id, reason="revoked by the provider")
    with pytest.raises(AgentUnavailable) as dead:
        await mine.profiles.profile(tid)
    assert dead.value.reason == "invalid_key"

    await mine.credentials.store(tid, "anthropic", Secret(first), actor="test")
    assert (await mine.profiles.profile(tid)).api_key.reveal() == first
    await mine.tenants.suspend(tid, actor="test", reason="abuse")
    with pytest.raises(AgentUnavailable) as suspended:
        await mine.profiles.profile(tid)
    assert suspended.value.reason == "suspended"


async def test_another_process_s_change_is_seen_as_soon_as_the_change_feed_hears_it(
    two: tuple[Process, Process], db_url: str
) -> None:
    mine, theirs = two
    first, second = anthropic_key(), anthropic_key()
    tid = await _tenant(mine, first)
    assert (await mine.profiles.profile(tid)).api_key.reveal() == first

    if db_url.startswith("sqlite"):
        # One process on SQLite: nothing is announced, a second process's change waits for
        # the cache's seconds (the read below is served from memory).
        await theirs.credentials.store(tid, "anthropic", Secret(second), actor="test")
        assert (await mine.profiles.profile(tid)).api_key.reveal() == first
        mine.profiles.forget(tid)
        assert (await mine.profiles.profile(tid)).api_key.reveal() == second
        return

    feed = ChangeFeed(db_url)
    # As bot.app wires it: tenants' changes drop the tenants' cache (and with it every
    # profile), key and MCP changes the tenant's profile.
    feed.on(TENANT, lambda _tid: mine.tenants.changed())
    feed.on(KEYS, mine.profiles.forget)
    mine.profiles.listening = feed.connected.is_set
    await feed.start()
    try:
        assert feed.connected.is_set()
        await theirs.credentials.store(tid, "anthropic", Secret(second), actor="test")
        await eventually(lambda: feed.heard >= 1)
        assert (await mine.profiles.profile(tid)).api_key.reveal() == second

        await theirs.tenants.set_persona(tid, "Answer in verse.", actor="test")
        await eventually(lambda: feed.heard >= 2)
        assert (await mine.profiles.profile(tid)).persona == "Answer in verse."

        await theirs.mcp.add(tid, "files", "https://mcp.example.com/files", actor="test")
        await theirs.mcp.set_token(tid, "files", Secret("mcp-token-abcdefghij"), actor="test")
        await eventually(lambda: feed.heard >= 4)
        assert [m.name for m in (await mine.profiles.profile(tid)).mcp] == ["files"]

        await theirs.credentials.remove(tid, "anthropic", actor="test")
        await eventually(lambda: feed.heard >= 5)
        with pytest.raises(AgentUnavailable) as gone:
            await mine.profiles.profile(tid)
        assert gone.value.reason == "no_key"
    finally:
        await feed.stop()
