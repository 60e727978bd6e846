"""Steps the scheduled-task system tests share: a fake model that calls schedule_task, sign-up.

The fake model calls ``schedule_task(when, prompt)`` when the person's message contains a
trigger, and then, like a real model, relays byokbot's verdict (the tool result) to the person.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tests.canaries import anthropic_key
from tests.fakes.llm_server import (
    FakeCall,
    FakeLLMServer,
    Recorded,
    ToolStep,
    tool_results,
    tool_rounds,
)
from tests.system.harness import BotProcess, CanaryScan, Workspace
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import sign_up_with_key, start_bot

RAN = "running now as the person asked earlier.) "
ZONE = "Asia/Tokyo"  # far from UTC, so a time read in the wrong zone would be hours off
KEPT = "Okay, scheduled. "
REFUSED = "Sorry, I could not schedule that. "


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The person's newest message (tool results are user turns too, but not text)."""
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
        results = tool_results({"messages": messages})
        if not results:
            return "Okay, scheduled."
        _, result, failed = results[-1]
        return (REFUSED if failed else KEPT) + result

    llm.tool_script, llm.reply = script, answer


def turn(llm: FakeLLMServer, text: str) -> list[Recorded]:
    """The chat requests the provider received for the person's message ``text``, in order."""
    return [
        r
        for r in llm.requests
        if r.path == "/v1/messages" and last_user_text(r.body.get("messages", [])) == text
    ]


async def signed_up(
    ws: Workspace, ada: TelegramPerson, canaries: CanaryScan, *, zone: str | None = ZONE
) -> BotProcess:
    """``byokbot run`` with a short task interval; Ada signs up (and sets ``zone``)."""
    ws.configure({"tools.tasks": {"interval_seconds": 0.5}})
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(ws)
    await sign_up_with_key(ada, key)
    if zone is not None:
        ada.send(f"/timezone {zone}")
        await ada.wait_text(f"Time zone set to {zone}")
    return bot
