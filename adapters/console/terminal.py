"""Reading a person's lines without blocking the event loop: a terminal, a pipe or a file.

On a terminal the kernel's canonical line editing is switched off (it cuts a line at 4,095
characters, hides nothing once a prompt is shown, and can only be left by Enter). Keys are read
as they arrive, on the event loop, by a small one-line editor: echo is ours, so a secret prompt
shows nothing, a reply can stream above the line being typed, and Ctrl-C stays a signal (ISIG)
that stops the program at once. Bracketed paste keeps a pasted text, newlines and all, one
message.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import termios
import unicodedata
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

PASTE_START = "\x1b[200~"
PASTE_END = "\x1b[201~"
_ENABLE_PASTE = "\x1b[?2004h"
_DISABLE_PASTE = "\x1b[?2004l"
_ERASE_ROW = "\r\x1b[K"
_CTRL_D = "\x04"
_CTRL_U = "\x15"
_CTRL_W = "\x17"
_BACKSPACE = ("\x7f", "\x08")


class Input(Protocol):
    """Where the console's lines come from and its text goes to."""

    async def read_line(self, prompt: str, *, hidden: bool) -> str | None:
        """The next line without its newline, or None at end of input."""
        ...

    def write(self, text: str) -> None: ...

    @property
    def at_line_start(self) -> bool:
        """Whether the next text starts a line (nothing is half-written)."""
        ...

    def open(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class EndOfInput:
    """Ctrl-D on an empty line."""


@dataclass
class LineEditor:
    """Keys in, finished lines out. Pure: no terminal, so it is tested on its own.

    Enter submits; Backspace, Ctrl-U (the whole line) and Ctrl-W (a word) erase; Ctrl-D on an
    empty line is the end of input; other control keys and escape sequences (arrows, function
    keys) are ignored. Between ``PASTE_START`` and ``PASTE_END`` (bracketed paste) Enter is a
    newline inside the text.
    """

    text: str = ""
    _escape: str = ""
    _pasting: bool = False

    def feed(self, keys: str) -> tuple[int, str | EndOfInput | None]:
        """Take keys until a line is finished; returns (keys used, the line or None)."""
        for i, key in enumerate(keys):
            done = self._key(key)
            if done is not None:
                return i + 1, done
        return len(keys), None

    def _key(self, key: str) -> str | EndOfInput | None:
        if self._escape:
            self._escape += key
            self._end_escape()
            return None
        if key == "\x1b":
            self._escape = key
            return None
        if key in ("\r", "\n"):
            if self._pasting:
                self.text += "\n"
                return None
            line, self.text = self.text, ""
            return line
        if self._pasting:
            if key == "\t" or key >= " ":
                self.text += key
            return None
        if key in _BACKSPACE:
            self.text = self.text[:-1]
        elif key == _CTRL_U:
            self.text = ""
        elif key == _CTRL_W:
            self.text = self.text.rstrip()
            self.text = self.text[: self.text.rfind(" ") + 1] if " " in self.text else ""
        elif key == _CTRL_D:
            if not self.text:
                return EndOfInput()
        elif key == "\t" or (key >= " " and key != "\x7f"):
            self.text += key
        return None

    def _end_escape(self) -> None:
        seq = self._escape
        if len(seq) == 2 and seq[1] not in "[O":
            self._escape = ""  # Alt+key: ignored
        elif seq[1] == "O" and len(seq) == 3:
            self._escape = ""  # SS3 (F1-F4, some arrow keys)
        elif seq[1] == "[" and len(seq) > 2 and "@" <= seq[-1] <= "~":
            self._escape = ""  # a complete CSI sequence
            if seq == PASTE_START:
                self._pasting = True
            elif seq == PASTE_END:
                self._pasting = False


def width_of(text: str) -> int:
    """Terminal columns ``text`` takes (wide East Asian characters two, combining marks none)."""
    return sum(_char_width(c) for c in text)


def _char_width(c: str) -> int:
    if unicodedata.combining(c):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def fit_line(prompt: str, text: str, columns: int) -> str:
    """The prompt and the end of ``text`` on one row of ``columns`` (older text scrolls off)."""
    shown = text.replace("\n", "↵").replace("\t", " ")
    room = max(columns - width_of(prompt) - 1, 8)
    if width_of(shown) <= room:
        return prompt + shown
    tail: list[str] = []
    used = 1  # the ellipsis
    for c in reversed(shown):
        w = _char_width(c)
        if used + w > room:
            break
        tail.append(c)
        used += w
    return prompt + "…" + "".join(reversed(tail))


class TerminalInput:
    """A terminal read key by key on the event loop; output is drawn around the input row.

    While a line is being read the prompt row is the last row on the screen; text written
    meanwhile (a streaming reply) goes above it, continuing where it left off. Keys that
    arrive while no line is asked for wait, unread, for the next prompt: so what is typed
    ahead of a key prompt is never shown at a visible one.
    """

    def __init__(self, stdin: TextIO, stdout: TextIO) -> None:
        self._fd = stdin.fileno()
        self._out = stdout
        self._saved: list[Any] | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._editor = LineEditor()
        self._keys = ""
        self._eof = False
        self._prompt: str | None = None
        self._hidden = False
        self._waiter: asyncio.Future[str | None] | None = None
        self._drawn = False
        self._col = 0  # output cursor column on its row (the prompt row aside)
        self._last = " "

    def open(self) -> None:
        self._saved = termios.tcgetattr(self._fd)
        mode = termios.tcgetattr(self._fd)
        # Keep ISIG: Ctrl-C must stay SIGINT. IEXTEN off so Ctrl-V/Ctrl-O reach us as keys.
        mode[3] &= ~(termios.ICANON | termios.ECHO | termios.IEXTEN)
        mode[6][termios.VMIN] = 1
        mode[6][termios.VTIME] = 0
        termios.tcsetattr(self._fd, termios.TCSANOW, mode)
        self._emit(_ENABLE_PASTE)
        asyncio.get_running_loop().add_reader(self._fd, self._readable)

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError, RuntimeError):
            asyncio.get_running_loop().remove_reader(self._fd)
        if self._saved is not None:
            if self._drawn:
                self._emit(_ERASE_ROW)
                self._drawn = False
            self._emit(_DISABLE_PASTE)
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self._fd, termios.TCSANOW, self._saved)
            self._saved = None

    def _columns(self) -> int:
        try:
            columns = os.get_terminal_size(self._fd).columns
        except OSError:
            columns = 0
        return columns if columns > 0 else 80

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # the terminal went away (hang-up)
        if not data:
            self._eof = True
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._fd)
        else:
            self._keys += self._decoder.decode(data)
        self._process()

    def _process(self) -> None:
        if self._prompt is None or self._waiter is None or self._waiter.done():
            return
        before = self._editor.text
        used, done = self._editor.feed(self._keys)
        self._keys = self._keys[used:]
        if done is None and self._eof and not self._keys:
            done = EndOfInput()
        if done is None:
            if self._editor.text != before and not self._hidden:
                self._draw()
            return
        self._draw(done if isinstance(done, str) else "")  # the row keeps what was sent
        self._emit("\n")
        self._drawn = False
        self._col = 0
        self._prompt = None
        self._waiter.set_result(None if isinstance(done, EndOfInput) else done)

    async def read_line(self, prompt: str, *, hidden: bool) -> str | None:
        if self._hidden != hidden:
            self._editor = LineEditor()  # what was typed at one kind of prompt stays there
        self._prompt, self._hidden = prompt, hidden
        self._waiter = asyncio.get_running_loop().create_future()
        self._draw()
        self._process()
        try:
            return await self._waiter
        finally:
            if self._prompt is not None:  # cancelled: take the row away, keep what was typed
                self._prompt = None
                self._undraw()

    @property
    def at_line_start(self) -> bool:
        return self._col == 0

    def write(self, text: str) -> None:
        if not text:
            return
        self._undraw()
        self._emit(text.replace("\r\n", "\n"))
        self._advance(text)
        if self._prompt is not None:
            self._draw()

    # -- drawing -----------------------------------------------------------------------------

    def _draw(self, text: str | None = None) -> None:
        """Show the prompt row: on the output's row when that is empty, else just below it."""
        assert self._prompt is not None  # noqa: S101 - only called while a line is read
        shown = self._editor.text if text is None else text
        row = fit_line(self._prompt, "" if self._hidden else shown, self._columns())
        lead = _ERASE_ROW if self._drawn or self._col == 0 else "\n"
        self._emit(lead + row)
        self._drawn = True

    def _undraw(self) -> None:
        """Erase the prompt row and put the cursor back at the end of the output."""
        if not self._drawn:
            return
        self._drawn = False
        seq = _ERASE_ROW
        if self._col > 0:
            columns = self._columns()
            if self._col >= columns:
                # The output filled its row: rewrite its last character to be where it was.
                w = _char_width(self._last)
                seq += f"\x1b[A\x1b[{columns - w + 1}G{self._last}"
            else:
                seq += f"\x1b[A\x1b[{self._col + 1}G"
        self._emit(seq)

    def _advance(self, text: str) -> None:
        columns = self._columns()
        for c in text:
            if c == "\n":
                self._col = 0
            elif c != "\r":
                w = _char_width(c)
                self._col = w if self._col + w > columns else self._col + w
                if w:
                    self._last = c

    def _emit(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


class LineInput:
    """Lines from a pipe or a file (no echo to manage, so secrets are read like other lines).

    A pipe is read on the event loop (never in a thread, which would hold up the exit); a file
    or ``/dev/null``, which the loop cannot watch, reads without waiting anyway.
    """

    def __init__(self, stdin: TextIO, stdout: TextIO) -> None:
        self._in = stdin
        self._out = stdout
        self._fd: int | None = None
        with contextlib.suppress(AttributeError, OSError, ValueError):
            self._fd = stdin.fileno()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lines: deque[str] = deque()
        self._partial = ""
        self._eof = False
        self._watchable = self._fd is not None
        self._line_start = True

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    @property
    def at_line_start(self) -> bool:
        return self._line_start

    def write(self, text: str) -> None:
        if text:
            self._out.write(text)
            self._out.flush()
            self._line_start = text.endswith("\n")

    async def read_line(self, prompt: str, *, hidden: bool) -> str | None:
        while not self._lines and not self._eof:
            await self._fill()
        if self._lines:
            return self._lines.popleft()
        return None

    async def _fill(self) -> None:
        if self._fd is None:
            self._take(self._in.readline())  # an in-memory stream: never waits
            return
        if self._watchable:
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                if not ready.done():
                    ready.set_result(None)

            try:
                loop.add_reader(self._fd, wake)
            except (PermissionError, OSError, ValueError):
                self._watchable = False  # a regular file or /dev/null: reads never block
            else:
                try:
                    await ready
                finally:
                    loop.remove_reader(self._fd)
        data = os.read(self._fd, 65536)
        self._take(self._decoder.decode(data, final=not data) if data else "")

    def _take(self, text: str) -> None:
        if not text:
            self._eof = True
            if self._partial:
                self._lines.append(self._partial)
                self._partial = ""
            return
        *full, self._partial = (self._partial + text).split("\n")
        self._lines.extend(line.removesuffix("\r") for line in full)
