"""The agent's built-in tools, run inside the (confined) agent process.

Each tool is a ``Tool``: a name, a ``ToolSpec`` the model sees, a ``target`` for the chat's
status line, and ``run``. They need nothing but outbound TCP (and DNS) and the agent's memory:
long-term notes arrive with each request and leave as ``note`` events, so the agent never
touches the database.

Adding a tool is one small step: write a ``Tool`` (see ``notes.py`` for the simplest), add it
to ``BUILTIN`` below, add a status line for its name to ``bot/texts.py`` (``TOOL_STATUS``) and
a switch to ``core.config.ToolSwitches`` (``TOOL_NAMES`` there maps switches to tool names).
The control plane offers a tool per request by name; the agent runs only tools it knows.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from core.llm import ToolSpec

if TYPE_CHECKING:
    import httpx

    from core.runtime import protocol


class ToolFailed(Exception):
    """A tool could not do what was asked; the text goes back to the model as an error."""


@dataclass(slots=True)
class ToolContext:
    """What a running tool may use: settings, HTTP, this request's notes, and a way to emit."""

    config: protocol.ToolConfig
    http: httpx.AsyncClient
    notes: list[protocol.Note]
    emit: Callable[[protocol.FromAgent], Awaitable[None]]
    request_id: str
    # Sends a ``task`` event and waits for byokbot's ``task_result`` (None: no answer in time).
    ask_task: Callable[[protocol.TaskEvent], Awaitable[protocol.TaskResult | None]] | None = None
    # Lazily built client for web_fetch (its own limits, no pooling to other tools' hosts).
    cache: dict[str, Any] = field(default_factory=dict)
    # Asks the person before an MCP tool that is not read-only runs: (offered name, tool,
    # arguments shown) -> allowed. None where nobody can be asked (then such tools refuse).
    confirm: Callable[[str, str, str], Awaitable[bool]] | None = None


class Tool(Protocol):
    """One built-in tool."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> ToolSpec:
        """What the model is told: name, description, JSON Schema of the arguments."""
        ...

    def target(self, args: Mapping[str, Any]) -> str:
        """What the status line names while the tool runs (a host, a query), or ""."""
        ...

    def available(self, config: protocol.ToolConfig) -> bool:
        """Whether this agent can offer the tool at all (e.g. a search backend exists)."""
        ...

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> str:
        """The result text; raises ``ToolFailed`` for an error the model should see."""
        ...


def string_arg(args: Mapping[str, Any], name: str, *, limit: int = 2000) -> str:
    """A required string argument, stripped; ``ToolFailed`` when missing or too long."""
    value = args.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ToolFailed(f"'{name}' must be a non-empty string")
    if len(value) > limit:
        raise ToolFailed(f"'{name}' is longer than {limit} characters")
    return value.strip()


@functools.cache
def builtin() -> Mapping[str, Tool]:
    """Every built-in tool by name (built once, in the template; shared by every agent)."""
    from core.runtime.tools.notes import FORGET, RECALL, REMEMBER
    from core.runtime.tools.search import WEB_SEARCH
    from core.runtime.tools.tasks import SCHEDULE_TASK
    from core.runtime.tools.web import WEB_FETCH

    return {t.name: t for t in (WEB_FETCH, WEB_SEARCH, REMEMBER, RECALL, FORGET, SCHEDULE_TASK)}


NAMES: Final = ("web_fetch", "web_search", "remember", "recall", "forget", "schedule_task")
"""The names ``request.tools`` may carry (protocol version 2)."""
