"""What people are told in two corner cases (issue 13, item 5), through ``byokbot run``."""

from __future__ import annotations

import asyncio

from bot import texts
from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import deleted, sign_up_byok, sign_up_with_key, start_bot


async def test_a_key_sent_after_its_request_expired_gets_the_expired_answer(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    tg_ws.configure({"core": {"intake_ttl_seconds": 2, "intake_sweep_interval_seconds": 1}})
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(tg_ws)
    await sign_up_byok(ada)
    # Past the TTL, and past a sweep of expired sessions too.
    await bot.wait_output(r"expired 1 intake session", within=30)
    await asyncio.sleep(1.5)

    key_message = ada.reply_to_prompt(key)
    expired = texts.INTAKE_EXPIRED.format(provider="anthropic")
    await ada.wait_text(expired, within=30)
    assert deleted(telegram, key_message)
    leak = texts.LEAK_WARNING.split("{")[0].strip()
    assert not any(leak in t for t in ada.texts())
    assert not llm.keys()  # the late key was neither checked nor used


async def test_a_sub_second_retry_after_is_never_try_again_in_0_seconds(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    await start_bot(tg_ws)
    await sign_up_with_key(ada, key)

    llm.fail(429, error_type="rate_limit_error", retry_after="0.4")
    ada.send("hello")
    text = await ada.wait_text("rate-limiting", within=30)
    assert "in 0 seconds" not in text
    assert "try again in 1 second." in text
