"""A recording Messenger: remembers every call so scenario tests read like transcripts."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from core.chat import (
    ChatRef,
    Event,
    MessageRef,
    Platform,
    Reply,
    SecretRequest,
    UserRef,
)


@dataclass(frozen=True, slots=True)
class Sent:
    """One message the bot showed: where, what, and how."""

    chat: ChatRef
    reply: Reply
    kind: str  # respond | send | edit | stream
    id: str


@dataclass
class FakeMessenger:
    """Records replies, deletions, secret requests and streams for one platform."""

    platform: Platform
    can_delete: bool = True
    can_dm: bool = True
    sent: list[Sent] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    secret_requests: list[tuple[Event, SecretRequest]] = field(default_factory=list)
    prompts: list[MessageRef] = field(default_factory=list)
    typing_in: list[str] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _record(self, chat: ChatRef, reply: Reply, kind: str) -> MessageRef:
        mid = str(next(self._ids))
        self.sent.append(Sent(chat, reply, kind, mid))
        return MessageRef(chat, mid)

    def dm(self, user: UserRef) -> ChatRef:
        return ChatRef(self.platform, f"dm-{user.id}", is_direct=True)

    async def respond(self, event: Event, reply: Reply) -> MessageRef | None:
        return self._record(event.chat, reply, "respond")

    async def send(self, chat: ChatRef, reply: Reply) -> MessageRef | None:
        return self._record(chat, reply, "send")

    async def edit(self, message: MessageRef, reply: Reply) -> None:
        self._record(message.chat, reply, "edit")

    async def delete(self, chat: ChatRef, message_id: str) -> bool:
        if self.can_delete:
            self.deleted.append((chat.id, message_id))
        return self.can_delete

    async def open_dm(self, user: UserRef) -> ChatRef | None:
        return self.dm(user) if self.can_dm else None

    async def ask_secret(self, event: Event, request: SecretRequest) -> MessageRef | bool:
        if not self.can_dm and self.platform in (Platform.TELEGRAM, Platform.CONSOLE):
            return False
        self.secret_requests.append((event, request))
        if self.platform is Platform.TELEGRAM:
            # As on Telegram: a ForceReply prompt in the DM, answered by replying to it.
            ref = MessageRef(self.dm(event.user), str(next(self._ids)))
            self.prompts.append(ref)
            return ref
        return True

    async def stream(self, event: Event, chunks: AsyncIterator[str]) -> MessageRef | None:
        text = ""
        try:
            async for chunk in chunks:
                text += chunk
        finally:
            ref = self._record(event.chat, Reply(text=text), "stream")
        return ref

    async def typing(self, chat: ChatRef) -> None:
        self.typing_in.append(chat.id)

    def texts(self) -> list[str]:
        return [s.reply.text for s in self.sent]

    def all_text(self) -> str:
        return "\n".join(self.texts())
