"""Slack deliveries claimed through several dedup keys: a retry racing its original is one turn."""

from __future__ import annotations

import asyncio
from types import MappingProxyType

from adapters.slack import SlackAdapter, translate
from adapters.slack import adapter as slack_adapter
from adapters.slack.config import parse
from core.chat import Event, Outcome
from core.config import PlatformSettings
from tests.fakes.slack_server import slack_env


class SlowFirstClaim:
    """A shared database dedup whose first answer comes back late (a busy replica)."""

    def __init__(self) -> None:
        self.claimed: set[str] = set()
        self.calls = 0

    async def first_time(self, key: str) -> bool:
        self.calls += 1
        slow = self.calls == 1
        fresh = key not in self.claimed
        self.claimed.add(key)  # committed at once; only the answer is late
        await asyncio.sleep(0.05 if slow else 0)
        return fresh


async def test_a_retry_racing_its_original_on_another_replica_is_handled_once() -> None:
    settings = PlatformSettings("slack", True, MappingProxyType({}))
    shared = SlowFirstClaim()
    replicas = [SlackAdapter(parse(settings, slack_env()), dedup=shared) for _ in range(2)]
    handled: list[str] = []

    async def handler(event: Event) -> Outcome:
        handled.append(event.event_id)
        return Outcome()

    raw = {"type": "message", "channel": "D0ADA", "user": "U0ADA", "text": "once", "ts": "17.1"}
    keys = ("slack:event:Ev1", translate.message_dedup_key(raw))
    deliveries = []
    for replica in replicas:
        replica._handler = handler
        event = translate.message_event(raw, bot_user_id="U0BOT", event_id="Ev1")
        assert event is not None
        deliveries.append(replica._deliver(event, slack_adapter._Context(origin="message"), keys))
    # The original's first claim is slow to answer; the retry arrives meanwhile.
    first = asyncio.ensure_future(deliveries[0])
    await asyncio.sleep(0.01)
    await asyncio.gather(first, deliveries[1])
    assert len(handled) == 1, "the message was dropped by both replicas (or handled twice)"
