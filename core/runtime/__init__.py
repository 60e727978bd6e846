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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Where each name lives: the package loads a module on first use, so that a light part (the
# template's early start, ``core.runtime.prestart``) does not pull in the supervisor and the
# LLM clients with it.
_HOMES = {
    "estimate_tokens": "core.runtime.compaction",
    "ProtocolError": "core.runtime.errors",
    "ReplyFailed": "core.runtime.errors",
    "CommandLauncher": "core.runtime.launch",
    "ForkserverLauncher": "core.runtime.launch",
    "Launcher": "core.runtime.launch",
    "WorkerHandle": "core.runtime.launch",
    "AgentStatus": "core.runtime.supervisor",
    "AgentSupervisor": "core.runtime.supervisor",
    "trim_turns": "core.runtime.supervisor",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name, "core.runtime.ports" if name in __all__ else None)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


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
