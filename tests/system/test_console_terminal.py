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
PROMPT = r"you> "
HIDDEN = r"Your Anthropic API key \(hidden\): "


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
    mark = person.mark()
    await person.line("/start")
    await person.wait_text(r"\[\d+\] BYOK.*\n(.*\n)*.*type a number", after=mark)
    byok = person.choice("BYOK", after=mark)
    mark = person.mark()
    await person.line(byok)
    await person.wait_text(r"\[\d+\] Anthropic", after=mark)
    anthropic = person.choice("Anthropic", after=mark)
    mark = person.mark()
    await person.line(anthropic)
    await person.wait_text(HIDDEN, after=mark)


async def with_key(person: TerminalPerson, key: str) -> None:
    await sign_up(person)
    mark = person.mark()
    await person.line(key)
    await person.wait_text(r"Key saved: sk-ant-…", after=mark)
    await person.wait_text(PROMPT, after=mark)


async def test_every_key_prompt_hides_what_is_typed_the_retry_too(
    person: TerminalPerson, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    """Defect 4: after a refused key the retry was read at the visible ``you>`` prompt."""
    refused, good = anthropic_key(), anthropic_key()
    canaries.add(refused, good)
    llm.valid_keys = {good}
    await sign_up(person)
    mark = person.mark()
    await person.line(refused)
    await person.wait_text(r"Anthropic refused that key", after=mark)
    # The retry is asked for again at a hidden prompt, not at ``you>``.
    await person.wait_text(HIDDEN, after=mark)
    mark = person.mark()
    await person.line(good)
    await person.wait_text(r"Key saved: sk-ant-…", after=mark)
    screen = person.screen()
    assert refused not in screen and good not in screen, person.text()
    assert good in llm.keys("anthropic")  # the live check carried the retried key


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


async def test_stop_cancels_a_reply_while_it_streams(
    person: TerminalPerson, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    """Defect 9: input was not read while a reply streamed, so /stop could not be used."""
    key = anthropic_key()
    canaries.add(key)
    await with_key(person, key)
    llm.gate = asyncio.Event()
    mark = person.mark()
    await person.line("tell me a long story")
    await asyncio.wait_for(llm.mid_stream.wait(), 20)
    await person.wait_text(r"echo: ", after=mark)
    await person.line("/stop")
    await person.wait_text(r"Stopped\.", after=mark, within=10)
    llm.gate.set()  # the provider would go on; the stopped reply must not
    await eventually(lambda: llm.disconnects >= 1, within=10, message="the stream was not cut")
    await asyncio.sleep(0.3)
    assert "echo: tell" not in person.since(mark)
    llm.gate = None
    mark = person.mark()
    await person.line("and now?")
    await person.wait_text(r"echo: and now\?", after=mark)


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
        text = _paste(length)
        mark = person.mark()
        await person.line(text)
        await person.wait_text(rf"got {len(text)} characters", after=mark, within=20)
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
        mark = person.mark()
        await person.line(_paste(5000))
        await person.wait_text(r"too long for me \(5000 characters; the limit is 4500\)", after=mark)
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
        mark = person.mark()
        await person.line(refused)
        await person.wait_text(HIDDEN, after=mark)
        await person.line(good)
        await person.wait_text(r"Key saved: sk-ant-…", after=mark)
        await person.wait_text(PROMPT, after=mark)
        await person.type(CTRL_C)
        assert await person.exit_code(within=5) == 130
    finally:
        person.close()
