"""Scenario harness: people chatting with the real router over recording messengers."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bot.app import App
from core.chat import ChatRef, Event, EventKind, Outcome, Platform, UserRef
from core.config import Config
from core.ports import Agents, Clock, ManualClock
from core.secret import Secret
from tests.conftest import make_config
from tests.fakes.messenger import FakeMessenger, Sent

_ids = itertools.count(1000)


@dataclass
class World:
    """One byokbot (storage, vault, router) and a recording messenger per platform."""

    config: Config
    env: Mapping[str, str]
    clock: Clock
    agents: Agents | None = None
    runtime: bool = False
    app: App = field(init=False)
    messengers: dict[Platform, FakeMessenger] = field(init=False)

    @classmethod
    async def create(
        cls,
        url: str,
        tmp_path: Path,
        env: Mapping[str, str],
        *,
        agents: Agents | None = None,
        clock: Clock | None = None,
        runtime: bool = False,
        config: Config | None = None,
        **core: object,
    ) -> World:
        """A world on ``url``; ``runtime=True`` runs real agent processes (the supervisor)."""
        world = cls(
            config or make_config(url, tmp_path, **core),
            env,
            clock or ManualClock(),
            agents,
            runtime,
        )
        await world._open()
        return world

    async def _open(self) -> None:
        self.app = App(
            self.config,
            env=self.env,
            clock=self.clock,
            agents=self.agents,
            platforms=False,
            agent_runtime=self.runtime,
        )
        await self.app.open()
        if self.app.supervisor is not None:
            await self.app.supervisor.warm()
        self.messengers = {p: FakeMessenger(p) for p in Platform}
        self.app.services.messengers.update(self.messengers)  # type: ignore[attr-defined]

    async def restart(self) -> None:
        """Stop everything in memory and start again on the same database and master key."""
        await self.app.stop()
        await self._open()

    async def close(self) -> None:
        await self.app.stop()

    def person(
        self, platform: Platform = Platform.TELEGRAM, uid: str = "1", name: str = "Ada"
    ) -> Person:
        return Person(self, UserRef(platform, uid, name))


@dataclass
class Person:
    """Someone typing into a chat; every call dispatches one event through the router."""

    world: World
    user: UserRef

    @property
    def messenger(self) -> FakeMessenger:
        return self.world.messengers[self.user.platform]

    @property
    def dm(self) -> ChatRef:
        return self.messenger.dm(self.user)

    def group(self, chat_id: str = "group-1") -> ChatRef:
        return ChatRef(self.user.platform, chat_id, is_direct=False)

    async def _send(self, event: Event) -> Outcome:
        return await self.world.app.router.dispatch(event)

    async def command(self, text: str, *, chat: ChatRef | None = None) -> Outcome:
        head, *args = text.lstrip("/").split()
        return await self._send(
            Event(
                EventKind.COMMAND,
                self.user,
                chat or self.dm,
                text=text,
                command=head.lower(),
                args=tuple(args),
                message_id=str(next(_ids)),
                event_id=str(next(_ids)),
            )
        )

    async def say(
        self,
        text: str,
        *,
        chat: ChatRef | None = None,
        addressed: bool = True,
        reply_to: str | None = None,
    ) -> Outcome:
        return await self._send(
            Event(
                EventKind.MESSAGE,
                self.user,
                chat or self.dm,
                text=text,
                addressed=addressed,
                message_id=str(next(_ids)),
                event_id=str(next(_ids)),
                reply_to=reply_to,
            )
        )

    async def reply_to_prompt(self, text: str) -> Outcome:
        """Answer the newest key prompt by replying to it (Telegram's ForceReply)."""
        return await self.say(text, reply_to=self.messenger.prompts[-1].id)

    async def close_form(self, *, token: str | None = None) -> Outcome:
        """Close the newest key form without saving (Slack's view_closed)."""
        return await self._send(
            Event(
                EventKind.SECRET_CANCELLED,
                self.user,
                self.dm,
                intake_token=token if token is not None else self.last_secret_token(),
                event_id=str(next(_ids)),
            )
        )

    def buttons(self) -> list[tuple[str, str]]:
        """(label, payload) of the buttons on the newest message that has any."""
        for sent in reversed(self.sent):
            if sent.reply.buttons:
                return [(b.label, b.payload) for row in sent.reply.buttons for b in row]
        return []

    async def press(self, label: str, *, chat: ChatRef | None = None) -> Outcome:
        payload = dict(self.buttons())[label]
        return await self.press_payload(payload, chat=chat)

    async def press_payload(self, payload: str, *, chat: ChatRef | None = None) -> Outcome:
        return await self._send(
            Event(
                EventKind.BUTTON,
                self.user,
                chat or self.dm,
                payload=payload,
                event_id=str(next(_ids)),
            )
        )

    def last_secret_token(self) -> str:
        return self.messenger.secret_requests[-1][1].token

    async def submit_secret(
        self, value: str, *, token: str | None = None, via_modal: bool = False
    ) -> Outcome:
        """A secret from a private form (modal / hidden console input)."""
        return await self._send(
            Event(
                EventKind.SECRET,
                self.user,
                self.dm,
                secret=Secret(value),
                intake_token=token if token is not None else self.last_secret_token(),
                via_modal=via_modal,
                event_id=str(next(_ids)),
            )
        )

    @property
    def sent(self) -> list[Sent]:
        """What this person could see: their DM, and shared chats (groups, channels)."""
        mine = self.dm.id
        return [s for s in self.messenger.sent if s.chat.id == mine or not s.chat.is_direct]

    @property
    def last(self) -> str:
        return self.sent[-1].reply.text

    def transcript(self) -> list[str]:
        return [s.reply.text for s in self.sent]
