"""An agent started after a key rotation stays alive (defect 2.11, the agent part).

The report: the agent that takes over after ``/key rotate`` "exits a few seconds after
answering (exited unexpectedly (code 255))". This test follows the report through
``byokbot run`` and waits past the old agent's drain grace period (5 s).
"""

from __future__ import annotations

import asyncio
import re

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson


def _prompts(person: TelegramPerson) -> int:
    return sum(
        1
        for c in person.server.calls
        if c.method == "sendMessage"
        and str(c.params.get("chat_id")) == str(person.user_id)
        and isinstance(c.params.get("reply_markup"), dict)
        and c.params["reply_markup"].get("force_reply")
    )


async def test_agent_after_rotation_stays_alive(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    first, second = anthropic_key(), anthropic_key()
    canaries.add(first, second)
    # Recycling off: it would swap the agent 5 s after its reply on purpose, and this test
    # watches that nothing else does.
    tg_ws.configure({"agent": {"recycle_after_idle_seconds": 0}})
    bot = await tg_ws.start("run")
    await bot.wait_output(r"telegram: serving @\w+ by polling", within=30)

    ada.send("/start")
    await ada.wait_text("Pick a plan")
    ada.press("BYOK")
    await ada.wait_text("Which provider")
    ada.press("Anthropic")
    await eventually(
        within=30, predicate=lambda: _prompts(ada) >= 1, message=lambda: "\n".join(ada.texts())
    )
    ada.reply_to_prompt(first)
    await ada.wait_text("sk-ant-…")
    ada.send("before rotation")
    await ada.wait_text("echo: before rotation", within=30)

    ada.send("/key rotate anthropic")
    await eventually(
        within=30, predicate=lambda: _prompts(ada) >= 2, message=lambda: "\n".join(ada.texts())
    )
    ada.reply_to_prompt(second)
    await eventually(
        within=30,
        predicate=lambda: sum("sk-ant-…" in t for t in ada.texts()) >= 2,
        message=lambda: "\n".join(ada.texts()),
    )
    ada.send("after rotation")
    await ada.wait_text("echo: after rotation", within=30)
    started = re.findall(r"agent for \S+ started \(pid (\d+)", bot.output())
    assert started, bot.output()
    live = int(started[-1])
    # The old agent drains within its grace period; the new one died ~5 s after answering.
    await asyncio.sleep(7)
    assert "exited unexpectedly" not in bot.output(), bot.output()
    assert live in bot.children(), (live, bot.children(), bot.output())

    before = len(re.findall(r"agent for \S+ started", bot.output()))
    ada.send("still there?")
    await ada.wait_text("echo: still there\\?", within=30)
    assert llm.keys("anthropic")[-1] == second
    assert len(re.findall(r"agent for \S+ started", bot.output())) == before, bot.output()
    assert "exited unexpectedly" not in bot.output(), bot.output()
    assert live in bot.children()
    assert not any(re.search("(?i)restart|stopped unexpectedly", t) for t in ada.texts())
