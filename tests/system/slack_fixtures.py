"""Slack for the system suite: the strict fake Slack serving a ``byokbot run`` subprocess.

``slack`` is a ``SlackSide``: the fake (Web API, Socket Mode websocket, response URLs), the
canary tokens it accepts, and, once the bot runs, the transport people use (Socket Mode
envelopes or signed HTTP requests). Import the fixtures into a test module:

    from tests.system.slack_fixtures import SlackSide, slack_fixture  # noqa: F401 - fixture

and ask for ``slack: SlackSide`` in the test.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.canaries import slack_app_token, slack_bot_token
from tests.fakes.slack_strict import StrictSlack
from tests.system.harness import BotProcess, CanaryScan, Workspace
from tests.system.slack_people import HttpTransport, SlackPerson, SocketTransport, Transport

# The variables the config names; the defaults of ``[slack]`` (and of slack_bolt itself).
BOT_TOKEN_ENV = "SLACK_BOT_TOKEN"
APP_TOKEN_ENV = "SLACK_APP_TOKEN"
SIGNING_SECRET_ENV = "SLACK_SIGNING_SECRET"

SOCKET_READY = r"Slack connected in socket mode"
HTTP_READY = r"Slack listening on (http://127\.0\.0\.1:\d+/\S+)"


@dataclass
class SlackSide:
    """The fake Slack and its tokens; ``start`` runs the bot against it in one mode."""

    fake: StrictSlack
    bot_token: str
    app_token: str
    signing_secret: str
    mode: str = "socket"
    transport: Transport | None = None
    people: list[SlackPerson] = field(default_factory=list)

    def tables(self, mode: str, **options: Any) -> dict[str, dict[str, Any]]:
        return {
            "slack": {
                "enabled": True,
                "mode": mode,
                "api_base_url": self.fake.base_url,
                "listen_host": "127.0.0.1",
                "listen_port": 0,  # any free port; the bot logs which
                "edit_interval": 0.2,
                **options,
            }
        }

    def configure(self, ws: Workspace, mode: str = "socket", **options: Any) -> None:
        """Point ``ws`` at the fake in ``mode`` ("socket" or "http"), tokens in the env."""
        self.mode = mode
        ws.configure(self.tables(mode, **options))
        ws.env[BOT_TOKEN_ENV] = self.bot_token
        ws.env[APP_TOKEN_ENV] = self.app_token
        ws.env[SIGNING_SECRET_ENV] = self.signing_secret

    async def start(self, ws: Workspace) -> BotProcess:
        """``byokbot run``; returns once Slack is connected (socket) or listening (http)."""
        bot = await ws.start("run")
        if self.mode == "socket":
            await bot.wait_output(SOCKET_READY, within=30)
            self.transport = SocketTransport(self.fake)
        else:
            found = await bot.wait_output(HTTP_READY, within=30)
            self.transport = HttpTransport(found.group(1), self.signing_secret)
        for person in self.people:
            person.transport = self.transport
        return bot

    def person(self, user_id: str = "UADA", name: str = "ada") -> SlackPerson:
        """Someone in the workspace; they use whatever transport the running bot has."""
        if self.transport is None:
            raise RuntimeError("start the bot before people act (SlackSide.start)")
        person = SlackPerson(self.fake, self.transport, user_id, name)
        self.people.append(person)
        return person

    def bot_output(self) -> Iterable[tuple[str, bytes]]:
        """Everything the bot sent Slack: Web API arguments, response URLs, acknowledgements."""
        yield "slack calls", self.fake.outgoing_text().encode()
        acks = [e.ack_payload for e in self.fake.envelopes]
        yield "slack acks", json.dumps(acks).encode()
        if isinstance(self.transport, HttpTransport):
            yield "slack http answers", "\n".join(self.transport.answers).encode()


@pytest.fixture(name="slack")
async def slack_fixture(canaries: CanaryScan) -> AsyncIterator[SlackSide]:
    """The strict fake Slack; at the end every envelope must have been acked within 3 s."""
    bot, app, signing = slack_bot_token(), slack_app_token(), secrets.token_hex(16)
    fake = StrictSlack(valid_tokens={bot, app}, bot_tokens={bot})
    await fake.start()
    canaries.add(bot, app, signing)
    side = SlackSide(fake, bot, app, signing)
    canaries.watch(side.bot_output)
    try:
        yield side
        await fake.settle_acks()
        late = fake.ack_violations()
        if isinstance(side.transport, HttpTransport):
            late += side.transport.late
        assert not late, "Slack would have given up on these:\n" + "\n".join(late)
    finally:
        await fake.stop()
