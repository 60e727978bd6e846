"""Where ``byokbot admin`` from a shell sends: the operator's terminal, and the platforms.

The operator's answer is printed. A notice for a tenant goes through that tenant's platform
(``App.open_senders``); where the command line cannot send, the notice is counted here so the
command can say so and exit non-zero instead of pretending.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import AsyncIterator

from adapters.console import ConsoleAdapter
from core.chat import ChatRef, Event, MessageRef, Platform, Reply, SecretRequest, UserRef


class OperatorTerminal(ConsoleAdapter):
    """The console messenger of a CLI command: only the operator's own chat is printed.

    Other console chats belong to a ``byokbot chat`` process in another terminal.
    """

    def __init__(self, operator_id: str, undelivered: Counter[str]) -> None:
        super().__init__(stdin=io.StringIO(""), user_id=operator_id)
        self._undelivered = undelivered

    async def send(self, chat: ChatRef, reply: Reply) -> MessageRef | None:
        if chat.id == self.chat.id:
            return await super().send(chat, reply)
        self._undelivered[Platform.CONSOLE.value] += 1
        return None


class Undeliverable:
    """The messenger for a platform the command line cannot send on: counts, sends nothing."""

    def __init__(self, platform: Platform, undelivered: Counter[str]) -> None:
        self.platform = platform
        self._undelivered = undelivered

    async def respond(self, event: Event, reply: Reply) -> MessageRef | None:
        return await self.send(event.chat, reply)

    async def send(self, chat: ChatRef, reply: Reply) -> MessageRef | None:
        self._undelivered[self.platform.value] += 1
        return None

    async def edit(self, message: MessageRef, reply: Reply) -> None:
        self._undelivered[self.platform.value] += 1

    async def delete(self, chat: ChatRef, message_id: str) -> bool:
        return False

    async def open_dm(self, user: UserRef) -> ChatRef | None:
        return None

    async def ask_secret(self, event: Event, request: SecretRequest) -> bool:
        return False

    async def stream(self, event: Event, chunks: AsyncIterator[str]) -> MessageRef | None:
        self._undelivered[self.platform.value] += 1
        return None

    async def typing(self, chat: ChatRef) -> None:
        return None
