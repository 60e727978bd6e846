"""Console lifecycle and messenger: reads lines, prints replies, asks for secrets without echo."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TextIO

from adapters.console.terminal import Input, LineInput, TerminalInput
from adapters.console.translate import render, to_event
from core.chat import (
    Button,
    ChatRef,
    Event,
    EventKind,
    MessageRef,
    Outcome,
    Platform,
    Reply,
    SecretRequest,
    UserRef,
)
from core.ports import EventHandler
from core.secret import Secret

log = logging.getLogger("byokbot.console")

PROMPT = "you> "
# Commands that may act on a reply still streaming (the router runs them without the lock).
_WHILE_STREAMING = frozenset({"stop"})


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class ConsoleAdapter:
    """One local person chatting in a terminal. It is its own ``Messenger``.

    Lines are handled one at a time, in order: the next line is read once the turn before it
    is done, so the line after a key request is read at the hidden prompt. Only while a reply
    streams is a line read early, so that ``/stop`` can reach it; any other line read then
    waits for the reply to finish.

    A secret is read at a hidden prompt, always: ``ask_secret`` only records the request, and
    the loop shows its prompt and reads the next line hidden once the turn is done. A refused
    key whose request is still open (``Outcome.secret_retry``) is asked for again the same way
    with the same token; Enter on an empty hidden prompt closes the form (SECRET_CANCELLED).
    On a pipe the secret is simply the next line.
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
        stdin = stdin or sys.stdin
        stdout = stdout or sys.stdout
        # Keyed on the input alone: a terminal's echo must be ours to switch off even when the
        # output is redirected, or a key typed at the prompt would show.
        self._terminal = _is_terminal(stdin)
        self._io: Input = (
            TerminalInput(stdin, stdout) if self._terminal else LineInput(stdin, stdout)
        )
        self.user = UserRef(Platform.CONSOLE, user_id, name or _login_name())
        self.chat = ChatRef(Platform.CONSOLE, user_id, is_direct=True)
        self._buttons: list[Button] = []
        self._pending: SecretRequest | None = None
        self._asked_token = ""
        self._held: deque[str] = deque()
        self._seq = 0
        self._streaming = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._turns: set[asyncio.Future[Any]] = set()
        self.finished = asyncio.Event()

    @property
    def messenger(self) -> ConsoleAdapter:
        return self

    @property
    def interactive(self) -> bool:
        return self._terminal

    async def start(self, handler: EventHandler) -> None:
        self._io.open()
        self._task = asyncio.create_task(self._loop(handler), name="console")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._turns) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._io.close()
        self.finished.set()

    # -- reading -------------------------------------------------------------------------

    async def _loop(self, handler: EventHandler) -> None:
        try:
            while True:
                request = self._pending if not self._held else None
                if self._held:
                    line: str | None = self._held.popleft()
                elif request is not None:
                    line = await self._read_secret(request)
                else:
                    line = await self._io.read_line(PROMPT, hidden=False)
                if line is None:
                    break
                self._seq += 1
                if request is None:
                    event = self._translate(line)
                    if event is not None:
                        await self._turn(handler, event)
                    continue
                self._pending = None
                outcome = await self._turn(handler, self._secret_event(request, line))
                if outcome is not None and outcome.secret_retry and self._pending is None:
                    self._pending = request  # refused, still open: ask again, hidden again
        finally:
            self.finished.set()

    def _secret_event(self, request: SecretRequest, line: str) -> Event:
        """The hidden prompt's answer; an empty one closes the form (the request ends)."""
        return Event(
            EventKind.SECRET if line.strip() else EventKind.SECRET_CANCELLED,
            self.user,
            self.chat,
            secret=Secret(line) if line.strip() else None,
            intake_token=request.token,
            event_id=f"console:{self._seq}",
        )

    async def _read_secret(self, request: SecretRequest) -> str | None:
        if request.token != self._asked_token:  # a retry keeps the prompt already shown
            self._asked_token = request.token
            self._write(request.prompt)
        return await self._io.read_line(f"{request.title} (hidden): ", hidden=True)

    def _translate(self, line: str) -> Event | None:
        return to_event(line, user=self.user, chat=self.chat, buttons=self._buttons, seq=self._seq)

    async def _turn(self, handler: EventHandler, event: Event) -> Outcome | None:
        """Handle one event; while its reply streams, read on and let /stop through."""
        turn = self._spawn(handler(event))
        side: list[asyncio.Future[Any]] = []
        try:
            while not turn.done():
                streaming = asyncio.ensure_future(self._streaming.wait())
                await asyncio.wait({turn, streaming}, return_when=asyncio.FIRST_COMPLETED)
                streaming.cancel()
                if turn.done():
                    break
                reading = asyncio.ensure_future(self._io.read_line(PROMPT, hidden=False))
                await asyncio.wait({turn, reading}, return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():
                    reading.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reading
                    break
                line = reading.result()
                if line is None:
                    break  # end of input: the loop ends after this turn
                self._seq += 1
                early = self._translate(line)
                if early is None:
                    continue
                if early.kind is EventKind.COMMAND and early.command in _WHILE_STREAMING:
                    side.append(self._spawn(handler(early)))
                    continue
                self._held.append(line)  # read while streaming; handled after this turn
                break
            outcome = await turn
            for task in side:
                await task
        finally:
            for task in (turn, *side):
                task.cancel()
        return outcome if isinstance(outcome, Outcome) else None

    def _spawn(self, work: Awaitable[object]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(work)
        self._turns.add(task)
        task.add_done_callback(self._turns.discard)
        return task

    # -- writing -------------------------------------------------------------------------

    def notice(self, text: str) -> None:
        """A line from the program itself (the banner), kept clear of the prompt row."""
        self._write(text)

    def _write(self, text: str) -> None:
        lead = "" if self._io.at_line_start else "\n"  # after a reply cut short mid-line
        self._io.write(lead + text + "\n")

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
        # Shown and read by the loop once this turn is done: the prompt comes after whatever
        # the turn says (a refusal before a retry), and nothing is read at ``you>`` meanwhile.
        self._pending = request
        return True

    async def stream(self, event: Event, chunks: AsyncIterator[str]) -> MessageRef | None:
        self._buttons = []
        self._streaming.set()
        try:
            async for chunk in chunks:
                self._io.write(chunk)
        finally:
            self._streaming.clear()
            if not self._io.at_line_start:
                self._io.write("\n")
        self._seq += 1
        return MessageRef(self.chat, f"out:{self._seq}")

    async def typing(self, chat: ChatRef) -> None:
        return None


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "you")
