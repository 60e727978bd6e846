"""200 turns in one conversation through ``byokbot run`` in the console (lines on a pipe).

The console sends no platform messages, so the turns go as fast as the program answers; the
same compaction runs on every platform (tests/system/test_conversations.py covers Telegram's
commands around it).
"""

from __future__ import annotations

import asyncio
import re

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.system.console_fixtures import PipedPerson
from tests.system.conversation_support import (
    FACT,
    small_budget,
    summaries,
    summariser,
    system_of,
    user_texts,
)
from tests.system.harness import CanaryScan, Workspace


async def test_two_hundred_turns_keep_an_early_fact(
    ws: Workspace, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    key = anthropic_key()
    canaries.add(key)
    small_budget(ws)
    llm.reply = summariser
    llm.chunk_delay = 0.0  # this is about compaction, not how a reply streams
    bot = await ws.start("run", stdin=asyncio.subprocess.PIPE)
    me = PipedPerson(bot)
    await bot.wait_output(r"type /start to begin")
    await me.say("/start")
    await me.choose("BYOK")
    await me.choose("Anthropic")
    await me.expect(r"Paste your Anthropic API key")
    await me.say(key)
    await me.expect(r"Key saved: sk-ant-…")

    await me.say(FACT)
    await me.expect(f"echo: {re.escape(FACT)}\n")
    for i in range(200):
        text = f"turn {i} about nothing in particular, just filling the context"
        await me.say(text)
        await me.expect(f"echo: {re.escape(text)}\n")

    # The budget filled many times; each time the model itself summarised, with the same key.
    made = summaries(llm)
    assert len(made) >= 5
    assert {r.key for r in made} == {key}
    assert all("tools" not in r.body for r in made)
    await me.say("what is my cat called?")
    await me.expect(r"echo: what is my cat called\?\n")
    final = llm.requests[-1]
    assert "what is my cat called?" in user_texts(final)
    assert FACT not in user_texts(final), "the early turn itself should have been compacted"
    assert "Miso" in system_of(final), "the early fact did not survive compaction"
    assert len(final.body["messages"]) < 40  # bounded, not 400 turns

    before = len(summaries(llm))
    await me.say("/compact")
    answer = await me.expect(r"(?i)summarised the \d+ earlier messages.*\n")
    assert re.search(r"about \d+ tokens\) into a summary of about \d+ tokens", answer)
    assert len(summaries(llm)) > before  # one request, or one per part that fits

    await me.end_of_input()
    assert await bot.wait(10) == 0
