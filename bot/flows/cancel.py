"""``/cancel`` and the Cancel button: end whatever the person has pending, and say so.

Pending means a persisted flow state (a key request, the /delete confirmation), an open key
request without one (a modal opened on Discord or Slack), or an unused /link code.
"""

from __future__ import annotations

from bot import texts
from bot.flows.base import Refusal, Turn
from core.chat import Outcome


async def handle_cancel(turn: Turn) -> Outcome | None:
    await turn.say("\n".join(await _cancel_all(turn)))
    return None


async def on_cancel_button(turn: Turn, args: list[str]) -> Outcome | None:
    """``cancel:<ticket>`` under a key prompt ends that request only; ``cancel`` ends all."""
    if not args:
        return await handle_cancel(turn)
    if len(args) != 1:
        raise Refusal(texts.STALE_BUTTON)
    s = turn.services
    state = await s.flow_states.get(turn.user.identity)
    if state is not None and state.flow == "keys" and state.data.get("ticket") == args[0]:
        await s.intake.cancel(args[0])
        await s.flow_states.clear(turn.user.identity)
        await turn.say(texts.KEY_REQUEST_CANCELLED)
        return None
    if state is not None or await s.intake.pending_for(turn.user) is not None:
        # Something newer is pending; this button was for a request that already ended.
        raise Refusal(texts.STALE_BUTTON)
    raise Refusal(texts.NOTHING_TO_CANCEL)


async def _cancel_all(turn: Turn) -> list[str]:
    s = turn.services
    lines: list[str] = []
    state = await s.flow_states.get(turn.user.identity)
    if state is not None:
        await s.flow_states.clear(turn.user.identity)
        if (state.flow, state.step) == ("account", "confirm_delete"):
            lines.append(texts.DELETE_CANCELLED)
        elif state.flow != "keys":
            lines.append(texts.FLOW_CANCELLED)
    # A key request may be open with no state (a modal's, or one whose state was replaced).
    if await s.intake.cancel_for(turn.user) or (state is not None and state.flow == "keys"):
        lines.append(texts.KEY_REQUEST_CANCELLED)
    if await s.intake.cancel_for(turn.user, links=True):
        lines.append(texts.LINK_CODE_CANCELLED)
    return lines or [texts.NOTHING_TO_CANCEL]
