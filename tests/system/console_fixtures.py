"""The console as a person meets it: ``byokbot chat``/``run`` on a pseudo-terminal or a pipe.

``TerminalPerson`` starts the real console script with a pty's slave side as its controlling
terminal (stdin, stdout and stderr), types on the master side as a keyboard does, and records
everything the terminal was sent (the master side) into a transcript under the work dir's
output folder, so the canary scan covers the screen too. ``text()`` is that output as a person
reads it, through a VT100 emulator (pyte): the console redraws its input row and writes a
streaming reply above it, so only an emulated screen shows what a person sees. ``PipedPerson``
feeds lines through a pipe instead. Nothing here imports the program.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import struct
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyte

from tests.system.harness import BotProcess, Workspace, byokbot_command


def _row(line: dict[int, Any], columns: int) -> str:
    return "".join(line[x].data for x in range(columns)).rstrip()


def _controlling_tty() -> None:
    # In the child before exec: a session of its own, with the pty as its controlling
    # terminal, so Ctrl-C typed on the master reaches it as SIGINT (as from a real keyboard).
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@dataclass
class TerminalPerson:
    """Someone at a terminal running ``byokbot``; ``screen()`` is what they saw, raw."""

    bot: BotProcess
    master: int
    transcript: Path
    columns: int = 100
    rows: int = 40
    _seen: bytearray = field(default_factory=bytearray)
    _before: str = ""
    _fed: int = 0
    _screen: pyte.HistoryScreen = field(init=False)
    _stream: pyte.ByteStream = field(init=False)

    def __post_init__(self) -> None:
        self._screen = pyte.HistoryScreen(self.columns, self.rows, history=100_000, ratio=0.5)
        self._stream = pyte.ByteStream(self._screen)

    @classmethod
    async def start(
        cls, ws: Workspace, *args: str, columns: int = 100, rows: int = 40
    ) -> TerminalPerson:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        logs = ws.root.parent / f"{ws.root.name}-output"
        logs.mkdir(exist_ok=True)
        transcript = logs / f"pty-{len(ws.processes) + 1:02d}-{args[0] if args else 'run'}.screen"
        transcript.touch()
        empty = transcript.with_suffix(".stderr")
        empty.touch()
        ws.outputs += [transcript, empty]
        try:
            proc = await asyncio.create_subprocess_exec(
                *byokbot_command(),
                *(args or ("run",)),
                cwd=ws.root,
                env=ws.environment({"TERM": "xterm"}),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                preexec_fn=_controlling_tty,
            )
        finally:
            os.close(slave)
        bot = BotProcess(proc, transcript, empty)
        ws.processes.append(bot)
        person = cls(bot, master, transcript, columns, rows)
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, person._drain)
        return person

    def _drain(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: the program closed the terminal (it exited)
            data = b""
        if not data:
            with contextlib.suppress(ValueError):
                asyncio.get_running_loop().remove_reader(self.master)
            return
        self._seen += data
        with self.transcript.open("ab") as f:
            f.write(data)

    def screen(self) -> str:
        """Every byte shown so far, escape sequences and all."""
        return self._seen.decode(errors="replace")

    def text(self) -> str:
        """The screen as a person reads it (scrolled-off lines first), from a VT emulator."""
        self._stream.feed(self._fed_to(len(self._seen)))
        lines = [_row(line, self._screen.columns) for line in self._screen.history.top]
        lines += [line.rstrip() for line in self._screen.display]
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines)

    def _fed_to(self, end: int) -> bytes:
        chunk = bytes(self._seen[self._fed : end])
        self._fed = end
        return chunk

    async def type(self, keys: str, *, chunk: int = 512) -> None:
        """Type (or paste) ``keys`` on the keyboard; long input goes in terminal-sized pieces."""
        self._before = self.text()
        data = keys.encode()
        deadline = time.monotonic() + 20
        while data:
            try:
                written = os.write(self.master, data[:chunk])
            except BlockingIOError:
                written = 0
            data = data[written:]
            if data:
                if time.monotonic() > deadline:
                    raise AssertionError("the program stopped reading its terminal")
                await asyncio.sleep(0.01)

    async def line(self, text: str) -> None:
        await self.type(text + "\r")

    async def wait_text(self, pattern: str, *, within: float = 20.0, new: bool = False) -> str:
        """Wait until ``pattern`` is on the screen (``new``: once more than before the last keys)."""
        rx = re.compile(pattern)
        seen = len(rx.findall(self._before)) if new else 0
        deadline = time.monotonic() + within
        while True:
            shown = self.text()
            if len(rx.findall(shown)) > seen:
                return shown
            if self.bot.returncode is not None:
                await asyncio.sleep(0.1)  # what it printed last
                if len(rx.findall(self.text())) > seen:
                    return self.text()
                raise AssertionError(
                    f"byokbot exited ({self.bot.returncode}) before {pattern!r}:\n{self.text()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {within}s; the screen:\n{self.text()}")
            await asyncio.sleep(0.05)

    async def expect(self, pattern: str, *, within: float = 20.0) -> str:
        """Wait for ``pattern`` to appear once more than it did when the person last typed."""
        return await self.wait_text(pattern, within=within, new=True)

    async def exit_code(self, within: float = 5.0) -> int:
        return await self.bot.wait(within)

    def choice(self, label: str) -> str:
        """The number the console shows before a button ``label`` (``[2] BYOK``)."""
        found = re.findall(rf"\[(\d+)\] {re.escape(label)}", self.text())
        if not found:
            raise AssertionError(f"no button {label!r} on the screen:\n{self.text()}")
        return str(found[-1])

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.master)
        with contextlib.suppress(OSError):
            os.close(self.master)


class PipedPerson:
    """Someone feeding ``byokbot`` lines through its standard input, reading its stdout."""

    def __init__(self, bot: BotProcess) -> None:
        self.bot = bot
        self._mark = 0

    async def say(self, line: str) -> None:
        stdin = self.bot.proc.stdin
        assert stdin is not None
        self._mark = len(self.bot.stdout())
        stdin.write(line.encode() + b"\n")
        await stdin.drain()

    async def expect(self, pattern: str, within: float = 20.0) -> str:
        """Wait for ``pattern`` in what was printed since the last line said."""
        rx = re.compile(pattern)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            shown = self.bot.stdout()[self._mark :]
            if rx.search(shown):
                return shown
            if self.bot.returncode is not None or loop.time() > deadline:
                raise AssertionError(f"no {pattern!r} after the last line:\n{self.bot.output()}")
            await asyncio.sleep(0.05)

    async def choose(self, label: str) -> None:
        shown = await self.expect(rf"\[\d+\] {re.escape(label)}")
        number = re.findall(rf"\[(\d+)\] {re.escape(label)}", shown)[-1]
        await self.say(number)

    async def end_of_input(self) -> None:
        stdin = self.bot.proc.stdin
        assert stdin is not None
        stdin.close()
