"""Discord for the system suite: the strict fake, a work dir serving it, people on it.

Import the fixtures into a test module (``from tests.system.discord_fixtures import *``-style,
by name) so pytest sees them. The fake runs in strict mode: it refuses what real Discord
refuses (a second interaction callback, a callback after 3 s, follow-ups before it, a modal
that does not answer a command or a component, labels over Discord's limits, deleting a
person's DM), and those refusals are what the tests look for.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.canaries import discord_token
from tests.fakes.discord_server import GUILD_CHANNEL_ID, BotMessage, FakeDiscord, Modal
from tests.system.harness import BotProcess, CanaryScan, Workspace, calls_text

DISCORD_TOKEN_ENV = "DISCORD_BOT_TOKEN"
SERVER_CHANNEL = GUILD_CHANNEL_ID
_SUB_COMMAND, _STRING = 1, 3


@pytest.fixture
async def discord(canaries: CanaryScan) -> AsyncIterator[FakeDiscord]:
    """The strict fake Discord; its recorded calls and the bot's gateway frames are scanned."""
    async with FakeDiscord(strict=True) as fake:
        token = discord_token()
        fake.token = token
        canaries.add(token)

        def recorded() -> Iterable[tuple[str, bytes]]:
            yield "discord REST calls", calls_text(fake.calls)
            # IDENTIFY carries the token by design; every other frame must not.
            frames = [f for f in fake.gateway_frames if f.get("op") not in (2, 6)]
            yield "discord gateway frames", json.dumps(frames).encode()

        canaries.watch(recorded)
        yield fake


def discord_tables(fake: FakeDiscord) -> dict[str, dict[str, object]]:
    return {
        "discord": {
            "enabled": True,
            "api_base_url": fake.api_base,
            "gateway_url": fake.gateway_url,
            "edit_interval": 0.2,
            "defer_after": 1.0,
        }
    }


@pytest.fixture
def dc_ws(ws: Workspace, discord: FakeDiscord) -> Workspace:
    """A work dir whose config serves the fake Discord, with the token in the environment."""
    ws.configure(discord_tables(discord))
    ws.configure({"core": {"admins": ["discord:800000000000000001", "console:local"]}})
    ws.env[DISCORD_TOKEN_ENV] = discord.token
    return ws


async def start_discord_bot(ws: Workspace, fake: FakeDiscord) -> BotProcess:
    """``byokbot run`` serving the fake Discord, ready once its commands are registered."""
    bot = await ws.start("run")
    await bot.wait_output(r"discord adapter started", within=30)
    assert fake.commands, "no slash commands registered"
    return bot


@pytest.fixture
def ada_dc(discord: FakeDiscord) -> DiscordPerson:
    return DiscordPerson(discord, "700000000000000001", "ada")


_person_ids = itertools.count(700_000_000_000_000_101)


