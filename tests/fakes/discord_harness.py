"""Helpers for Discord scenario tests: a started adapter against ``FakeDiscord``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from adapters.discord.adapter import CommandCatalog, DiscordAdapter
from adapters.discord.config import DiscordConfig
from core.chat import Event, Outcome
from core.secret import Secret
from tests.fakes.discord_server import FakeDiscord

# The shape of a real bot token (three base64 parts); a canary: it must appear in no log.
CANARY_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GcAnRy.c4n4ry-t0ken-v4lue_0123456789abcdefgh"

Behaviour = Callable[[DiscordAdapter, Event], Awaitable[Outcome | None]]


class Script:
    """A stand-in for the router: records events and runs the test's behaviour for each."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.behaviour: Behaviour | None = None
        self.adapter: DiscordAdapter | None = None

    async def __call__(self, event: Event) -> Outcome:
        self.events.append(event)
        if self.behaviour is not None and self.adapter is not None:
            outcome = await self.behaviour(self.adapter, event)
            if outcome is not None:
                return outcome
        return Outcome()


def make_config(fake: FakeDiscord, **overrides: Any) -> DiscordConfig:
    options: dict[str, Any] = {
        "token": Secret(CANARY_TOKEN),
        "api_base_url": fake.api_base,
        "gateway_url": fake.gateway_url,
        "edit_interval": 0.05,
        "defer_after": 2.0,
    }
    options.update(overrides)
    return DiscordConfig(**options)


@asynccontextmanager
async def running(
    fake: FakeDiscord,
    *,
    catalog: CommandCatalog | None = None,
    clock: Callable[[], float] | None = None,
    typing_refresh: float = 8.0,
    **overrides: Any,
) -> AsyncIterator[tuple[DiscordAdapter, Script]]:
    """A started adapter wired to a ``Script``; stopped on exit."""
    script = Script()
    extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
    adapter = DiscordAdapter(
        make_config(fake, **overrides),
        catalog=catalog,
        guild_ready_timeout=0.05,
        ready_timeout=10,
        typing_refresh=typing_refresh,
        **extra,
    )
    script.adapter = adapter
    await adapter.start(script)
    try:
        yield adapter, script
    finally:
        await adapter.stop()
