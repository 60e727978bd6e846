"""When ``byokbot run`` starts its agent template (the process every agent is forked from).

A new install starts it at the first sign-up (no agent can be asked for before), so the bot is
serving without it; a restart of an install that has tenants starts it once serving, before
any message. Seen from outside: the fork server among the bot's processes, and the replies.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.system.console_fixtures import PipedPerson
from tests.system.harness import BotProcess, CanaryScan, Workspace, eventually


def templates(bot: BotProcess) -> list[int]:
    """The bot's processes that are the fork server (the agent template)."""
    found = []
    for pid in bot.children():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing.forkserver" in cmdline:
            found.append(pid)
    return found


async def test_a_new_install_starts_the_template_at_sign_up_and_a_restart_once_serving(
    ws: Workspace, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    key = anthropic_key()
    canaries.add(key)
    bot = await ws.start("run", stdin=asyncio.subprocess.PIPE)
    me = PipedPerson(bot)
    await bot.wait_output(r"type /start to begin")
    assert templates(bot) == []  # serving, and nobody has signed up

    await me.say("/start")
    await me.choose("BYOK")
    await me.expect("Which provider")
    await eventually(lambda: len(templates(bot)) == 1)
    await me.choose("Anthropic")
    await me.expect(r"Paste your Anthropic API key")
    await me.say(key)
    await me.expect(r"Key saved: sk-ant-…")
    await me.say("first words")
    await me.expect(r"echo: first words\n")
    await me.end_of_input()
    assert await bot.wait(10) == 0

    again = await ws.start("run", stdin=asyncio.subprocess.PIPE)
    await again.wait_output(r"type /start to begin")
    await eventually(lambda: len(templates(again)) == 1)  # before anything was said
    person = PipedPerson(again)
    await person.say("after the restart")
    await person.expect(r"echo: after the restart\n")
    await person.end_of_input()
    assert await again.wait(10) == 0
    assert templates(again) == []
