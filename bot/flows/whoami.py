"""``/whoami``: anyone's own platform id, written as ``[core] admins`` wants it."""

from __future__ import annotations

from bot import texts
from bot.flows.base import Turn
from core.chat import Outcome


async def handle_whoami(turn: Turn) -> Outcome | None:
    # Sensitive: in a group the id goes to the person alone (ephemeral or DM), not the room.
    identity = turn.user.identity
    admin = identity in turn.services.config.core.admins
    text = texts.WHOAMI.format(identity=identity)
    await turn.say(text + ("\n" + texts.WHOAMI_ADMIN if admin else ""), sensitive=True)
    return None
