"""Helpers for agent-runtime tests: a supervisor wired to in-memory ports and the fake provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from core.config import AgentSettings, ConversationSettings
from core.runtime.launch import Launcher
from core.runtime.ports import (
    AgentProfile,
    InMemoryKeyHealth,
    InMemoryMemory,
    InMemoryProfiles,
    InMemoryUsage,
)
from core.runtime.supervisor import AgentSupervisor
from core.secret import Secret
from tests.fakes.llm_server import FakeLLMServer


def profile_for(
    fake: FakeLLMServer, tenant_id: str, key: str, *, kind: str = "anthropic", key_id: str = "k1"
) -> AgentProfile:
    return AgentProfile(
        tenant_id=tenant_id,
        provider_kind=kind,
        base_url=fake.anthropic_url if kind == "anthropic" else fake.openai_url,
        api_key=Secret(key),
        key_id=key_id,
        model="model-large",
        persona="You are terse.",
        max_reply_tokens=200,
        context_tokens=4000,
    )


@dataclass
class Rig:
    """A supervisor and everything it talks to."""

    sup: AgentSupervisor
    fake: FakeLLMServer
    profiles: InMemoryProfiles
    memory: InMemoryMemory
    usage: InMemoryUsage
    health: InMemoryKeyHealth
    now: list[float]

    def tenant(self, tenant_id: str, key: str, **kwargs: str) -> AgentProfile:
        profile = profile_for(self.fake, tenant_id, key, **kwargs)
        self.profiles.set(profile)
        return profile

    def rotate(self, tenant_id: str, key: str, key_id: str) -> None:
        current = self.profiles.get(tenant_id)
        assert current is not None
        self.profiles.set(replace(current, api_key=Secret(key), key_id=key_id))

    async def say(self, tenant_id: str, text: str, conversation: str = "chat") -> str:
        return "".join([c async for c in self.sup.reply(tenant_id, conversation, text)])

    def pids(self, tenant_id: str) -> list[int]:
        return [s.pid for s in self.sup.status() if s.tenant_id == tenant_id]


@asynccontextmanager
async def rig(
    runtime_dir: Path,
    *,
    settings: AgentSettings | None = None,
    launcher: Callable[[], Launcher] | None = None,
    fake: FakeLLMServer | None = None,
    conversations: ConversationSettings | None = None,
) -> AsyncIterator[Rig]:
    now = [1000.0]
    async with fake or FakeLLMServer() as server:
        profiles, memory = InMemoryProfiles(), InMemoryMemory()
        usage, health = InMemoryUsage(), InMemoryKeyHealth()
        sup = AgentSupervisor(
            profiles,
            memory,
            usage,
            health,
            settings or AgentSettings(request_timeout_seconds=10),
            runtime_dir=runtime_dir,
            launcher=launcher() if launcher else None,
            clock=lambda: now[0],
            conversations=conversations,
        )
        try:
            yield Rig(sup, server, profiles, memory, usage, health, now)
        finally:
            await sup.aclose()


async def eventually(check: Callable[[], bool], *, tries: int = 500) -> None:
    """Wait (up to ~5 s) for ``check`` to hold; an assertion that follows says what failed."""
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.01)


def proc_file(pid: int, name: str) -> bytes:
    """``/proc/<pid>/<name>`` as bytes (a sync helper: the read is tiny and local)."""
    return Path(f"/proc/{pid}/{name}").read_bytes()


def agent_logs(runtime_dir: Path) -> str:
    """Every agent's ``agent.log`` under ``runtime_dir``, concatenated."""
    return "".join(p.read_text() for p in sorted(runtime_dir.glob("*/agent.log")))
