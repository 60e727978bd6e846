"""Scheduled tasks: ``schedule_task``.

The agent checks the shape of ``when`` and sends a ``task`` event; the control plane knows the
person's time zone and plan limits, stores the task (or refuses it) and answers with a
``task_result``, which becomes the tool's result, so the model can tell the person why.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from core.llm import ToolSpec
from core.runtime import protocol
from core.runtime.tools import ToolContext, ToolFailed, string_arg

_CRON_FIELD: Final = re.compile(r"^[\d*/,\-A-Za-z]+$")


def valid_when(when: str) -> bool:
    """An ISO date-time or five cron fields (the control plane parses it fully)."""
    fields = when.split()
    if len(fields) == 5:
        return all(_CRON_FIELD.match(f) for f in fields)
    try:
        datetime.fromisoformat(when)
    except ValueError:
        return False
    return True


class ScheduleTask:
    name: Final = "schedule_task"
    spec: Final = ToolSpec(
        "schedule_task",
        "Schedule a prompt to run later in this chat (a reminder, a recurring summary). "
        "'when' is either a local date-time in ISO form (2026-12-03T09:00) in the person's "
        "time zone, or a 5-field cron expression (minute hour day month weekday), e.g. "
        "'0 8 * * mon-fri' for weekdays at 8.",
        {
            "type": "object",
            "properties": {
                "when": {"type": "string", "description": "ISO local time or 5-field cron."},
                "prompt": {
                    "type": "string",
                    "description": "What to do at that time, e.g. 'Remind me to call Bob.'",
                },
            },
            "required": ["when", "prompt"],
        },
    )

    def target(self, args: Mapping[str, Any]) -> str:
        when = args.get("when")
        return when[:40] if isinstance(when, str) else ""

    def available(self, config: protocol.ToolConfig) -> bool:
        return True

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> str:
        when = string_arg(args, "when", limit=100)
        prompt = string_arg(args, "prompt", limit=2000)
        if not valid_when(when):
            raise ToolFailed(
                "'when' must be an ISO local time like 2026-12-03T09:00 or five cron fields"
            )
        event = protocol.TaskEvent(ctx.request_id, when, prompt, secrets.token_hex(6))
        if ctx.ask_task is None:
            await ctx.emit(event)
            return f"Task submitted for {when}. The person sees it in /tasks."
        answer = await ctx.ask_task(event)
        if answer is None:
            raise ToolFailed(
                "byokbot did not confirm the task in time; ask the person to check /tasks"
            )
        if not answer.ok:
            raise ToolFailed(answer.message)
        return answer.message


SCHEDULE_TASK: Final = ScheduleTask()
