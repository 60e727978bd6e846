"""A new person in the console, through ``byokbot run`` with no platform and lines on a pipe.

Start, the BYOK plan (numbered buttons), the key through the private prompt, a streamed reply
that carried that key, rotation, the leak guard, delete; end of input ends the program (0).
"""

from __future__ import annotations

import asyncio

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.system.console_fixtures import PipedPerson
from tests.system.harness import CanaryScan, Workspace


async def test_byok_journey_in_the_console(
    ws: Workspace, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    first, second, pasted = anthropic_key(), anthropic_key(), anthropic_key()
    canaries.add(first, second, pasted)
    bot = await ws.start("run", stdin=asyncio.subprocess.PIPE)
    me = PipedPerson(bot)
    await bot.wait_output(r"type /start to begin")

    await me.say("/start")
    await me.expect("Pick a plan")
    await me.choose("BYOK")
    await me.expect("Which provider")
    await me.choose("Anthropic")
    await me.expect(r"Paste your Anthropic API key")
    await me.say(first)
    await me.expect(r"Key saved: sk-ant-…")

    await me.say("hello agent")
    await me.expect(r"echo: hello agent\n")
    assert llm.keys("anthropic")[-1] == first

    await me.say("/key rotate anthropic")
    await me.expect(r"Paste your Anthropic API key")
    await me.say(second)
    await me.expect(r"Key rotated: sk-ant-…")
    await me.say("after rotation")
    await me.expect(r"echo: after rotation\n")
    assert llm.keys("anthropic")[-1] == second

    requests = len(llm.requests)
    await me.say(f"here is my other key {pasted} ok")
    await me.expect(r"looked like it contained an API key(.|\n)*rotate")
    assert len(llm.requests) == requests  # neither verified nor forwarded to the agent
    await me.say("/key list")
    listing = await me.expect(r"Your keys:\n.*\n")
    assert listing.count("anthropic:") == 1  # the pasted key was not stored

    await me.say("/delete")
    await me.expect("(?i)erases your account")
    await me.choose("Yes, erase everything")
    await me.expect("(?i)has been erased")
    await me.say("still there?")
    await me.expect("Send /start")

    await me.end_of_input()
    assert await bot.wait(10) == 0
    assert all(pasted not in str(r.body) and r.key != pasted for r in llm.requests)
