"""A new person on Telegram, through ``byokbot run``: plan, key, agent, rotation, leak, delete."""

from __future__ import annotations

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson


async def start_bot(ws: Workspace, telegram: FakeTelegramServer) -> None:
    bot = await ws.start("run")
    await bot.wait_output(r"telegram: serving @\w+ by polling", within=30)


async def test_byok_journey(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    first, second, pasted = anthropic_key(), anthropic_key(), anthropic_key()
    canaries.add(first, second, pasted)
    await start_bot(tg_ws, telegram)

    ada.send("/start")
    await ada.wait_text("Pick a plan")
    ada.press("BYOK")
    await ada.wait_text("Which provider")
    ada.press("Anthropic")
    await eventually(
        lambda: _has_prompt(ada),
        message=lambda: "\n".join(map(repr, telegram.calls[-8:])) + tg_ws.processes[0].output(),
    )
    key_msg = ada.reply_to_prompt(first)
    await ada.wait_text("sk-ant-…")
    await telegram.wait_for(
        lambda: any(int(c["message_id"]) == key_msg for c in telegram.calls_to("deleteMessage"))
    )

    ada.send("hello agent")
    await ada.wait_text("echo: hello agent", within=30)
    assert llm.keys("anthropic")[-1] == first

    ada.send("/key rotate anthropic")
    await eventually(lambda: _prompts(ada) >= 2, message=lambda: "\n".join(ada.texts()))
    ada.reply_to_prompt(second)
    await eventually(lambda: _count(ada, "sk-ant-…") >= 2, message=lambda: "\n".join(ada.texts()))
    ada.send("after rotation")
    await ada.wait_text("echo: after rotation", within=30)
    assert llm.keys("anthropic")[-1] == second

    leak = ada.send(f"here is my other key {pasted} ok")
    await telegram.wait_for(
        lambda: any(int(c["message_id"]) == leak for c in telegram.calls_to("deleteMessage"))
    )
    await ada.wait_text("(?i)rotate")
    assert all(pasted not in str(r.body) for r in llm.requests)

    ada.send("/delete")
    await ada.wait_text("(?i)erase")
    ada.press("Yes, erase")
    await ada.wait_text("(?i)erased")
    ada.send("still there?")
    await ada.wait_text("Pick a plan|/start")


def _prompts(person: TelegramPerson) -> int:
    return sum(
        1
        for c in person.server.calls
        if c.method == "sendMessage"
        and str(c.params.get("chat_id")) == str(person.user_id)
        and isinstance(c.params.get("reply_markup"), dict)
        and c.params["reply_markup"].get("force_reply")
    )


def _has_prompt(person: TelegramPerson) -> bool:
    return _prompts(person) >= 1


def _count(person: TelegramPerson, text: str) -> int:
    return sum(text in t for t in person.texts())
