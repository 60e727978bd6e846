"""What the agent supervisor needs from the rest of the core, with in-memory implementations.

The lead's tenants code provides the database-backed versions: ``ProfileSource`` resolves a
tenant's provider, key, model and persona; ``MemoryStore`` keeps conversations encrypted with
the tenant's data key; ``UsageSink`` meters tokens; ``KeyHealth`` marks a key dead on 401/403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from core.errors import AgentUnavailable
from core.runtime.protocol import McpServer
from core.secret import Secret


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """Everything an agent needs, resolved by the tenants code for one tenant."""

    tenant_id: str
    provider_kind: str  # "anthropic" | "openai-compatible"
    base_url: str  # from operator config only, never from the tenant
    api_key: Secret  # the BYOK key, or the managed plan's scoped proxy token
    key_id: str  # which stored key; changes on rotation
    model: str
    persona: str  # the system prompt
    max_reply_tokens: int
    context_tokens: int
    tools: tuple[str, ...] = ()  # agent tools offered (protocol names); () for none
    mcp: tuple[McpServer, ...] = ()  # the tenant's MCP servers, tokens decrypted for its agent


@dataclass(frozen=True, slots=True)
class Turn:
    """One remembered message of a conversation: ``role`` is "user" or "assistant"."""

    role: str
    content: str


class ProfileSource(Protocol):
    """Resolves a tenant's agent profile."""

    async def profile(self, tenant_id: str) -> AgentProfile:
        """Raises ``AgentUnavailable("no_key" | "paused" | ...)`` when it cannot run."""
        ...


class MemoryStore(Protocol):
    """Conversation memory, per tenant and conversation."""

    async def load(self, tenant_id: str, conversation: str) -> list[Turn]: ...

    async def save(self, tenant_id: str, conversation: str, turns: Sequence[Turn]) -> None: ...

    async def clear(self, tenant_id: str, conversation: str) -> None: ...


@dataclass(frozen=True, slots=True)
class StoredNote:
    """One long-term note about the person: the agent's short id and the text."""

    id: str
    text: str


@dataclass(frozen=True, slots=True)
class TaskVerdict:
    """Whether a ``schedule_task`` call was kept, and what the model should tell the person."""

    ok: bool
    message: str


@dataclass(frozen=True, slots=True)
class Compacted:
    """What ``/compact`` did: how many turns became a summary, and the estimated sizes."""

    turns: int
    before_tokens: int
    after_tokens: int


class ThreadPointer(Protocol):
    """Which stored conversation a chat continues (``/new`` starts another)."""

    async def active(self, tenant_id: str, conversation: str) -> str:
        """The memory key of the chat's current conversation (``conversation`` itself first)."""
        ...


class TaskSink(Protocol):
    """Where the agent's ``schedule_task`` calls go (the bot stores them and answers the chat)."""

    async def schedule(
        self, tenant_id: str, conversation: str, when: str, prompt: str
    ) -> TaskVerdict: ...

    async def context(self, tenant_id: str) -> str:
        """A line for the system prompt: the person's local time and zone, or that it is unknown.

        With it the model can turn "tomorrow at 9" into an ISO local time.
        """
        ...


class NotesStore(Protocol):
    """A tenant's long-term notes (the database version encrypts them with the data key)."""

    async def load(self, tenant_id: str) -> list[StoredNote]: ...

    async def add(self, tenant_id: str, note_id: str, text: str) -> bool:
        """False when the note was not kept (the limit, or a duplicate id)."""
        ...

    async def forget(self, tenant_id: str, note_id: str) -> bool:
        """False when there was no such note."""
        ...

    async def clear(self, tenant_id: str) -> int:
        """Forget every note; how many there were."""
        ...


@dataclass(frozen=True, slots=True)
class ToolActivity:
    """The agent started (``done`` False) or finished a tool, for the chat's status line.

    ``name`` is the tool (``web_fetch``...), ``target`` what it works on (a host, a query).
    """

    name: str
    target: str
    done: bool = False
    failed: bool = False


