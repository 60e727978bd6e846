"""The tool loop of one reply: stream a step, run the tools it asks for, feed results back.

A step's text streams as it comes; its tool calls run concurrently once the step ends; their
results (an error is sent with ``is_error`` / an "Error:" text) go back with the next step.
It stops when a step asks for no tool, or fails with ``TooManySteps`` when the model still
asks for one after ``max_steps`` rounds of tools. Every step's usage is reported on its own,
so the control plane meters each upstream call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import httpx

from core.llm import (
    LLMClient,
    TextDelta,
    ToolCall,
    ToolResult,
    ToolResults,
    ToolTurn,
    Usage,
)
from core.llm.client import Turn
from core.runtime import protocol
from core.runtime.tools import Tool, ToolContext, ToolFailed

log = logging.getLogger(__name__)

RESULT_LIMIT = 100_000
"""Characters of one tool result sent back (web_fetch bounds its own, far lower)."""


class TooManySteps(Exception):
    """The model asked for tools again after ``max_steps`` rounds."""


async def run_call(tools: Mapping[str, Tool], call: ToolCall, ctx: ToolContext) -> ToolResult:
    """One call's result, errors included (the model sees them and can recover)."""
    tool = tools.get(call.name)
    target = tool.target(call.arguments or {}) if tool is not None else ""
    # An MCP server's tool is reported under the name it was offered as (``mcp:<server>``).
    name = str(getattr(tool, "offered_as", call.name))
    await ctx.emit(protocol.ToolEvent(ctx.request_id, call.id, name, "start", target))
    failed = True
    try:
        if tool is None:
            text = f"there is no tool named {call.name!r}"
        elif call.arguments is None:
            text = "the arguments were not a valid JSON object"
        else:
            text = (await tool.run(call.arguments, ctx))[:RESULT_LIMIT]
            failed = False
    except ToolFailed as exc:
        text = str(exc)
    except (OSError, ValueError, httpx.HTTPError) as exc:
        # Unexpected, but the model can still answer without the tool: say so, log the class.
        log.warning("tool %s failed: %s", call.name, type(exc).__name__)
        text = f"the tool failed ({type(exc).__name__})"
    await ctx.emit(protocol.ToolEvent(ctx.request_id, call.id, name, "end", target, failed=failed))
    return ToolResult(call.id, text, is_error=failed)


async def run_loop(
    client: LLMClient,
    req: protocol.Request,
    tools: Mapping[str, Tool],
    ctx: ToolContext,
    emit: Callable[[protocol.FromAgent], Awaitable[None]],
    *,
    max_steps: int,
) -> None:
    """Answer ``req``: chunks and usage through ``emit``; raises ``LLMError``/``TooManySteps``."""
    messages: list[Turn] = list(req.messages)
    specs = [t.spec for t in tools.values()]
    rounds = 0
    while True:
        text: list[str] = []
        calls: list[ToolCall] = []
        async for item in client.stream(
            messages, model=req.model, system=req.system, max_tokens=req.max_tokens, tools=specs
        ):
            if isinstance(item, TextDelta):
                text.append(item.text)
                await emit(protocol.Chunk(req.id, item.text))
            elif isinstance(item, ToolCall):
                calls.append(item)
            elif isinstance(item, Usage):
                await emit(protocol.UsageReport(req.id, item.input_tokens, item.output_tokens))
        if not calls:
            return
        if rounds >= max_steps:
            raise TooManySteps
        rounds += 1
        results = await asyncio.gather(*(run_call(tools, c, ctx) for c in calls))
        messages.append(ToolTurn("".join(text), tuple(calls)))
        messages.append(ToolResults(tuple(results)))


def offered(
    names: Sequence[str], known: Mapping[str, Tool], config: protocol.ToolConfig
) -> dict[str, Tool]:
    """The tools of ``names`` this agent knows and can run (unknown names are ignored)."""
    out: dict[str, Tool] = {}
    for name in names:
        tool = known.get(name)
        if tool is not None and tool.available(config):
            out[name] = tool
    return out
