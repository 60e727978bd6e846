"""The console in a real terminal (a pty): hidden key prompts, Ctrl-C, /stop mid-reply, long pastes.

Each test runs ``byokbot chat`` (or ``run`` with no platform) with the pty's slave side as its
controlling terminal and acts on the master side as a keyboard does; what the person saw is the
master side's output, kept as a transcript that the canary scan reads too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.system.console_fixtures import TerminalPerson
from tests.system.harness import CanaryScan, Workspace, eventually

CTRL_C = "\x03"
PROMPT = r"you>"
HIDDEN = r"Your Anthropic API key \(hidden\):"


@pytest.fixture
async def person(ws: Workspace) -> AsyncIterator[TerminalPerson]:
    someone = await TerminalPerson.start(ws, "chat")
    try:
        yield someone
    finally:
        someone.close()


async def sign_up(person: TerminalPerson) -> None:
    """/start, the BYOK plan and Anthropic: up to the hidden key prompt."""
    await person.wait_text(PROMPT)
    await person.line("/start")
    await person.expect(r"\[\d+\] BYOK(.|\n)*type a number")
    await person.line(person.choice("BYOK"))
    await person.expect(r"\[\d+\] Anthropic")
    await person.line(person.choice("Anthropic"))
    await person.expect(HIDDEN)


async def with_key(person: TerminalPerson, key: str) -> None:
    await sign_up(person)
    await person.line(key)
    await person.expect(r"Key saved: sk-ant-…")


async def test_every_key_prompt_hides_what_is_typed_the_retry_too(
    person: TerminalPerson, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    """Defect 4: after a refused key the retry was read at the visible ``you>`` prompt."""
    refused, good = anthropic_key(), anthropic_key()
    canaries.add(refused, good)
    llm.valid_keys = {good}
    await sign_up(person)
    await person.line(refused)
    await person.expect(r"Anthropic refused that key")
    # The retry is asked for again at a hidden prompt, not at ``you>``.
    shown = await person.expect(HIDDEN)
    assert shown.rstrip().endswith("(hidden):"), shown
    await person.line(good)
    await person.expect(r"Key saved: sk-ant-…")
    screen = person.screen()
    assert refused not in screen and good not in screen, person.text()
    assert good in [r.key for r in llm.requests]  # the live check carried the retried key


async def test_enter_on_an_empty_key_prompt_cancels_the_request(
    person: TerminalPerson, llm: FakeLLMServer
) -> None:
    await sign_up(person)
    await person.line("")
    await person.expect(r"Key request cancelled — nothing was saved")
    await person.line("hello")
    await person.expect(r"no API key to use")
    assert llm.requests == []  # nothing was checked as a key, nothing reached an agent


async def test_ctrl_c_quits_at_once_at_the_prompt(person: TerminalPerson) -> None:
    """Defect 9: Ctrl-C did nothing until Enter was pressed."""
    await person.wait_text(PROMPT)
    await person.type(CTRL_C)
    assert await person.exit_code(within=5) == 130


async def test_ctrl_c_quits_at_once_at_the_hidden_key_prompt(person: TerminalPerson) -> None:
    await sign_up(person)
    await person.type(CTRL_C)
    assert await person.exit_code(within=5) == 130


async def test_ctrl_c_quits_at_once_while_a_reply_streams(
    person: TerminalPerson, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    key = anthropic_key()
    canaries.add(key)
    await with_key(person, key)
    llm.gate = asyncio.Event()
    await person.line("tell me a long story")
    await asyncio.wait_for(llm.mid_stream.wait(), 20)
    await person.type(CTRL_C)
    assert await person.exit_code(within=5) == 130
    # The terminal's SIGINT reaches the whole foreground group: the agent must not die of it.
    assert "stopped unexpectedly" not in person.text(), person.text()


async def test_ctrl_d_on_an_empty_line_ends_the_chat(person: TerminalPerson) -> None:
    await person.wait_text(PROMPT)
    await person.type("\x04")
    assert await person.exit_code(within=5) == 0


async def test_stop_cancels_a_reply_while_it_streams(
    person: TerminalPerson, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    """Defect 9: input was not read while a reply streamed, so /stop could not be used."""
    key = anthropic_key()
    canaries.add(key)
    await with_key(person, key)
    llm.gate = asyncio.Event()
    await person.line("tell me a long story")
    await asyncio.wait_for(llm.mid_stream.wait(), 20)
    await person.expect(r"echo:")
    await person.line("/stop")
    await person.expect(r"Stopped\.", within=10)
    llm.gate.set()  # the provider would go on; the stopped reply must not
    await eventually(lambda: llm.disconnects >= 1, within=10, message="the stream was not cut")
    await asyncio.sleep(0.3)
    assert "echo: tell" not in person.text()
    llm.gate = None
    await person.line("and now?")
    await person.expect(r"echo: and now\?")


def _length_reply(messages: list[dict[str, Any]]) -> str:
    last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    text = last if isinstance(last, str) else "".join(p.get("text", "") for p in last)
    return f"got {len(text)} characters"


def _paste(length: int) -> str:
    words = "the quick brown fox jumps over a lazy dog "
    return (words * (length // len(words) + 1))[: length - 1] + "."


@pytest.mark.parametrize("length", [5000, 7999])
async def test_a_long_paste_arrives_whole(
    ws: Workspace, llm: FakeLLMServer, canaries: CanaryScan, length: int
) -> None:
    """Defect 9: a paste over 4,095 characters was cut by the terminal's line limit."""
    key = anthropic_key()
    canaries.add(key)
    llm.reply = _length_reply
    person = await TerminalPerson.start(ws, "chat")
    try:
        await with_key(person, key)
        await person.line(_paste(length))
        await person.expect(rf"got {length} characters", within=20)
    finally:
        person.close()


async def test_a_paste_over_the_limit_is_refused_with_its_length(
    ws: Workspace, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    key = anthropic_key()
    canaries.add(key)
    ws.configure({"core": {"max_message_chars": 4500}})
    person = await TerminalPerson.start(ws, "chat")
    try:
        await with_key(person, key)
        before = len(llm.keys())
        await person.line(_paste(5000))
        await person.expect(r"too long for me \(5000 characters; the limit is 4500\)")
        assert len(llm.keys()) == before  # nothing went to the agent
    finally:
        person.close()


async def test_run_without_a_platform_is_the_same_console(
    ws: Workspace, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    """``byokbot run`` with no platform enabled falls back to this console, hidden prompts too."""
    refused, good = anthropic_key(), anthropic_key()
    canaries.add(refused, good)
    llm.valid_keys = {good}
    person = await TerminalPerson.start(ws, "run")
    try:
        await sign_up(person)
        await person.line(refused)
        await person.expect(HIDDEN)
        await person.line(good)
        await person.expect(r"Key saved: sk-ant-…")
        await person.type(CTRL_C)
        assert await person.exit_code(within=5) == 130
    finally:
        person.close()
