"""The console's input: the one-line editor, the input row, pipes, and hidden key retries."""

from __future__ import annotations

import asyncio
import io
import os
from datetime import UTC, datetime
from pathlib import Path

from adapters.console import ConsoleAdapter
from adapters.console.terminal import (
    PASTE_END,
    PASTE_START,
    EndOfInput,
    LineEditor,
    LineInput,
    fit_line,
    width_of,
)
from core.chat import Event, EventKind, Outcome, SecretRequest


def test_the_editor_finishes_lines_and_leaves_the_rest_unread() -> None:
    editor = LineEditor()
    used, line = editor.feed("/key add\rsk-typed-ahead")
    assert (used, line) == (9, "/key add")  # what follows waits for the next prompt
    assert editor.text == ""


def test_the_editor_erases_and_ignores_control_keys() -> None:
    editor = LineEditor()
    keys = "helo\x7f\x7fllo wor\x17world\x1b[D\x1bOP\x01!"
    assert editor.feed(keys) == (len(keys), None)
    assert editor.text == "hello world!"
    assert editor.feed("\x15") == (1, None)
    assert editor.text == ""


def test_ctrl_d_ends_input_only_on_an_empty_line() -> None:
    editor = LineEditor()
    assert editor.feed("x\x04") == (2, None)
    assert editor.text == "x"
    editor.feed("\x7f")
    _, done = editor.feed("\x04")
    assert isinstance(done, EndOfInput)


def test_a_bracketed_paste_is_one_message_newlines_and_all() -> None:
    editor = LineEditor()
    long_text = "a" * 5000
    _, line = editor.feed(f"{PASTE_START}first\r{long_text}\rlast{PASTE_END}\r")
    assert line == f"first\n{long_text}\nlast"


def test_the_input_row_fits_the_terminal_by_scrolling_old_text_off() -> None:
    assert fit_line("you> ", "hi", 80) == "you> hi"
    row = fit_line("you> ", "x" * 500 + "end", 40)
    assert row.startswith("you> …") and row.endswith("end")
    assert width_of(row) <= 39
    wide = fit_line("you> ", "語" * 100, 40)
    assert width_of(wide) <= 39
    assert fit_line("you> ", "a\nb\tc", 80) == "you> a↵b c"


async def test_lines_from_a_pipe_are_whole_however_long() -> None:
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "r")
    source = LineInput(reader, io.StringIO())
    long_line = "y" * 70_000  # longer than one read, and than a terminal's 4,095
    os.write(write_fd, b"first\r\n")
    assert await source.read_line("you> ", hidden=False) == "first"

    async def feed() -> None:
        for start in range(0, len(long_line), 16_000):
            os.write(write_fd, long_line[start : start + 16_000].encode())
            await asyncio.sleep(0.01)
        os.write(write_fd, "\nlast é".encode())
        os.close(write_fd)

    writer = asyncio.create_task(feed())
    assert await source.read_line("you> ", hidden=False) == long_line
    assert await source.read_line("you> ", hidden=False) == "last é"
    assert await source.read_line("you> ", hidden=False) is None
    await writer
    reader.close()


async def test_a_file_or_memory_stream_is_read_too(tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    path.write_text("one\ntwo")
    with path.open() as f:
        source = LineInput(f, io.StringIO())
        assert [await source.read_line("", hidden=False) for _ in range(3)] == ["one", "two", None]
    memory = LineInput(io.StringIO("a\n"), io.StringIO())
    assert await memory.read_line("", hidden=False) == "a"
    assert await memory.read_line("", hidden=False) is None


REQUEST = SecretRequest(
    token="t-1",
    provider="anthropic",
    title="Your Anthropic API key",
    prompt="Paste it at the hidden prompt.",
    expires_at=datetime(2030, 1, 1, tzinfo=UTC),
)


async def test_a_refused_key_still_open_is_asked_for_again_with_the_same_token() -> None:
    seen: list[tuple[EventKind, str, str]] = []
    console: list[ConsoleAdapter] = []

    async def handler(event: Event) -> Outcome:
        value = event.secret.reveal() if event.secret is not None else event.text
        seen.append((event.kind, event.intake_token, value))
        if event.kind is EventKind.COMMAND:
            await console[0].ask_secret(event, REQUEST)
            return Outcome()
        if event.kind is EventKind.SECRET and value == "bad":
            return Outcome(refused=True, secret_retry=True)
        if event.kind is EventKind.SECRET and value == "last":
            return Outcome(refused=True, secret_retry=False)
        return Outcome()

    out = io.StringIO()
    adapter = ConsoleAdapter(
        stdin=io.StringIO("/key add\nbad\nlast\nhello\n/key add\n\nafter\n"), stdout=out
    )
    console.append(adapter)
    await adapter.start(handler)
    await asyncio.wait_for(adapter.finished.wait(), 5)
    await adapter.stop()
    assert seen == [
        (EventKind.COMMAND, "", "/key add"),
        (EventKind.SECRET, "t-1", "bad"),  # refused, still open: the next line is a retry
        (EventKind.SECRET, "t-1", "last"),  # refused, request over: back to ordinary lines
        (EventKind.MESSAGE, "", "hello"),
        (EventKind.COMMAND, "", "/key add"),
        (EventKind.SECRET_CANCELLED, "t-1", ""),  # Enter on an empty prompt closes it
        (EventKind.MESSAGE, "", "after"),
    ]
    assert out.getvalue().count("Paste it at the hidden prompt.") == 1  # a retry: no repeat