@dataclass
class DiscordPerson:
    """Someone on the fake Discord: slash commands, buttons, modals, DMs, server messages."""

    server: FakeDiscord
    user_id: str
    name: str = "ada"
    sent: list[str] = field(default_factory=list)

    @property
    def user(self) -> dict[str, Any]:
        return self.server.user(self.user_id, self.name)

    @property
    def dm(self) -> str:
        """The id of this person's DM channel with the bot."""
        return self.server.dm_channel(self.user_id)

    # -- acting ---------------------------------------------------------------------------

    async def slash(
        self, name: str, sub: str | None = None, *, channel: str | None = None, **values: str
    ) -> dict[str, Any]:
        """Run ``/name [sub] option:value…`` in the DM (default) or a server channel."""
        options = [{"type": _STRING, "name": k, "value": v} for k, v in values.items()]
        if sub is not None:
            options = [{"type": _SUB_COMMAND, "name": sub, "options": options}]
        payload = self.server.slash(self.user, name, options, channel_id=channel)
        await self.server.dispatch("INTERACTION_CREATE", payload)
        return payload

    def button(self, label: str, channel: str | None = None) -> tuple[BotMessage, str] | None:
        """The newest visible button whose label contains ``label``: (message, custom id)."""
        for message in reversed(self.visible(channel)):
            for button in message.buttons():
                if label.lower() in str(button.get("label", "")).lower() and button.get(
                    "custom_id"
                ):
                    return message, str(button["custom_id"])
        return None

    async def press(
        self, label: str, *, channel: str | None = None, within: float = 10.0
    ) -> dict[str, Any]:
        """Press the newest visible button whose label contains ``label`` (waits for it)."""
        try:
            await self.server.wait_for(
                lambda: self.button(label, channel) is not None, limit=within
            )
        except TimeoutError:
            raise AssertionError(
                f"no button {label!r}; the channel shows:\n{self.transcript(channel)}"
            ) from None
        found = self.button(label, channel)
        assert found is not None
        return await self._component(found[0], found[1], channel)

    async def _component(
        self, message: BotMessage, custom_id: str, channel: str | None
    ) -> dict[str, Any]:
        payload = self.server.button(self.user, custom_id, channel_id=channel)
        payload["message"] |= {
            "id": message.id,
            "content": message.content,
            "flags": 64 if message.ephemeral else 0,
            "components": message.components,
        }
        await self.server.dispatch("INTERACTION_CREATE", payload)
        return payload

    @property
    def modal(self) -> Modal | None:
        """The modal on this person's screen, if any."""
        return self.server.open_modals.get(self.user_id)

    async def wait_modal(self, *, within: float = 10.0) -> Modal:
        await self.server.wait_for(lambda: self.modal is not None, limit=within)
        modal = self.modal
        assert modal is not None
        return modal

    async def submit_modal(self, value: str) -> dict[str, Any]:
        """Type ``value`` into the open modal's text field and press Submit."""
        modal = self.modal
        assert modal is not None, "no modal is open"
        del self.server.open_modals[self.user_id]
        field_id = str(modal.inputs[0]["custom_id"])
        channel = None if modal.channel_id == self.dm else modal.channel_id
        payload = self.server.modal_submit(
            self.user, modal.custom_id, {field_id: value}, channel_id=channel
        )
        await self.server.dispatch("INTERACTION_CREATE", payload)
        return payload

    def close_modal(self) -> None:
        """Press Cancel (or Esc): Discord tells the bot nothing."""
        self.server.open_modals.pop(self.user_id, None)

    async def send_dm(self, text: str) -> str:
        """Write ``text`` in the DM with the bot; returns the message id."""
        return await self._message(text, None)

    async def say(self, text: str, *, channel: str = SERVER_CHANNEL) -> str:
        """Write ``text`` in a server channel; returns the message id."""
        return await self._message(text, channel)

    async def _message(self, text: str, channel: str | None) -> str:
        payload = self.server.message(self.user, text, channel_id=channel)
        await self.server.dispatch("MESSAGE_CREATE", payload)
        self.sent.append(str(payload["id"]))
        return str(payload["id"])

    # -- reading --------------------------------------------------------------------------

    def visible(self, channel: str | None = None) -> list[BotMessage]:
        """The bot's messages this person sees in the channel (default: the DM), oldest first."""
        return self.server.visible(self.user_id, channel or self.dm)

    def texts(self, channel: str | None = None) -> list[str]:
        return [m.content for m in self.visible(channel)]

    def transcript(self, channel: str | None = None) -> str:
        return "\n---\n".join(
            f"[{'ephemeral' if m.ephemeral else 'public'}] {m.content}"
            for m in self.visible(channel)
        )

    async def wait_text(
        self, pattern: str, *, channel: str | None = None, within: float = 15.0
    ) -> BotMessage:
        """Wait for a bot message this person sees matching ``pattern``; returns it."""
        rx = re.compile(pattern, re.S)

        def hit() -> BotMessage | None:
            return next((m for m in reversed(self.visible(channel)) if rx.search(m.content)), None)

        try:
            await self.server.wait_for(lambda: hit() is not None, limit=within)
        except TimeoutError:
            raise AssertionError(
                f"no message matching {pattern!r}; {self.name} sees:\n{self.transcript(channel)}"
                f"\nrefused calls: {self.server.refused()}"
            ) from None
        found = hit()
        assert found is not None
        return found


def another_person(fake: FakeDiscord, name: str) -> DiscordPerson:
    return DiscordPerson(fake, str(next(_person_ids)), name)