ToolObserver = Callable[[ToolActivity], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ConfirmRequest:
    """The agent wants to run ``tool`` of MCP server ``server`` (not annotated read-only)."""

    server: str
    tool: str
    arguments: str


ToolConfirmer = Callable[[ConfirmRequest], Awaitable[bool]]
"""Asks the person (Allow / Deny); True to run the tool. Bounded in time by the caller."""
"""Told when the agent starts or ends a tool (the chat shows a status line meanwhile)."""


class UsageSink(Protocol):
    """Where token usage goes (the usage ledger, budgets)."""

    async def record(
        self, tenant_id: str, model: str, input_tokens: int, output_tokens: int
    ) -> None: ...


class KeyHealth(Protocol):
    """Told when a provider refused a key (401/403), so the tenant is asked to rotate it."""

    async def key_dead(self, tenant_id: str, key_id: str, reason: str) -> None: ...


class InMemoryProfiles:
    """Profiles set by hand (tests, the console before the database lands)."""

    def __init__(self) -> None:
        self._profiles: dict[str, AgentProfile] = {}
        self._unavailable: dict[str, str] = {}

    def set(self, profile: AgentProfile) -> None:
        self._profiles[profile.tenant_id] = profile
        self._unavailable.pop(profile.tenant_id, None)

    def get(self, tenant_id: str) -> AgentProfile | None:
        return self._profiles.get(tenant_id)

    def make_unavailable(self, tenant_id: str, reason: str) -> None:
        self._unavailable[tenant_id] = reason

    async def profile(self, tenant_id: str) -> AgentProfile:
        if tenant_id in self._unavailable:
            raise AgentUnavailable(self._unavailable[tenant_id])
        try:
            return self._profiles[tenant_id]
        except KeyError:
            raise AgentUnavailable("no_key") from None


class InMemoryMemory:
    """Conversation memory in a dict (volatile; the database version encrypts)."""

    def __init__(self) -> None:
        self.turns: dict[tuple[str, str], list[Turn]] = {}

    async def load(self, tenant_id: str, conversation: str) -> list[Turn]:
        return list(self.turns.get((tenant_id, conversation), ()))

    async def save(self, tenant_id: str, conversation: str, turns: Sequence[Turn]) -> None:
        self.turns[(tenant_id, conversation)] = list(turns)

    async def clear(self, tenant_id: str, conversation: str) -> None:
        self.turns.pop((tenant_id, conversation), None)


class InMemoryNotes:
    """Notes in a dict (volatile; the database version encrypts)."""

    def __init__(self, limit: int = 100) -> None:
        self.notes: dict[str, list[StoredNote]] = {}
        self.limit = limit

    async def load(self, tenant_id: str) -> list[StoredNote]:
        return list(self.notes.get(tenant_id, ()))

    async def add(self, tenant_id: str, note_id: str, text: str) -> bool:
        notes = self.notes.setdefault(tenant_id, [])
        if len(notes) >= self.limit or any(n.id == note_id for n in notes):
            return False
        notes.append(StoredNote(note_id, text))
        return True

    async def forget(self, tenant_id: str, note_id: str) -> bool:
        notes = self.notes.get(tenant_id, [])
        kept = [n for n in notes if n.id != note_id]
        self.notes[tenant_id] = kept
        return len(kept) < len(notes)

    async def clear(self, tenant_id: str) -> int:
        return len(self.notes.pop(tenant_id, []))


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One recorded usage line."""

    tenant_id: str
    model: str
    input_tokens: int
    output_tokens: int


class InMemoryUsage:
    """Usage kept in a list."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    async def record(
        self, tenant_id: str, model: str, input_tokens: int, output_tokens: int
    ) -> None:
        self.records.append(UsageRecord(tenant_id, model, input_tokens, output_tokens))


class InMemoryKeyHealth:
    """Dead keys kept in a list of ``(tenant_id, key_id, reason)``."""

    def __init__(self) -> None:
        self.dead: list[tuple[str, str, str]] = []

    async def key_dead(self, tenant_id: str, key_id: str, reason: str) -> None:
        self.dead.append((tenant_id, key_id, reason))
