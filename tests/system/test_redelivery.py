"""Redelivered platform updates through ``byokbot run``: handled once, even across a restart."""

from __future__ import annotations

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer, message
from tests.system.harness import CanaryScan, Workspace
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import restart_bot, sign_up_with_key, start_bot


def _asked(llm: FakeLLMServer, text: str) -> int:
    """How many chat requests ended with ``text`` as the newest user message."""
    count = 0
    for r in llm.requests:
        users = [m for m in r.body.get("messages", []) if m.get("role") == "user"]
        if users and users[-1].get("content") == text:
            count += 1
    return count


async def test_an_update_redelivered_after_a_restart_is_handled_once(
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

    body = message(ada.user_id, ada.user, "count me once", message_id=telegram.next_message_id())
    update_id = ada.send_update(body)
    await ada.wait_text("echo: count me once", within=30)
    assert _asked(llm, "count me once") == 1

    bot = await restart_bot(tg_ws, bot)
    telegram.redeliver(update_id, body)
    await bot.wait_output(rf"update {update_id} was delivered again; ignored", within=15)
    # A later message is answered, so the restarted bot did read past the redelivery.
    ada.send("and then this")
    await ada.wait_text("echo: and then this", within=30)
    assert _asked(llm, "count me once") == 1
    assert sum("echo: count me once" in t for t in ada.texts()) == 1
