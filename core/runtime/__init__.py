"""The hosted agent runtime: one isolated process per tenant, and the supervisor that runs them.

Wiring (the composition root)::

    supervisor = AgentSupervisor(profiles, memory, usage, key_health, config.agent,
                                 runtime_dir=config.resolve_path("data/agents"))
    await supervisor.warm()                                   # start the template once
    scheduler.add_job(supervisor.idle_job, "interval", seconds=60)
    ...
    await supervisor.aclose()                                 # at shutdown

``AgentSupervisor`` implements ``core.ports.Agents``. The worker side is
``core.runtime.worker``; the line protocol is ``core.runtime.protocol`` and
``docs/agent-protocol.md``.
"""

from __future__ import annotations

from core.runtime.compaction import estimate_tokens
from core.runtime.errors import ProtocolError, ReplyFailed
from core.runtime.launch import CommandLauncher, ForkserverLauncher, Launcher, WorkerHandle
from core.runtime.ports import (
    AgentProfile,
    InMemoryKeyHealth,
    InMemoryMemory,
    InMemoryProfiles,
    InMemoryUsage,
    KeyHealth,
    MemoryStore,
    ProfileSource,
    Turn,
    UsageRecord,
    UsageSink,
)
from core.runtime.supervisor import AgentStatus, AgentSupervisor, trim_turns

__all__ = [
    "AgentProfile",
    "AgentStatus",
    "AgentSupervisor",
    "CommandLauncher",
    "ForkserverLauncher",
    "InMemoryKeyHealth",
    "InMemoryMemory",
    "InMemoryProfiles",
    "InMemoryUsage",
    "KeyHealth",
    "Launcher",
    "MemoryStore",
    "ProfileSource",
    "ProtocolError",
    "ReplyFailed",
    "Turn",
    "UsageRecord",
    "UsageSink",
    "WorkerHandle",
    "estimate_tokens",
    "trim_turns",
]
