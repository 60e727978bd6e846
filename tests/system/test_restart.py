"""kill -9 in the middle of each flow, start again on the same work dir: nobody is stuck.

Each test brings a person on the fake Telegram halfway through a flow, SIGKILLs the whole
``byokbot run`` process group (the bot and its agents), starts it again, and checks that the
person can carry on: the old button still works or answers clearly, the reply to the old
prompt is taken, and their next message reaches the agent.
"""

from __future__ import annotations

import asyncio
import re

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import (
    deleted,
    llm_saw,
    restart_bot,
    sign_up_byok,
    sign_up_with_key,
    start_bot,
)


async def test_restart_before_choosing_a_plan(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(tg_ws)
    ada.send("/start")
    await ada.wait_text("Pick a plan")
    await restart_bot(tg_ws, bot)

    ada.press("BYOK")  # the button from before the restart
    await ada.wait_text("Which provider")
    ada.press("Anthropic")
    await ada.wait_text("Paste your Anthropic API key")
    ada.reply_to_prompt(key)
    await ada.wait_text("Key saved")
    ada.send("hello after the restart")
    await ada.wait_text("echo: hello after the restart", within=30)


async def test_restart_with_the_key_prompt_open(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(tg_ws)
    await sign_up_byok(ada)
    await restart_bot(tg_ws, bot)

    # A question first: the request survived the restart, so the note says it is still open.
    ada.send("are you still waiting?")
    await ada.wait_text(r"(?i)key request is still open")
    # The reply to the prompt sent before the restart is taken as the key, and deleted.
    key_msg = ada.reply_to_prompt(key)
    await ada.wait_text("Key saved")
    await telegram.wait_for(lambda: deleted(telegram, key_msg))
    ada.send("hello agent")
    await ada.wait_text("echo: hello agent", within=30)
    assert llm.keys("anthropic")[-1] == key


async def test_restart_while_a_reply_streams(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(tg_ws)
    await sign_up_with_key(ada, key)

    llm.gate = asyncio.Event()
    ada.send("tell me a long story")
    await asyncio.wait_for(llm.mid_stream.wait(), 30)
    await restart_bot(tg_ws, bot)
    llm.gate.set()  # the held stream's client is gone; let the fake finish it
    llm.gate = None

    ada.send("are you there?")
    await ada.wait_text("echo: are you there?", within=30)
    assert llm.keys("anthropic")[-1] == key


async def test_restart_with_the_delete_confirmation_pending(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(tg_ws)
    await sign_up_with_key(ada, key)
    ada.send("/delete")
    await ada.wait_text("(?i)are you sure")
    await restart_bot(tg_ws, bot)

    ada.press("Yes, erase")
    await ada.wait_text("(?i)has been erased")
    ada.send("anyone home?")
    await ada.wait_text("Pick a plan|/start")


async def test_restart_with_a_link_code_pending(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(tg_ws)
    await sign_up_with_key(ada, key)
    ada.send("/link")
    shown = await ada.wait_text(r"/link [A-Z0-9]{5}-[A-Z0-9]{5}")
    found = re.search(r"/link ([A-Z0-9]{5}-[A-Z0-9]{5})", shown)
    assert found is not None
    code = found.group(1)
    await restart_bot(tg_ws, bot)

    bob = TelegramPerson(telegram, 4343, "Bob", "bob")
    bob.send(f"/link {code}")
    await bob.wait_text("Linked!")
    bob.send("hello from the linked account")
    await bob.wait_text("echo: hello from the linked account", within=30)
    assert llm_saw(llm, "hello from the linked account")
    assert llm.keys("anthropic")[-1] == key
