"""``/timezone`` and ``/tasks``: the person's time zone and their scheduled tasks."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from bot import texts
from bot.flows.base import Refusal, Turn, button
from core.chat import Button, Outcome
from core.tasks import BadSchedule, DatabaseTasks

TASK_BUTTONS = 10


def _store(turn: Turn) -> DatabaseTasks:
    store = turn.services.tasks
    if store is None:
        raise Refusal(texts.TASKS_OFF)
    return store


async def handle_timezone(turn: Turn) -> Outcome | None:
    """``/timezone Area/City`` sets the zone tasks are read in; bare, it shows the current one."""
    tenant = turn.require_tenant()
    store = _store(turn)
    args = turn.event.args
    if not args:
        current = await store.timezone(tenant.id)
        await turn.say(texts.TIMEZONE_SHOW.format(tz=current) if current else texts.TIMEZONE_ASK)
        return None
    if len(args) != 1:
        raise Refusal(texts.TIMEZONE_USAGE)
    try:
        scheduled = await store.set_timezone(tenant.id, args[0])
    except BadSchedule:
        raise Refusal(texts.TIMEZONE_BAD.format(tz=args[0][:64])) from None
    await turn.say(texts.TIMEZONE_SET.format(tz=args[0], scheduled=scheduled))
    return None


async def handle_tasks(turn: Turn) -> Outcome | None:
    """``/tasks`` lists the scheduled tasks with a Cancel button each."""
    tenant = turn.require_tenant()
    store = _store(turn)
    tasks = await store.of(tenant.id)
    if not tasks:
        await turn.say(texts.TASKS_NONE)
        return None
    tz = await store.timezone(tenant.id)
    lines = "\n".join(
        texts.TASK_LINE.format(n=i, when=t.when, next=_next(t.next_run, tz))
        for i, t in enumerate(tasks, 1)
    )
    rows: list[list[Button]] = [
        [button(texts.TASK_CANCEL_BUTTON.format(n=i), f"task:{t.id}")]
        for i, t in enumerate(tasks[:TASK_BUTTONS], 1)
    ]
    await turn.say(texts.TASKS_LIST.format(lines=lines), buttons=rows)
    return None


def _next(when: datetime | None, tz: str | None) -> str:
    """The next run in the person's own zone (the one their tasks are read in)."""
    if when is None:
        return texts.TASK_NO_TZ
    tz = tz or "UTC"
    local = when.astimezone(ZoneInfo(tz))
    return f"{local:%Y-%m-%d %H:%M} ({local:%A}) {tz}"


async def on_task_button(turn: Turn, args: list[str]) -> Outcome | None:
    tenant = turn.require_tenant()
    store = _store(turn)
    if len(args) != 1 or not await store.cancel(tenant.id, args[0]):
        raise Refusal(texts.STALE_BUTTON)
    await turn.say(texts.TASK_CANCELLED)
    return None
