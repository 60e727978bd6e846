"""schedule_task learns byokbot's verdict, through ``byokbot run`` on Telegram (issue 14 item 2).

The agent's tool result is what byokbot answered on the line protocol (``task_result``): kept
with the next run in the person's zone, or refused with the reason. These tests read it where
it crosses the process boundary: in the provider request that carries the tool result back to
the model. While schedule_task is offered the system prompt gives the person's local time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from tests.fakes.llm_server import FakeLLMServer, tool_results
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson
from tests.system.task_steps import (
    KEPT,
    REFUSED,
    ZONE,
    local_in,
    script_reminders,
    signed_up,
    turn,
)

ASKED_ZONE = "I need your time zone first"


def verdict(llm: FakeLLMServer, text: str) -> tuple[str, bool]:
    """The tool result of the turn started by ``text``: (content, is_error), after checks.

    The turn took two provider requests: the model's schedule_task call, then the request that
    carries the result back to it.
    """
    requests = turn(llm, text)
    assert len(requests) == 2, [r.body.get("messages") for r in requests]
    assert tool_results(requests[0].body) == []
    ((_, content, failed),) = tool_results(requests[1].body)
    return content, failed


def minute(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M")


def next_weekday_eight(now: datetime) -> datetime:
    """When ``0 8 * * mon-fri`` fires next after ``now`` (a local time), counted by hand."""
    day = now.replace(hour=8, minute=0, second=0, microsecond=0)
    if day <= now:
        day += timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


async def test_over_the_plan_limit_the_model_learns_why_and_nothing_is_stored(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    tg_ws.configure({"plans.byok": {"max_tasks": 1}})
    bot = await signed_up(tg_ws, ada, canaries)
    first = local_in(3 * 3600)
    script_reminders(
        llm,
        {"first": (first, "feed the fish"), "second": ("0 8 * * mon-fri", "summarise the news")},
    )
    ada.send("first reminder please")
    await ada.wait_text(KEPT, within=30)
    ada.send("second reminder please")
    await ada.wait_text(REFUSED + ".*the most their plan allows", within=30)

    content, failed = verdict(llm, "second reminder please")
    assert failed
    assert content.startswith("Not scheduled: the person already has 1 scheduled task(s)")
    assert "/tasks" in content
    # Only the first task is stored; byokbot said nothing in the chat itself about the refusal.
    ada.send("/tasks")
    listed = await ada.wait_text("Your scheduled tasks")
    assert f"1. {first}" in listed and "2." not in listed and "0 8 * * mon-fri" not in listed
    assert not any("plan allows" in t and not t.startswith(REFUSED) for t in ada.texts())
    await bot.terminate()


async def test_a_time_in_the_past_or_a_bad_schedule_is_refused_with_the_reason(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    bot = await signed_up(tg_ws, ada, canaries)
    gone = local_in(-2 * 3600)
    script_reminders(
        llm, {"yesterday": (gone, "call the bank"), "never": ("0 25 * * *", "stretch")}
    )
    ada.send("remind me yesterday please")
    await ada.wait_text(REFUSED + ".*already passed", within=30)
    before = datetime.now(ZoneInfo(ZONE))
    content, failed = verdict(llm, "remind me yesterday please")
    assert failed
    assert content.startswith(f"Not scheduled: {gone} in {ZONE} has already passed")
    # "now" is given in the person's zone (Tokyo), not UTC.
    stated = datetime.strptime(content.split("it is now ", 1)[1][:16], "%Y-%m-%d %H:%M")
    assert abs(stated - before.replace(tzinfo=None)) < timedelta(minutes=3)

    ada.send("remind me never please")
    await ada.wait_text(REFUSED + ".*Not scheduled: not a valid cron", within=30)
    content, failed = verdict(llm, "remind me never please")
    assert failed and "0 8 * * mon-fri" in content  # it is told what a schedule looks like

    ada.send("/tasks")
    await ada.wait_text("You have no scheduled tasks")
    await bot.terminate()


async def test_a_kept_task_tells_the_model_its_next_run_in_the_persons_zone(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    bot = await signed_up(tg_ws, ada, canaries)
    at = local_in(5 * 3600)
    script_reminders(
        llm, {"cactus": (at, "water the cactus"), "news": ("0 8 * * mon-fri", "the news")}
    )
    ada.send("remind me about the cactus")
    told = await ada.wait_text(KEPT, within=30)
    content, failed = verdict(llm, "remind me about the cactus")
    local = datetime.fromisoformat(at).replace(tzinfo=ZoneInfo(ZONE))
    assert not failed
    assert content.startswith(
        f"Scheduled. Next run: {minute(local)} ({local:%A}) in {ZONE} "
        f"({minute(local.astimezone(ZoneInfo('UTC')))} UTC)."
    )
    assert content in told  # the model had it to tell the person

    ada.send("every weekday, the news")
    await ada.wait_text(KEPT + r".* 08:00 \(", within=30)
    content, failed = verdict(llm, "every weekday, the news")
    eight = next_weekday_eight(datetime.now(ZoneInfo(ZONE)))
    assert not failed
    assert content.startswith(f"Scheduled. Next run: {minute(eight)} ({eight:%A}) in {ZONE}")

    ada.send("/tasks")
    listed = await ada.wait_text("Your scheduled tasks")
    assert f"1. {at}" in listed and "2. 0 8 * * mon-fri" in listed
    # Next runs are shown in the person's zone, as they were told when the tasks were kept.
    assert f"next: {minute(eight)} ({eight:%A}) {ZONE}" in listed, listed
    assert "UTC" not in listed, listed
    await bot.terminate()


async def test_the_system_prompt_gives_the_persons_local_time_while_tasks_are_offered(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    bot = await signed_up(tg_ws, ada, canaries, zone=None)
    ada.send("hello before any zone")
    await ada.wait_text("echo: hello before any zone", within=30)
    (request,) = turn(llm, "hello before any zone")
    system = str(request.body.get("system", ""))
    assert "UTC; the person's time zone is not known yet" in system
    assert "schedule_task" in str(request.body.get("tools"))

    ada.send(f"/timezone {ZONE}")
    await ada.wait_text(f"Time zone set to {ZONE}")
    ada.send("hello with a zone")
    await ada.wait_text("echo: hello with a zone", within=30)
    seen = datetime.now(ZoneInfo(ZONE)).replace(tzinfo=None)
    (request,) = turn(llm, "hello with a zone")
    system = str(request.body.get("system", ""))
    assert f"in the person's time zone, {ZONE}" in system
    stated = datetime.strptime(system.split("Now it is ", 1)[1][:16], "%Y-%m-%dT%H:%M")
    assert abs(stated - seen) < timedelta(minutes=3)  # Tokyo time, not UTC (9 hours off)
    await bot.terminate()

    # A plan without the tasks tool: no schedule_task, and no clock in the system prompt.
    tg_ws.configure({"plans.byok.tools": {"tasks": False}})
    bot = await tg_ws.start("run")
    await bot.wait_output(r"telegram: serving @\w+ by polling", within=30)
    ada.send("hello without tasks")
    await ada.wait_text("echo: hello without tasks", within=30)
    (request,) = turn(llm, "hello without tasks")
    assert "schedule_task" not in str(request.body.get("tools"))
    assert "Now it is" not in str(request.body.get("system", ""))
    await bot.terminate()


async def test_without_a_zone_tasks_wait_and_the_bot_asks_for_it_once(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    bot = await signed_up(tg_ws, ada, canaries, zone=None)
    script_reminders(
        llm,
        {"plants": ("2030-01-02T09:00", "water the plants"), "news": ("0 8 * * *", "news")},
    )
    ada.send("remind me about the plants")
    await ada.wait_text(KEPT + ".*no run time yet", within=30)
    ada.send("and the news every day")
    await eventually(
        lambda: sum(KEPT in t for t in ada.texts()) == 2, message=lambda: str(ada.texts())
    )
    for text in ("remind me about the plants", "and the news every day"):
        content, failed = verdict(llm, text)
        assert not failed and "time zone is unknown" in content
    assert sum(ASKED_ZONE in t for t in ada.texts()) == 1  # asked for the first task only

    ada.send("/tasks")
    listed = await ada.wait_text("Your scheduled tasks")
    assert listed.count("waiting for /timezone") == 2
    ada.send(f"/timezone {ZONE}")
    await ada.wait_text(f"Time zone set to {ZONE}")
    ada.send("/tasks")
    await ada.wait_text(r"1\. 2030-01-02T09:00 — next: (?!waiting).*\n2\. 0 8 \* \* \* — next: ")
    await bot.terminate()
