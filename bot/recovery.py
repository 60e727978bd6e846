"""Turns a crash cut short: resumed where the event can be replayed, else the person is told.

A delivery left ``pending`` in the inbox by a process that died (its lease ran out) is claimed
by one live process. A Telegram message or command is replayed through the router (the key
flow then deletes a key message and answers as it would have); a turn already replayed
``resume_attempts`` times, a form-submitted secret, an interaction that can no longer be
answered (Discord, Slack) or a body that cannot be opened gets a note asking to send it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping

from bot import texts
from core.chat import Event, EventKind, Outcome, Platform, Reply
from core.inbox import DatabaseInbox, Orphan
from core.ports import Messenger

log = logging.getLogger("byokbot.recovery")

# Where replaying is safe: the event can be answered by a plain message at any later time.
REPLAYABLE: frozenset[Platform] = frozenset({Platform.TELEGRAM})
REPLAYABLE_KINDS: frozenset[EventKind] = frozenset(
    {EventKind.MESSAGE, EventKind.COMMAND, EventKind.BUTTON}
)


class Recovery:
    """Claims orphaned turns and resumes or answers each one; ``run`` is a scheduler job."""

    def __init__(
        self,
        inbox: DatabaseInbox,
        messengers: Mapping[Platform, Messenger],
        dispatch: Callable[[Event], Awaitable[Outcome]],
        *,
        resume_attempts: int,
        platforms: Callable[[], Collection[Platform]],
    ) -> None:
        self._inbox = inbox
        self._messengers = messengers
        self._dispatch = dispatch
        self._resume_attempts = resume_attempts
        self._platforms = platforms
        self.resumed = 0
        self.told = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        platforms = [p.value for p in self._platforms() if p in self._messengers]
        if not platforms:
            return
        orphans = await self._inbox.claim_orphans(platforms)
        # Each in its own task: one long replayed reply must not hold back the others.
        for orphan in orphans:
            task = asyncio.get_running_loop().create_task(self._handle(orphan))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop turns still being resumed (their rows stay pending for the next process)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self) -> None:
        """Wait for the turns being resumed (tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _handle(self, orphan: Orphan) -> None:
        event = orphan.event
        replays = orphan.attempts - 1  # the first attempt was the one that died
        if (
            orphan.resumable
            and event.user.platform in REPLAYABLE
            and event.kind in REPLAYABLE_KINDS
            and replays <= self._resume_attempts
        ):
            log.info(
                "inbox: resuming %s %s cut short by a restart (replay %d)",
                event.user.platform.value,
                event.kind.value,
                replays,
            )
            self.resumed += 1
            try:
                await self._dispatch(event)  # the router never raises
            finally:
                self._inbox.finish(event)
            return
        messenger = self._messengers.get(event.user.platform)
        if event.kind is EventKind.MESSAGE and not event.addressed:
            messenger = None  # group chatter not meant for the bot: nothing to resend
        if messenger is not None:
            log.info(
                "inbox: asking to resend a %s %s cut short by a restart",
                event.user.platform.value,
                event.kind.value,
            )
            try:
                await messenger.send(event.chat, Reply(text=texts.INBOX_RESEND))
            except Exception:
                # The note could not go out now; the row stays pending for the next claim.
                log.exception("inbox: the resend note could not be delivered")
                await self._inbox.release(event)
                return
            self.told += 1
        await self._inbox.done_now(event)
