"""Protocols the core needs from the outside world, with in-memory implementations beside them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from core.chat import (
    ChatRef,
    Event,
    FileRef,
    MessageRef,
    Outcome,
    Platform,
    Reply,
    SecretRequest,
    UserRef,
)

if TYPE_CHECKING:  # annotations only: ``byokbot proxy`` needs the clock, not the LLM client
    from core.llm import ImageInput
    from core.runtime.ports import Compacted, ToolConfirmer, ToolObserver

EventHandler = Callable[[Event], Awaitable[Outcome]]
"""What an adapter calls for every translated event (the router's ``dispatch``)."""


class FileTooLarge(Exception):
    """The file is larger than the limit the caller gave (``size`` when it is known)."""

    def __init__(self, size: int | None = None) -> None:
        super().__init__("file too large")
        self.size = size


class FileUnavailable(Exception):
    """The platform would not hand the file over (gone, refused, not reachable)."""


@runtime_checkable
class FileSource(Protocol):
    """An adapter that can fetch a file a person attached (``Event.files``).

    ``download`` returns at most ``limit`` bytes, authenticating with the adapter's own
    token (which never leaves the adapter): raises ``FileTooLarge`` past ``limit`` (before
    reading, when the platform says the size) and ``FileUnavailable`` otherwise.
    """

    async def download(self, file: FileRef, limit: int) -> bytes: ...


@runtime_checkable
class Messenger(Protocol):
    """What the core asks of a platform adapter. Every method is safe to call concurrently.

    - ``respond`` answers in the context of an event: the same chat (a thread where it came
      from one), ephemeral for a ``sensitive`` reply where the platform has ephemeral
      messages (Discord interactions, Slack), and as the interaction's own response where the
      platform demands one.
    - ``send`` posts to a chat with no event to answer (alerts, broadcasts, a moved intake).
    - ``open_dm`` returns the DM with a person, or None when the platform will not let the bot
      start one (a Telegram user who never started the bot).
    - ``ask_secret`` collects a secret privately: Telegram a ForceReply DM, Discord/Slack a
      modal opened from the event's interaction, the console hidden input. The secret comes
      back as a later ``Event`` of kind SECRET, or as a DM message replying to the prompt.
      It always collects from ``event.user`` privately, whatever chat the event came from.
      It returns the prompt message when the answer is a reply to it (Telegram: the flow
      takes a DM whose ``reply_to`` is that message as the secret), True when the answer
      comes back through a form (modal, hidden input), and False when it cannot reach the
      person privately (a Telegram user who never started the bot); the flow then offers an
      ``OPEN_DM_PAYLOAD`` button. A form closed unsubmitted may come back as an event of kind
      SECRET_CANCELLED with the request's token.
    - ``stream`` shows a reply that arrives in chunks, editing one message at the platform's
      pace and splitting at its length limit; returns the last message. If the iterator
      raises, what was shown stays and the exception propagates to the flow, which tells
      the person what happened.
    - ``delete`` returns False when the platform refused (too old, no permission).
    """

    platform: Platform

    async def respond(self, event: Event, reply: Reply) -> MessageRef | None: ...

    async def send(self, chat: ChatRef, reply: Reply) -> MessageRef | None: ...

    async def edit(self, message: MessageRef, reply: Reply) -> None: ...

    async def delete(self, chat: ChatRef, message_id: str) -> bool: ...

    async def open_dm(self, user: UserRef) -> ChatRef | None: ...

    async def ask_secret(self, event: Event, request: SecretRequest) -> MessageRef | bool: ...

    async def stream(self, event: Event, chunks: AsyncIterator[str]) -> MessageRef | None: ...

    async def typing(self, chat: ChatRef) -> None: ...


class Clock(Protocol):
    """Where the time comes from, so flows and jobs are testable without waiting."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        from datetime import timedelta

        self._now += timedelta(seconds=seconds)


class ChatAdapter(Protocol):
    """A platform adapter's lifecycle, as the composition root drives it."""

    platform: Platform

    @property
    def messenger(self) -> Messenger:
        """Where the core sends replies for this platform (often the adapter itself)."""
        ...

    async def start(self, handler: EventHandler) -> None:
        """Connect and begin delivering events to ``handler``; returns once serving."""
        ...

    async def stop(self) -> None:
        """Stop taking events and release connections; idempotent."""
        ...


@runtime_checkable
class FailingAdapter(Protocol):
    """An adapter that can find out, after ``start``, that it cannot go on serving."""

    async def failure(self) -> Exception:
        """Returns (the reason) when the adapter has stopped serving for good."""
        ...


@runtime_checkable
class SendOnlyAdapter(Protocol):
    """An adapter that can log in to send alone (no polling, gateway or listener).

    ``byokbot admin`` from a shell uses it to deliver notices; ``stop`` closes it again.
    """

    async def open_for_sending(self) -> None:
        """Log in so that ``messenger.send`` works; raises the adapter's start-up errors."""
        ...


class Agents(Protocol):
    """The tenant's hosted agent, as flows see it.

    ``reply`` streams the agent's answer to one message as text chunks; it raises
    ``core.errors.AgentUnavailable`` (with a short ``reason`` code that ``bot/texts.py``
    turns into words) when the agent cannot answer. ``conversation`` is the neutral chat's
    conversation key, so each chat keeps its own memory. ``on_tool`` is told when the agent
    starts and ends a tool, so the chat can show what it is doing meanwhile; ``on_confirm``
    asks the person before an MCP tool that is not read-only runs (without it, such a tool
    is refused).
    """

    def reply(
        self,
        tenant_id: str,
        conversation: str,
        text: str,
        *,
        on_tool: ToolObserver | None = None,
        on_confirm: ToolConfirmer | None = None,
        images: Sequence[ImageInput] = (),
    ) -> AsyncIterator[str]: ...

    async def cancel(self, tenant_id: str, conversation: str) -> bool:
        """Stop a reply in progress; False when none was running."""
        ...

    async def reset(self, tenant_id: str, conversation: str) -> None:
        """Forget the conversation's memory."""
        ...

    async def compact(self, tenant_id: str, conversation: str) -> Compacted | None:
        """Summarise the conversation so far (``/compact``); None when it is empty.

        Raises ``AgentUnavailable`` like ``reply``.
        """
        ...

    async def reconfigure(self, tenant_id: str) -> None:
        """The tenant's key, model, persona or plan changed: new requests use the new settings."""
        ...

    async def forget(self, tenant_id: str) -> None:
        """The tenant paused, was suspended or deleted: stop its agent now."""
        ...


class UnavailableAgents:
    """The agent port when no agent runtime is configured: every message gets a clear answer."""

    async def reply(
        self,
        tenant_id: str,
        conversation: str,
        text: str,
        *,
        on_tool: ToolObserver | None = None,
        on_confirm: ToolConfirmer | None = None,
        images: Sequence[ImageInput] = (),
    ) -> AsyncIterator[str]:
        from core.errors import AgentUnavailable

        if tenant_id:  # always true; the yield below makes this an async generator
            raise AgentUnavailable("not_configured")
        yield ""  # pragma: no cover

    async def cancel(self, tenant_id: str, conversation: str) -> bool:
        return False

    async def reset(self, tenant_id: str, conversation: str) -> None:
        return None

    async def compact(self, tenant_id: str, conversation: str) -> Compacted | None:
        from core.errors import AgentUnavailable

        raise AgentUnavailable("not_configured")

    async def reconfigure(self, tenant_id: str) -> None:
        return None

    async def forget(self, tenant_id: str) -> None:
        return None
