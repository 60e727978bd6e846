"""Console lifecycle and messenger: reads lines, prints replies, asks for secrets without echo."""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import TextIO

from adapters.console.translate import render, to_event
from core.chat import (
    Button,
    ChatRef,
    Event,
    EventKind,
    MessageRef,
    Platform,
    Reply,
    SecretRequest,
    UserRef,
)
from core.ports import EventHandler
from core.secret import Secret

log = logging.getLogger("byokbot.console")


class ConsoleAdapter:
    """One local person chatting in a terminal. It is its own ``Messenger``.

    Lines are handled one at a time, so a secret asked for by one turn is read (hidden, where
    the input is a terminal) before the next line.
    """

    platform = Platform.CONSOLE

    def __init__(
        self,
        *,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        user_id: str = "local",
        name: str | None = None,
    ) -> None:
        self._in = stdin or sys.stdin
        self._out = stdout or sys.stdout
        self.user = UserRef(Platform.CONSOLE, user_id, name or _login_name())
        self.chat = ChatRef(Platform.CONSOLE, user_id, is_direct=True)
        self._buttons: list[Button] = []
        self._pending: SecretRequest | None = None
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()

    @property
    def messenger(self) -> ConsoleAdapter:
        return self

    @property
    def interactive(self) -> bool:
        return self._in.isatty()

    async def start(self, handler: EventHandler) -> None:
        self._task = asyncio.create_task(self._loop(handler), name="console")

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.finished.set()

    async def _readline(self, prompt: str, *, hidden: bool) -> str | None:
        if hidden and self.interactive:
            try:
                return await asyncio.to_thread(getpass.getpass, prompt, self._out)
            except EOFError:
                return None
        if self.interactive:
            self._write(prompt, newline=False)
        line = await asyncio.to_thread(self._in.readline)
        return line if line else None

    async def _loop(self, handler: EventHandler) -> None:
        try:
            while True:
                request = self._pending
                if request is not None:
                    self._pending = None
                    value = await self._readline(f"{request.title} (hidden): ", hidden=True)
                    if value is None:
                        break
                    self._seq += 1
                    await handler(
                        Event(
                            EventKind.SECRET,
                            self.user,
                            self.chat,
                            secret=Secret(value.rstrip("\r\n")),
                            intake_token=request.token,
                            event_id=f"console:{self._seq}",
                        )
                    )
                    continue
                line = await self._readline("you> ", hidden=False)
                if line is None:
                    break
                self._seq += 1
                event = to_event(
                    line, user=self.user, chat=self.chat, buttons=self._buttons, seq=self._seq
                )
                if event is not None:
                    await handler(event)
        finally:
            self.finished.set()

    def _write(self, text: str, *, newline: bool = True) -> None:
        self._out.write(text + ("\n" if newline else ""))
        self._out.flush()

    def _show(self, reply: Reply) -> MessageRef:
        text, buttons = render(reply)
        self._buttons = buttons
        self._seq += 1
        self._write(text)
        return MessageRef(self.chat, f"out:{self._seq}")

    # -- Messenger -----------------------------------------------------------------------

    async def respond(self, event: Event, reply: Reply) -> MessageRef | None:
        return self._show(reply)

    async def send(self, chat: ChatRef, reply: Reply) -> MessageRef | None:
        return self._show(reply)

    async def edit(self, message: MessageRef, reply: Reply) -> None:
        self._show(reply)

    async def delete(self, chat: ChatRef, message_id: str) -> bool:
        # A terminal's scrollback cannot be erased by us; say so honestly.
        return False

    async def open_dm(self, user: UserRef) -> ChatRef | None:
        return self.chat

    async def ask_secret(self, event: Event, request: SecretRequest) -> bool:
        self._write(request.prompt)
        self._pending = request
        return True

    async def stream(self, event: Event, chunks: AsyncIterator[str]) -> MessageRef | None:
        self._buttons = []
        wrote = False
        try:
            async for chunk in chunks:
                self._out.write(chunk)
                self._out.flush()
                wrote = True
        finally:
            if wrote:
                self._write("")
        self._seq += 1
        return MessageRef(self.chat, f"out:{self._seq}")

    async def typing(self, chat: ChatRef) -> None:
        return None


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "you")
