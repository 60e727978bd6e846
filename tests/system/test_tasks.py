"""Scheduled tasks through ``byokbot run`` on Telegram (issue 14 item 2).

The fake model scripts a ``schedule_task`` call a few seconds ahead, in the person's time zone
(set with ``/timezone``); the due task's prompt reaches the provider and its answer the chat,
across a kill -9 restart. ``[tools.tasks] interval_seconds`` is short so tests take seconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeCall, FakeLLMServer, ToolStep, tool_results, tool_rounds
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import BotProcess, CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import llm_saw, restart_bot, sign_up_with_key, start_bot

RAN = "running now as the person asked earlier.) "
ZONE = "Asia/Tokyo"  # far from UTC, so a time read in the wrong zone would be hours off


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return str(m["content"])
    return ""


def local_in(seconds: float) -> str:
    """An ISO local time (no offset) ``seconds`` from now in ``ZONE``."""
    at = datetime.now(ZoneInfo(ZONE)) + timedelta(seconds=seconds)
    return at.replace(tzinfo=None).isoformat(timespec="seconds")


def script_reminders(llm: FakeLLMServer, prompts: dict[str, tuple[str, str]]) -> None:
    """Messages containing a key of ``prompts`` make the model call schedule_task(when, prompt)."""

    def script(kind: str, messages: list[dict[str, Any]]) -> ToolStep | None:
        text = last_user_text(messages)
        for trigger, (when, prompt) in prompts.items():
            if tool_rounds(messages) == 0 and trigger in text and "Scheduled task" not in text:
                return ToolStep([FakeCall("schedule_task", {"when": when, "prompt": prompt})])
        return None

    def answer(messages: list[dict[str, Any]]) -> str:
        text = last_user_text(messages)
        if "Scheduled task" in text:
            return "Reminder: " + text.split(") ", 1)[-1]
        # Like a real model, relay byokbot's verdict (the tool result) to the person.
        results = tool_results({"messages": messages})
        if results and results[-1][2]:
            return "Sorry, I could not schedule that. " + results[-1][1]
        return "Okay, scheduled."

    llm.tool_script, llm.reply = script, answer


async def signed_up(ws: Workspace, ada: TelegramPerson, canaries: CanaryScan) -> BotProcess:
    ws.configure({"tools.tasks": {"interval_seconds": 0.5}})
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(ws)
    await sign_up_with_key(ada, key)
    ada.send(f"/timezone {ZONE}")
    await ada.wait_text(f"Time zone set to {ZONE}")
    return bot


async def test_a_reminder_survives_a_kill_and_arrives_on_time(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    bot = await signed_up(tg_ws, ada, canaries)
    at = local_in(12)
    script_reminders(llm, {"remind me": (at, "water the cactus")})
    ada.send("remind me to water the cactus in a few seconds")
    await ada.wait_text("Okay, scheduled.", within=30)
    ada.send("/tasks")
    await ada.wait_text(rf"1\. {at} — next: ", within=15)
    assert not llm_saw(llm, RAN + "water the cactus")  # not yet run

    bot = await restart_bot(tg_ws, bot)
    text = await ada.wait_text(r"⏰ Reminder: water the cactus", within=40)
    assert "water the cactus" in text
    # It ran no earlier than asked (the time was read in the person's zone, not UTC).
    assert datetime.now(ZoneInfo(ZONE)).replace(tzinfo=None) >= datetime.fromisoformat(at)
    assert llm_saw(llm, RAN + "water the cactus")  # the provider saw the task's prompt
    # A one-off is gone once it ran.
    ada.send("/tasks")
    await ada.wait_text("You have no scheduled tasks")
    await bot.terminate()


async def test_cancel_removes_a_task_and_the_plan_limit_is_answered(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    tg_ws.configure({"plans.byok": {"max_tasks": 1}})
    bot = await signed_up(tg_ws, ada, canaries)
    at = local_in(4)
    script_reminders(
        llm,
        {"first": (at, "feed the fish"), "second": ("0 8 * * mon-fri", "summarise the news")},
    )
    ada.send("first reminder please")
    await ada.wait_text("Okay, scheduled.", within=30)
    ada.send("second reminder please")
    # The refusal reaches the model as the tool's error, and the model tells the person.
    await ada.wait_text("Sorry, I could not schedule that.*the most their plan allows", within=30)

    ada.send("/tasks")
    await ada.wait_text(rf"1\. {at}")
    ada.press("Cancel 1")
    await ada.wait_text("Cancelled that task.")
    # Well past its time, the cancelled task never ran.
    deadline = datetime.fromisoformat(at) + timedelta(seconds=3)
    await eventually(
        lambda: datetime.now(ZoneInfo(ZONE)).replace(tzinfo=None) > deadline, within=20
    )
    assert not llm_saw(llm, RAN + "feed the fish")
    assert not any("Reminder:" in t for t in ada.texts())
    await bot.terminate()
