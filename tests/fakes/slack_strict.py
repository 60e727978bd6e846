"""``StrictSlack``: the loopback fake of Slack, holding the bot to the rules real Slack enforces.

``FakeSlack`` (``slack_server``) answers every call; this one keeps the state real Slack keeps,
because the bugs live in the differences (TESTING.md):

- a ``trigger_id`` is single-use and valid for ``trigger_ttl`` (3 s): ``views.open`` answers
  ``invalid_trigger_id`` / ``exchanged_trigger_id`` / ``expired_trigger_id`` otherwise;
- a bot token deletes or edits only the bot's own messages (``cant_delete_message``); only a
  user token with admin rights (``admin_tokens``) deletes a person's message;
- modals are state: ``views.open`` opens one for the person the trigger belongs to, a
  submission's acknowledgement decides what happens to it (``errors`` keeps it open with the
  errors, ``update`` replaces it, anything else closes it), and closing one sends
  ``view_closed`` only when the view asked for ``notify_on_close``;
- every Socket Mode envelope must be acknowledged within ``ack_deadline`` (3 s); each envelope
  is recorded with when it was acknowledged, and ``ack_violations`` lists the late or missing.

It also keeps every message people and the bot posted, per channel, so a person can read the
chat as Slack would show it (edits applied, deletions gone, ephemerals only to their owner).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.slack_server import TEAM, FakeSlack

APP_ID = "A0BYOK"


@dataclass
class Posted:
    """A message in a channel, as Slack stores it."""

    channel: str
    ts: str
    author: str
    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    thread_ts: str | None = None
    ephemeral_to: str | None = None
    deleted: bool = False
    edits: int = 0


@dataclass
class Trigger:
    user: str
    issued: float
    used: bool = False


@dataclass
class OpenView:
    """A modal the bot opened for ``user``; ``views`` holds every version it showed."""

    id: str
    user: str
    views: list[dict[str, Any]]
    open: bool = True
    errors: dict[str, str] = field(default_factory=dict)
    closed_by: str = ""  # "submit", "person", "bot"

    @property
    def view(self) -> dict[str, Any]:
        return self.views[-1]


@dataclass
class Envelope:
    """One Socket Mode envelope sent to the bot, and its acknowledgement."""

    id: str
    type: str
    payload: dict[str, Any]
    sent: float
    acked: float | None = None
    ack_payload: dict[str, Any] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def latency(self) -> float | None:
        return None if self.acked is None else self.acked - self.sent


@dataclass
class StrictSlack(FakeSlack):
    """``FakeSlack`` with Slack's rules; ``bot_tokens``/``admin_tokens`` say who may do what."""

    bot_tokens: set[str] = field(default_factory=set)
    admin_tokens: set[str] = field(default_factory=set)
    trigger_ttl: float = 3.0
    ack_deadline: float = 3.0
    posted: list[Posted] = field(default_factory=list)
    triggers: dict[str, Trigger] = field(default_factory=dict)
    modals: dict[str, OpenView] = field(default_factory=dict)
    homes: dict[str, dict[str, Any]] = field(default_factory=dict)
    envelopes: list[Envelope] = field(default_factory=list)
    refusals: list[tuple[str, str]] = field(default_factory=list)
    _person_ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # -------------------------------------------------------------- what people do

    def issue_trigger(self, user: str) -> str:
        """A fresh trigger id, as Slack puts in every command and interaction it sends."""
        trigger = f"{int(time.time())}.{uuid.uuid4().hex[:12]}"
        self.triggers[trigger] = Trigger(user=user, issued=time.monotonic())
        return trigger

    def person_posts(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None
    ) -> str:
        """A person's message lands in ``channel``; returns its ts."""
        ts = f"1700001000.{next(self._person_ts):06d}"
        self.posted.append(Posted(channel, ts, user, text, thread_ts=thread_ts))
        return ts

    def open_modals(self, user: str) -> list[OpenView]:
        return [v for v in self.modals.values() if v.user == user and v.open]

    def find(self, channel: str, ts: str) -> Posted | None:
        return next(
            (p for p in self.posted if p.channel == channel and p.ts == ts and not p.ephemeral_to),
            None,
        )

    def visible(self, channel: str, user: str) -> list[Posted]:
        """The channel as ``user`` sees it: deletions gone, others' ephemerals hidden."""
        return [
            p
            for p in self.posted
            if p.channel == channel and not p.deleted and p.ephemeral_to in (None, user)
        ]

    # -------------------------------------------------------------- Web API with rules

    def _refuse(self, method: str, error: str) -> dict[str, Any]:
        self.refusals.append((method, error))
        return {"ok": False, "error": error}

    def _result(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        token = self.calls[-1].token
        is_bot = token in self.bot_tokens
        channel = str(args.get("channel", ""))
        if method == "chat.postMessage":
            body = super()._result(method, args)
            self.posted.append(
                Posted(
                    channel,
                    str(body["ts"]),
                    self.bot_user,
                    str(args.get("text", "")),
                    list(args.get("blocks") or []),
                    thread_ts=args.get("thread_ts") or None,
                )
            )
            return body
        if method == "chat.postEphemeral":
            body = super()._result(method, args)
            self.posted.append(
                Posted(
                    channel,
                    str(body["message_ts"]),
                    self.bot_user,
                    str(args.get("text", "")),
                    list(args.get("blocks") or []),
                    thread_ts=args.get("thread_ts") or None,
                    ephemeral_to=str(args.get("user", "")),
                )
            )
            return body
        if method in ("chat.update", "chat.delete"):
            found = self.find(channel, str(args.get("ts", "")))
            if found is None or found.deleted:
                return self._refuse(method, "message_not_found")
            own = found.author == self.bot_user and is_bot
            if method == "chat.update":
                if not own:
                    return self._refuse(method, "cant_update_message")
                found.text = str(args.get("text", ""))
                found.blocks = list(args.get("blocks") or [])
                found.edits += 1
            else:
                if not own and token not in self.admin_tokens:
                    return self._refuse(method, "cant_delete_message")
                found.deleted = True
            return super()._result(method, args)
        if method == "views.open":
            trigger = self.triggers.get(str(args.get("trigger_id", "")))
            if trigger is None:
                return self._refuse(method, "invalid_trigger_id")
            if trigger.used:
                return self._refuse(method, "exchanged_trigger_id")
            if time.monotonic() - trigger.issued > self.trigger_ttl:
                return self._refuse(method, "expired_trigger_id")
            trigger.used = True
            body = super()._result(method, args)
            view = body["view"]
            self.modals[view["id"]] = OpenView(view["id"], trigger.user, [view])
            return body
        if method == "views.update":
            modal = self.modals.get(str(args.get("view_id", "")))
            if modal is None or not modal.open:
                return self._refuse(method, "not_found")
            body = super()._result(method, args)
            modal.views.append(body["view"])
            modal.errors = {}
            return body
        if method == "views.publish":
            body = super()._result(method, args)
            self.homes[str(args.get("user_id", ""))] = body["view"]
            return body
        return super()._result(method, args)

    async def _respond(self, request: web.Request) -> web.Response:
        """A post to a response URL named ``<user>.<channel>.<n>``: shown to that person."""
        name = request.match_info["name"]
        body = await request.json()
        self.responses.append((name, body))
        if self.respond_status != 200:
            return web.Response(text="expired_url", status=self.respond_status)
        user, _, rest = name.partition(".")
        channel = rest.rpartition(".")[0]
        public = body.get("response_type") == "in_channel"
        self.posted.append(
            Posted(
                channel,
                f"1700002000.{next(self._person_ts):06d}",
                self.bot_user,
                str(body.get("text", "")),
                list(body.get("blocks") or []),
                ephemeral_to=None if public else user,
            )
        )
        return web.Response(text="ok")

    # -------------------------------------------------------------- modal state

    def apply_submission_ack(self, view_id: str, ack: dict[str, Any]) -> None:
        """What Slack does with a ``view_submission`` acknowledgement."""
        modal = self.modals[view_id]
        action = ack.get("response_action")
        if action == "errors":
            modal.errors = dict(ack.get("errors") or {})
        elif action == "update":
            view = dict(ack.get("view") or {})
            view["id"] = view_id
            modal.views.append(view)
            modal.errors = {}
        else:
            modal.open = False
            modal.closed_by = "submit"

    def close_by_person(self, view_id: str) -> bool:
        """The person presses Cancel or closes the window; True when Slack tells the app (``notify_on_close``)."""
        modal = self.modals[view_id]
        modal.open = False
        modal.closed_by = "person"
        return bool(modal.view.get("notify_on_close"))

    # -------------------------------------------------------------- Socket Mode with acks

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        await ws.send_str(json.dumps({"type": "hello", "num_connections": 1}))
        self.connected.set()
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            envelope_id = str(data.get("envelope_id", ""))
            for envelope in self.envelopes:
                if envelope.id == envelope_id and envelope.acked is None:
                    envelope.acked = time.monotonic()
                    envelope.ack_payload = data.get("payload") or {}
                    envelope.done.set()
        return ws

    async def send_envelope(self, kind: str, payload: dict[str, Any]) -> Envelope:
        """Send one envelope without waiting for its acknowledgement."""
        await asyncio.wait_for(self.connected.wait(), 10)
        assert self._ws is not None
        envelope = Envelope(str(uuid.uuid4()), kind, payload, time.monotonic())
        self.envelopes.append(envelope)
        body = {
            "envelope_id": envelope.id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": 0,
            "retry_reason": "",
        }
        await self._ws.send_str(json.dumps(body))
        return envelope

    def ack_violations(self) -> list[str]:
        """Envelopes acknowledged after the deadline, or not at all and already past it."""
        now = time.monotonic()
        found: list[str] = []
        for e in self.envelopes:
            if e.latency is not None:
                if e.latency > self.ack_deadline:
                    found.append(f"{e.type} envelope acked late, after {e.latency:.2f}s")
            elif now - e.sent > self.ack_deadline:
                found.append(f"{e.type} envelope never acked ({now - e.sent:.2f}s)")
        return found

    async def settle_acks(self) -> None:
        """Wait until every envelope is acknowledged or past its deadline."""
        for e in self.envelopes:
            left = self.ack_deadline - (time.monotonic() - e.sent)
            if e.acked is None and left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(e.done.wait(), left + 0.1)


def view_closed_payload(modal: OpenView) -> dict[str, Any]:
    """What Slack sends when a person closes a modal that asked for ``notify_on_close``."""
    return {
        "type": "view_closed",
        "team": {"id": TEAM, "domain": "test"},
        "user": {"id": modal.user, "username": modal.user.lower(), "team_id": TEAM},
        "api_app_id": APP_ID,
        "token": "legacy-verification",
        "view": {**modal.view, "id": modal.id},
        "is_cleared": False,
    }
