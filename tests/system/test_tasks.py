"""Scheduled tasks through ``byokbot run`` on Telegram (issue 14 item 2).

The fake model scripts a ``schedule_task`` call a few seconds ahead, in the person's time zone
(set with ``/timezone``); the due task's prompt reaches the provider and its answer the chat,
across a kill -9 restart. ``[tools.tasks] interval_seconds`` is short so tests take seconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson
from tests.system.task_steps import RAN, REFUSED, ZONE, local_in, script_reminders, signed_up
from tests.system.telegram_steps import llm_saw, restart_bot


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
    # Fifteen seconds: the exchange before the cancel goes at Telegram's pace (about one message
    # a second per chat) and must end before the task is due, on a busy machine too.
    at = local_in(15)
    script_reminders(
        llm,
        {"first": (at, "feed the fish"), "second": ("0 8 * * mon-fri", "summarise the news")},
    )
    ada.send("first reminder please")
    await ada.wait_text("Okay, scheduled.", within=30)
    ada.send("second reminder please")
    # The refusal reaches the model as the tool's error, and the model tells the person.
    await ada.wait_text(REFUSED + ".*the most their plan allows", within=30)

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
