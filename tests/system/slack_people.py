"""People on the strict fake Slack: slash commands, DMs, mentions, buttons and the key modal.

What a person sends reaches ``byokbot run`` the way Slack delivers it: as Socket Mode envelopes
(``SocketTransport``) or as signed HTTP requests to the bot's listener (``HttpTransport``). What
they read is what the fake Slack shows them: the DM with edits applied and deletions gone,
their own ephemerals and response-URL answers, their modals.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from tests.fakes.slack_server import (
    BOT_USER,
    block_action,
    event_callback,
    form_body,
    message,
    payload_body,
    signed_headers,
    slash,
    view_submission,
)
from tests.fakes.slack_strict import OpenView, Posted, StrictSlack, view_closed_payload

_names = itertools.count(1)


class Transport(Protocol):
    """How Slack hands one payload to the bot; returns the bot's acknowledgement payload."""

    async def deliver(self, kind: str, body: dict[str, Any]) -> dict[str, Any]: ...


@dataclass
class SocketTransport:
    """Socket Mode: an envelope over the fake's websocket, acknowledged by the bot."""

    slack: StrictSlack

    async def deliver(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        envelope = await self.slack.send_envelope(kind, body)
        try:
            await asyncio.wait_for(envelope.done.wait(), self.slack.ack_deadline + 2)
        except TimeoutError:
            raise AssertionError(f"the bot never acknowledged a {kind} envelope") from None
        return envelope.ack_payload or {}


@dataclass
class HttpTransport:
    """HTTP mode: a request signed with the signing secret, posted to the bot's listener.

    Slack gives up on a request after 3 s (and retries events); ``late`` records any answer
    slower than that.
    """

    url: str
    signing_secret: str
    deadline: float = 3.0
    late: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)

    @staticmethod
    def encode(kind: str, body: dict[str, Any]) -> tuple[str, str]:
        if kind == "slash_commands":
            return form_body(body), "application/x-www-form-urlencoded"
        if kind == "interactive":
            return payload_body(body), "application/x-www-form-urlencoded"
        return json.dumps(body), "application/json"

    async def post(self, raw: str, headers: dict[str, str]) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.post(self.url, data=raw.encode(), headers=headers) as response,
        ):
            return response.status, await response.text()

    async def deliver(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        raw, content_type = self.encode(kind, body)
        started = time.monotonic()
        status, text = await self.post(
            raw, signed_headers(self.signing_secret, raw, content_type=content_type)
        )
        took = time.monotonic() - started
        if took > self.deadline:
            self.late.append(f"{kind} answered after {took:.2f}s")
        if status != 200:
            raise AssertionError(f"the bot answered a signed {kind} request with {status}: {text}")
        self.answers.append(text)
        return json.loads(text) if text.strip() else {}


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def block_texts(blocks: Iterable[dict[str, Any]]) -> list[str]:
    """The text of every section/context block (what a person reads)."""
    out: list[str] = []
    for block in blocks:
        text = block.get("text")
        if isinstance(text, dict) and text.get("text"):
            out.append(str(text["text"]))
        for element in block.get("elements") or []:
            if block.get("type") == "context" and isinstance(element, dict):
                out.append(str(element.get("text", "")))
    return out


def rendered(post: Posted) -> str:
    texts = block_texts(post.blocks)
    return _unescape("\n".join(texts) if texts else post.text)


def view_text(view: dict[str, Any]) -> str:
    return "\n".join(block_texts(view.get("blocks") or []))


@dataclass
class SlackPerson:
    """Someone in a Slack workspace with the app installed; their DM with the app is ``D<id>``."""

    slack: StrictSlack
    transport: Transport
    user_id: str = "UADA"
    name: str = "ada"
    command_name: str = "/byok"

    @property
    def dm(self) -> str:
        return f"D{self.user_id}"

    # ----------------------------------------------------------------- acting

    async def command(self, text: str, *, channel: str | None = None) -> dict[str, Any]:
        """Type ``/byok <text>`` in ``channel`` (the DM with the app by default)."""
        where = channel or self.dm
        body = slash(
            text,
            user=self.user_id,
            channel=where,
            response_url=self.slack.response_url(f"{self.user_id}.{where}.{next(_names)}"),
            trigger=self.slack.issue_trigger(self.user_id),
            command=self.command_name,
        )
        return await self.transport.deliver("slash_commands", body)

    async def dm_app(self, text: str) -> str:
        """Write ``text`` in the DM with the app; returns the message's ts."""
        ts = self.slack.person_posts(self.dm, self.user_id, text)
        event = message(text, user=self.user_id, channel=self.dm, ts=ts, channel_type="im")
        await self.transport.deliver("events_api", event_callback(event))
        return ts

    async def mention(self, text: str, *, channel: str = "C0GENERAL") -> str:
        """``@byokbot <text>`` in a channel: Slack sends a ``message`` and an ``app_mention``."""
        raw = f"<@{BOT_USER}> {text}"
        ts = self.slack.person_posts(channel, self.user_id, raw)
        for kind, channel_type in (("message", "channel"), ("app_mention", "channel")):
            event = message(
                raw, user=self.user_id, channel=channel, ts=ts, channel_type=channel_type, kind=kind
            )
            await self.transport.deliver("events_api", event_callback(event))
        return ts

    def buttons(self, channel: str | None = None) -> list[tuple[Posted, dict[str, Any]]]:
        """Every button the person can see in ``channel`` (the DM by default), newest first."""
        found: list[tuple[Posted, dict[str, Any]]] = []
        for post in reversed(self.slack.visible(channel or self.dm, self.user_id)):
            for block in post.blocks:
                if block.get("type") == "actions":
                    found.extend((post, e) for e in block.get("elements") or [])
        return found

    async def press(self, label: str, *, channel: str | None = None) -> None:
        """Press the newest button whose label contains ``label``."""
        where = channel or self.dm
        for post, element in self.buttons(where):
            if label.lower() not in str(element["text"]["text"]).lower() or "url" in element:
                continue
            body = block_action(
                str(element.get("value", "")),
                action_id=str(element["action_id"]),
                user=self.user_id,
                channel=where,
                message_ts=post.ts,
                response_url=self.slack.response_url(f"{self.user_id}.{where}.{next(_names)}"),
                ephemeral=post.ephemeral_to is not None,
                trigger=self.slack.issue_trigger(self.user_id),
            )
            await self.transport.deliver("interactive", body)
            return
        labels = [str(e["text"]["text"]) for _, e in self.buttons(where)]
        raise AssertionError(f"no button {label!r}; the person sees {labels}")

    # ----------------------------------------------------------------- modals

    def modal(self) -> OpenView | None:
        """The person's open modal, if any (the newest)."""
        found = self.slack.open_modals(self.user_id)
        return found[-1] if found else None

    async def key_form(self, within: float = 15.0) -> OpenView:
        """Wait for the key modal; if the bot offered a button to open it instead, press it."""
        deadline = time.monotonic() + within
        pressed = 0
        while time.monotonic() < deadline:
            modal = self.modal()
            if modal is not None and _has_input(modal.view):
                return modal
            opener = [e for _, e in self.buttons() if e.get("action_id") == "byok_secret_open"]
            if len(opener) > pressed:
                pressed = len(opener)
                await self.press(str(opener[0]["text"]["text"]))
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"no key form opened; the DM shows:\n{self.texts()}\nrefusals: {self.slack.refusals}"
        )

    async def submit(self, value: str) -> dict[str, Any]:
        """Type ``value`` into the open modal and press its submit button."""
        modal = self.modal()
        assert modal is not None, "no modal is open"
        body = view_submission(modal.view, value, user=self.user_id)
        body["trigger_id"] = self.slack.issue_trigger(self.user_id)
        ack = await self.transport.deliver("interactive", body)
        self.slack.apply_submission_ack(modal.id, ack)
        return ack

    async def close_modal(self) -> bool:
        """Press Cancel on the open modal; True when Slack told the app (``notify_on_close``)."""
        modal = self.modal()
        assert modal is not None, "no modal is open"
        if not self.slack.close_by_person(modal.id):
            return False
        await self.transport.deliver("interactive", view_closed_payload(modal))
        return True

    # ----------------------------------------------------------------- reading

    def texts(self, channel: str | None = None) -> list[str]:
        """The bot's messages in ``channel`` (the DM by default) as this person sees them now."""
        return [
            rendered(p)
            for p in self.slack.visible(channel or self.dm, self.user_id)
            if p.author == self.slack.bot_user
        ]

    def seen(self) -> list[str]:
        """Every text the bot ever showed this person: messages, edits, modals, errors, home."""
        out: list[str] = []
        for call in self.slack.calls:
            args = call.args
            if args.get("channel") == self.dm or args.get("user") == self.user_id:
                out.append(str(args.get("text", "")))
                out.extend(block_texts(args.get("blocks") or []))
        for post in self.slack.posted:
            if post.ephemeral_to == self.user_id:
                out.append(rendered(post))
        for modal in self.slack.modals.values():
            if modal.user == self.user_id:
                out.extend(view_text(v) for v in modal.views)
                out.extend(modal.errors.values())
        home = self.slack.homes.get(self.user_id)
        if home is not None:
            out.append(view_text(home))
        return [_unescape(t) for t in out if t]

    async def wait_text(
        self, pattern: str, *, channel: str | None = None, within: float = 15.0
    ) -> str:
        """Wait for a bot message matching ``pattern`` (a regex) in the chat; returns it."""
        rx = re.compile(pattern, re.S)
        deadline = time.monotonic() + within
        while True:
            hit = next((t for t in reversed(self.texts(channel)) if rx.search(t)), None)
            if hit is not None:
                return hit
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no message matching {pattern!r}; the chat shows:\n"
                    + "\n---\n".join(self.texts(channel))
                )
            await asyncio.sleep(0.05)

    def count(self, pattern: str, *, channel: str | None = None) -> int:
        rx = re.compile(pattern, re.S)
        return sum(1 for t in self.texts(channel) if rx.search(t))


def _has_input(view: dict[str, Any]) -> bool:
    return any(b.get("type") == "input" for b in view.get("blocks") or [])
