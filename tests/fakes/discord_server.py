"""A loopback fake of Discord (REST API + gateway websocket) that records every call.

The real discord.py client is pointed at it (``Route.BASE`` and ``DEFAULT_GATEWAY``); tests push
gateway events with ``dispatch`` and the ``slash``/``button``/``modal_submit``/``message``
payload builders, then read ``calls`` (every REST request, in order) like a transcript.

``FakeDiscord(strict=True)`` also enforces Discord's rules where bugs live: one interaction
callback within 3 s, follow-ups only after it, a modal only as the answer to a command or a
component, Discord's length limits (modal title/label 45, placeholder 100, message 2000, button
label 80), and a bot cannot delete a person's message in a DM (403, code 50003). Either way it
keeps the bot's messages (``messages``: channel, text after edits, ephemeral flag and who sees
it, buttons) and the modals it opened (``modals``), so tests read what people see.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes import FAKE_SHUTDOWN

APP_ID = "900000000000000001"
BOT_ID = "900000000000000002"
GUILD_ID = "900000000000000003"
GUILD_CHANNEL_ID = "900000000000000004"
OWNER_ID = "900000000000000005"
TIMESTAMP = "2026-01-01T00:00:00.000000+00:00"


@dataclass
class Call:
    """One REST request the client made."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str] = field(repr=False, default_factory=dict)
    result: Any = None
    status: int = 200
    at: float = field(default_factory=time.monotonic)  # when it arrived


@dataclass
class _Bucket:
    """One of Discord's rate-limit buckets: ``limit`` requests per fixed window."""

    name: str
    limit: int
    seconds: float
    reset_at: float = 0.0
    used: int = 0

    def take(self, now: float) -> bool:
        if now >= self.reset_at:
            self.reset_at, self.used = now + self.seconds, 0
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def headers(self, now: float) -> dict[str, str]:
        after = max(self.reset_at - now, 0.0)
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(self.limit - self.used, 0)),
            "X-RateLimit-Reset": f"{time.time() + after:.3f}",
            "X-RateLimit-Reset-After": f"{after:.3f}",
            "X-RateLimit-Bucket": self.name,
        }


# Message routes and their bucket kind: creating and editing are separate buckets per channel
# (or per interaction webhook).
_BUCKETED: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(r"^/channels/(\d+)/messages$"), "post"),
    ("PATCH", re.compile(r"^/channels/(\d+)/messages/\d+$"), "edit"),
    ("POST", re.compile(r"^/webhooks/\d+/([^/]+)$"), "post"),
    ("PATCH", re.compile(r"^/webhooks/\d+/([^/]+)/messages/[^/]+$"), "edit"),
)


@dataclass
class BotMessage:
    """A message the bot shows, as Discord keeps it (edits applied)."""

    id: str
    channel_id: str
    content: str
    ephemeral: bool = False
    for_user: str | None = None  # who sees an ephemeral message
    components: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False
    edits: int = 0
    interaction_token: str | None = field(default=None, repr=False)

    def visible_to(self, user_id: str) -> bool:
        return not self.deleted and (not self.ephemeral or self.for_user == user_id)

    def buttons(self) -> list[dict[str, Any]]:
        return [
            c for row in self.components for c in row.get("components", []) if c.get("type") == 2
        ]


@dataclass
class Modal:
    """A modal the bot opened for a person (an answer of callback type 9)."""

    user_id: str
    channel_id: str
    custom_id: str = field(repr=False)
    title: str
    inputs: list[dict[str, Any]]


@dataclass
class _Pending:
    """An interaction dispatched to the client, and how it was answered."""

    payload: dict[str, Any] = field(repr=False)
    at: float
    callback: int | None = None
    original: str | None = None  # message id of the answer


def _bad_length(where: list[str], limit: int) -> dict[str, Any]:
    """Discord's 400 body for a value over its length limit."""
    errors: dict[str, Any] = {
        "_errors": [
            {"code": "BASE_TYPE_BAD_LENGTH", "message": f"Must be {limit} or fewer in length."}
        ]
    }
    for key in reversed(where):
        errors = {key: errors}
    return {"code": 50035, "message": "Invalid Form Body", "errors": errors}


def _user_id(payload: dict[str, Any]) -> str:
    user = (payload.get("member") or {}).get("user") or payload.get("user") or {}
    return str(user.get("id", ""))


def _user(uid: str, name: str, *, bot: bool = False) -> dict[str, Any]:
    return {
        "id": uid,
        "username": name,
        "global_name": name.title(),
        "discriminator": "0",
        "avatar": None,
        "bot": bot,
        "flags": 0,
        "public_flags": 0,
    }


class FakeDiscord:
    """The fake server. ``async with FakeDiscord() as fake:`` starts it on a free port."""

    def __init__(self, *, strict: bool = False, interaction_window: float = 3.0) -> None:
        self.strict = strict
        self.token = ""  # the bot token a test hands the program (the fake does not check it)
        self.interaction_window = interaction_window
        self.interactions: dict[str, _Pending] = {}  # by interaction token
        self.messages: dict[str, BotMessage] = {}
        self.person_messages: dict[str, str] = {}  # message id -> channel id
        self.modals: list[Modal] = []  # every modal opened, in order
        self.open_modals: dict[str, Modal] = {}  # by user id: the one on screen
        self.calls: list[Call] = []
        self.gateway_frames: list[dict[str, Any]] = []
        self.commands: dict[str, list[dict[str, Any]]] = {}  # "global" or guild id -> list
        self.forbidden_deletes: set[str] = set()
        self.failures: list[tuple[str, re.Pattern[str], int, dict[str, Any]]] = []
        # Requests held ``seconds`` and then answered ``status`` (an answer that never came
        # in time), and Discord's rate limits (``enforce_rate_limits``).
        self.stalls: list[tuple[str, re.Pattern[str], float, int]] = []
        self.rate_limits: tuple[int, float, int] | None = None
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._global = _Bucket("global", 50, 1.0)
        self.identified = asyncio.Event()
        self.resumed = asyncio.Event()
        self._ids = itertools.count(1_000_000_000_000_000_001)
        self._seq = 0
        self._ws: web.WebSocketResponse | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.dm_channels: dict[str, str] = {}
        self.send_ready = True  # False: a gateway that never says READY
        self.gateway_refused = False  # an outage (``drop_gateway``): new connections get 503
        # Sharding: each IDENTIFY's ``[shard_id, shard_count]``, and the connection of each
        # shard. Events go where Discord sends them: a guild's to shard
        # ``(guild_id >> 22) % shard_count``, DMs to shard 0.
        self.identifies: list[tuple[int, int]] = []
        self.shards: dict[int, web.WebSocketResponse] = {}
        self.shard_count = 1
        # Attachments people "uploaded" (``add_attachment``), served like the CDN (no token),
        # and the ids downloaded.
        self.attachment_files: dict[str, bytes] = {}
        self.downloads: list[str] = []

    def add_attachment(
        self, data: bytes, filename: str, content_type: str, **extra: Any
    ) -> dict[str, Any]:
        """An attachment object for a MESSAGE_CREATE whose ``url`` serves ``data``."""
        aid = str(next(self._ids))
        self.attachment_files[aid] = data
        url = f"http://127.0.0.1:{self.port}/attachments/{aid}/{filename}"
        return {
            "id": aid,
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
            **extra,
        }

    async def _attachment(self, request: web.Request) -> web.Response:
        aid = request.match_info["id"]
        if aid not in self.attachment_files:
            return web.Response(status=404)
        self.downloads.append(aid)
        return web.Response(body=self.attachment_files[aid])

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_get("/gw", self._gateway_gate)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        app.router.add_get("/attachments/{id}/{name}", self._attachment)
        self._runner = web.AppRunner(app, shutdown_timeout=FAKE_SHUTDOWN)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gw"

    def next_id(self) -> str:
        return str(next(self._ids))

    # -- test controls ---------------------------------------------------------------------

    def fail_next(self, method: str, path_regex: str, status: int, body: dict[str, Any]) -> None:
        """Answer the next matching request with ``status``/``body`` instead of succeeding."""
        self.failures.append((method, re.compile(path_regex), status, body))

    def stall(self, method: str, path_regex: str, seconds: float, status: int = 504) -> None:
        """Hold the next matching request ``seconds``, then answer ``status`` (not applied)."""
        self.stalls.append((method, re.compile(path_regex), seconds, status))

    def enforce_rate_limits(
        self, per_channel: int = 5, seconds: float = 5.0, global_per_second: int = 50
    ) -> None:
        """Refuse, as Discord does, what goes over its limits: message creates and edits are
        separate buckets of ``per_channel`` per ``seconds`` per channel (or interaction
        webhook), every request counts against ``global_per_second``. Answers carry the
        bucket headers; a refusal is a 429 with ``retry_after``."""
        self.rate_limits = (per_channel, seconds, global_per_second)
        self._global = _Bucket("global", global_per_second, 1.0)

    def rate_limited(self) -> list[Call]:
        """Every request answered 429."""
        return [c for c in self.calls if c.status == 429]

    def message_calls(self, channel_id: str) -> list[Call]:
        """The accepted message creates and edits in a channel, in order."""
        prefix = f"/channels/{channel_id}/messages"
        return [
            c
            for c in self.calls
            if c.status < 300 and c.method in ("POST", "PATCH") and c.path.startswith(prefix)
        ]

    def most_in_window(self, channel_id: str, method: str, seconds: float) -> int:
        """The most accepted ``method`` message calls in a channel in any ``seconds``."""
        times = [c.at for c in self.message_calls(channel_id) if c.method == method]
        most, lo = 0, 0
        for hi, t in enumerate(times):
            while times[lo] <= t - seconds:
                lo += 1
            most = max(most, hi - lo + 1)
        return most

    def _limit(self, method: str, path: str) -> web.Response | None:
        """Take from the request's buckets; the 429 Discord would answer when one is empty."""
        if self.rate_limits is None:
            return None
        per_channel, seconds, _ = self.rate_limits
        now = time.monotonic()
        bucket: _Bucket | None = None
        for m, rx, kind in _BUCKETED:
            found = rx.match(path) if m == method else None
            if found:
                key = (kind, found.group(1))
                bucket = self._buckets.get(key)
                if bucket is None:
                    bucket = _Bucket(f"{kind}-bucket", per_channel, seconds)
                    self._buckets[key] = bucket
                break
        exempt = path.startswith("/interactions/")  # callbacks are not globally limited
        if not exempt and not self._global.take(now):
            after = max(self._global.reset_at - now, 0.001)
            return self._too_many(after, {"X-RateLimit-Global": "true"}, scope="global")
        if bucket is None:
            return None
        if not bucket.take(now):
            after = max(bucket.reset_at - now, 0.001)
            return self._too_many(after, bucket.headers(now), scope="user")
        self._bucket_headers = bucket.headers(now)
        return None

    def _too_many(self, after: float, headers: dict[str, str], *, scope: str) -> web.Response:
        body = {"message": "You are being rate limited.", "retry_after": round(after, 3)}
        body["global"] = scope == "global"
        return web.Response(
            status=429,
            body=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "Retry-After": f"{after:.3f}",
                "X-RateLimit-Scope": scope,
                "Via": "1.1 google",  # discord.py takes a 429 without it for a Cloudflare ban
                **headers,
            },
        )

    def find(self, method: str, pattern: str) -> list[Call]:
        """Every recorded call with that method whose path matches ``pattern`` (a regex)."""
        rx = re.compile(pattern)
        return [c for c in self.calls if c.method == method and rx.search(c.path)]

    async def wait_for(self, predicate: Callable[[], bool], *, limit: float = 5.0) -> None:
        """Wait until the recorded calls satisfy ``predicate`` (polling; fails after ``limit``)."""
        async with asyncio.timeout(limit):
            while not predicate():  # noqa: ASYNC110 - calls are recorded by another task
                await asyncio.sleep(0.01)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send one gateway DISPATCH event to the connected client."""
        ws = self._ws_for(data)
        assert ws is not None, "no client connected"
        if event == "INTERACTION_CREATE":
            self.interactions[data["token"]] = _Pending(data, time.monotonic())
        elif event == "MESSAGE_CREATE" and not data.get("author", {}).get("bot"):
            self.person_messages[str(data["id"])] = str(data["channel_id"])
        self._seq += 1
        await self._send({"op": 0, "t": event, "s": self._seq, "d": data}, ws)

    def shard_of(self, guild_id: str | None) -> int:
        return (int(guild_id) >> 22) % self.shard_count if guild_id else 0

    def _ws_for(self, data: dict[str, Any]) -> web.WebSocketResponse | None:
        if self.shard_count <= 1:
            return self._ws
        guild = data.get("guild_id")
        return self.shards.get(self.shard_of(str(guild) if guild else None))

    def visible(self, user_id: str, channel_id: str) -> list[BotMessage]:
        """The bot's messages in a channel as this person sees them, oldest first."""
        return [
            m
            for m in self.messages.values()
            if m.channel_id == channel_id and m.visible_to(user_id)
        ]

    def dm_channel(self, user_id: str) -> str:
        return self.dm_channels.setdefault(user_id, self.next_id())

    def refused(self) -> list[Call]:
        """Every REST call the fake refused (status 400 or more)."""
        return [c for c in self.calls if c.status >= 400]

    async def request_reconnect(self) -> None:
        """Ask the client to reconnect (op 7); it resumes against ``resume_gateway_url``."""
        assert self._ws is not None
        self.resumed.clear()
        await self._send({"op": 7, "d": None})

    # -- payload builders ------------------------------------------------------------------

    def user(self, uid: str, name: str) -> dict[str, Any]:
        return _user(uid, name)

    def _where(self, user: dict[str, Any], channel_id: str | None) -> dict[str, Any]:
        if channel_id is None:  # a DM with the bot
            dm = self.dm_channels.setdefault(user["id"], self.next_id())
            return {"channel_id": dm, "channel": {"id": dm, "type": 1}, "user": user, "context": 1}
        return {
            "channel_id": channel_id,
            "guild_id": GUILD_ID,
            "channel": {"id": channel_id, "type": 0, "guild_id": GUILD_ID, "name": "general"},
            "member": self._member(user),
            "context": 0,
        }

    def _member(self, user: dict[str, Any]) -> dict[str, Any]:
        return {
            "user": user,
            "roles": [],
            "joined_at": TIMESTAMP,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "permissions": "2147483647",
        }

    def interaction(
        self, kind: int, user: dict[str, Any], data: dict[str, Any], *, channel_id: str | None
    ) -> dict[str, Any]:
        iid = self.next_id()
        return {
            "id": iid,
            "application_id": APP_ID,
            "type": kind,
            "token": f"itok-{iid}",
            "version": 1,
            "attachment_size_limit": 8_000_000,
            "app_permissions": "2147483647",
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": GUILD_ID},
            "data": data,
            **self._where(user, channel_id),
        }

    def slash(
        self,
        user: dict[str, Any],
        name: str,
        options: list[dict[str, Any]] | None = None,
        *,
        channel_id: str | None = None,
    ) -> dict[str, Any]:
        data = {"id": self.next_id(), "name": name, "type": 1, "options": options or []}
        return self.interaction(2, user, data, channel_id=channel_id)

    def autocomplete(
        self, user: dict[str, Any], name: str, options: list[dict[str, Any]]
    ) -> dict[str, Any]:
        data = {"id": self.next_id(), "name": name, "type": 1, "options": options}
        return self.interaction(4, user, data, channel_id=None)

    def button(
        self, user: dict[str, Any], custom_id: str, *, channel_id: str | None = None
    ) -> dict[str, Any]:
        where = self._where(user, channel_id)
        message = {
            "id": self.next_id(),
            "channel_id": where["channel_id"],
            "author": _user(BOT_ID, "byokbot", bot=True),
            "content": "pick one",
            "timestamp": TIMESTAMP,
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "components": [],
            "flags": 0,
        }
        data = {"custom_id": custom_id, "component_type": 2}
        payload = self.interaction(3, user, data, channel_id=channel_id)
        payload["message"] = message
        return payload

    def modal_submit(
        self,
        user: dict[str, Any],
        custom_id: str,
        values: dict[str, str],
        *,
        channel_id: str | None,
    ) -> dict[str, Any]:
        rows = [
            {"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]}
            for k, v in values.items()
        ]
        data = {"custom_id": custom_id, "components": rows}
        return self.interaction(5, user, data, channel_id=channel_id)

    def message(
        self,
        user: dict[str, Any],
        content: str,
        *,
        channel_id: str | None = None,
        mentions: list[dict[str, Any]] | None = None,
        reply_to_bot: bool = False,
    ) -> dict[str, Any]:
        mid = self.next_id()
        payload: dict[str, Any] = {
            "id": mid,
            "author": user,
            "content": content,
            "timestamp": TIMESTAMP,
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": mentions or [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 19 if reply_to_bot else 0,
            "flags": 0,
        }
        if channel_id is None:
            payload["channel_id"] = self.dm_channels.setdefault(user["id"], self.next_id())
        else:
            payload["channel_id"] = channel_id
            payload["guild_id"] = GUILD_ID
            member = self._member(user)
            del member["user"]
            payload["member"] = member
        if reply_to_bot:
            ref_id = self.next_id()
            payload["message_reference"] = {"message_id": ref_id, "channel_id": channel_id}
            payload["referenced_message"] = {
                **self._bot_message(ref_id, payload["channel_id"], "earlier answer"),
            }
        return payload

    # -- REST ------------------------------------------------------------------------------

    def _bot_message(self, mid: str, channel_id: str, content: str) -> dict[str, Any]:
        return {
            "id": mid,
            "channel_id": channel_id,
            "author": _user(BOT_ID, "byokbot", bot=True),
            "content": content,
            "timestamp": TIMESTAMP,
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
        }

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        # discord.py's login breaks on "application/json; charset=utf-8": set the type exactly.
        return web.Response(
            status=status,
            body=json.dumps(data).encode(),
            headers={"Content-Type": "application/json"},
        )

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        body: Any = None
        if request.content_type == "application/json":
            body = await request.json()
        elif request.content_type.startswith("multipart/"):
            form = await request.post()
            raw = form.get("payload_json")
            body = json.loads(str(raw)) if raw is not None else {}
            body["_files"] = sorted(k for k in form if k != "payload_json")
        call = Call(request.method, path, dict(request.query), body, dict(request.headers))
        self.calls.append(call)
        for i, (method, rx, status, fbody) in enumerate(self.failures):
            if method == request.method and rx.search(path):
                del self.failures[i]
                headers = {"Content-Type": "application/json"}
                if status == 429:
                    # discord.py treats a 429 without "Via" as a Cloudflare ban, not a rate limit.
                    headers |= {
                        "X-RateLimit-Scope": "user",
                        "Retry-After": "0.05",
                        "Via": "1.1 google",
                    }
                call.status = status
                return web.Response(status=status, body=json.dumps(fbody).encode(), headers=headers)
        for i, (method, rx, seconds, status) in enumerate(self.stalls):
            if method == request.method and rx.search(path):
                del self.stalls[i]
                await asyncio.sleep(seconds)
                call.status = status
                return self._json({"message": "Gateway Timeout", "code": 0}, status)
        self._bucket_headers: dict[str, str] = {}
        response = self._limit(request.method, path)
        if response is None and self.strict:
            response = self._enforce(request.method, path, body)
        if response is None:
            response = self._route(request.method, path, body)
            response.headers.update(self._bucket_headers)
        call.status = response.status
        if response.content_type == "application/json" and isinstance(response.body, bytes):
            call.result = json.loads(response.body)
        if response.status < 300:
            self._keep(request.method, path, body, call.result)
        return response

    # -- Discord's rules (strict mode) -----------------------------------------------------

    def _enforce(self, method: str, path: str, body: Any) -> web.Response | None:
        """Discord's refusal for a request that breaks its rules; None when it is fine."""
        parts = path.strip("/").split("/")
        if parts[0] == "interactions" and method == "POST" and len(parts) >= 4:
            pending = self.interactions.get(parts[2])
            if pending is None or time.monotonic() - pending.at > self.interaction_window:
                return self._json({"code": 10062, "message": "Unknown interaction"}, 404)
            if pending.callback is not None:
                return self._json(
                    {"code": 40060, "message": "Interaction has already been acknowledged."}, 400
                )
            kind = body.get("type")
            if kind == 9 and pending.payload.get("type") not in (2, 3):
                return self._json(
                    {
                        "code": 50035,
                        "message": "Invalid Form Body",
                        "errors": {
                            "type": {
                                "_errors": [
                                    {
                                        "code": "INTERACTION_CALLBACK_TYPE_INVALID",
                                        "message": "A modal can only answer a command or a "
                                        "component interaction.",
                                    }
                                ]
                            }
                        },
                    },
                    400,
                )
            data = body.get("data") or {}
            if kind == 9:
                too_long = self._modal_too_long(data)
                if too_long is not None:
                    return too_long
            elif kind in (4, 7):
                too_long = self._message_too_long(data)
                if too_long is not None:
                    return too_long
            return None
        if parts[0] == "webhooks" and len(parts) >= 3:
            pending = self.interactions.get(parts[2])
            if pending is None or pending.callback is None:
                # Follow-ups exist only once the interaction was answered.
                return self._json({"code": 10015, "message": "Unknown Webhook"}, 404)
            if method in ("POST", "PATCH"):
                return self._message_too_long(body or {})
            return None
        if parts[0] == "channels" and len(parts) >= 3:
            if method in ("POST", "PATCH") and parts[-1] != "typing":
                return self._message_too_long(body or {})
            if method == "DELETE" and len(parts) == 4:
                cid, mid = parts[1], parts[3]
                if cid in self.dm_channels.values() and mid in self.person_messages:
                    return self._json(
                        {"code": 50003, "message": "Cannot execute action on a DM channel"}, 403
                    )
        return None

    def _modal_too_long(self, data: dict[str, Any]) -> web.Response | None:
        if len(str(data.get("title", ""))) > 45:
            return self._json(_bad_length(["data", "title"], 45), 400)
        for r, row in enumerate(data.get("components") or []):
            inner = row.get("components") or ([row["component"]] if "component" in row else [])
            for c, comp in enumerate(inner):
                where = ["data", "components", str(r), "components", str(c)]
                for key, limit in (("label", 45), ("placeholder", 100), ("custom_id", 100)):
                    if len(str(comp.get(key) or "")) > limit:
                        return self._json(_bad_length([*where, key], limit), 400)
        return None

    def _message_too_long(self, data: dict[str, Any]) -> web.Response | None:
        if len(str(data.get("content") or "")) > 2000:
            return self._json(_bad_length(["content"], 2000), 400)
        for r, row in enumerate(data.get("components") or []):
            for c, comp in enumerate(row.get("components") or []):
                if len(str(comp.get("label") or "")) > 80:
                    where = ["components", str(r), "components", str(c), "label"]
                    return self._json(_bad_length(where, 80), 400)
        return None

    # -- what people see -------------------------------------------------------------------

    def _keep(self, method: str, path: str, body: Any, result: Any) -> None:
        """Update the kept messages and modals after a request Discord accepted."""
        parts = path.strip("/").split("/")
        body = body or {}
        if parts[0] == "interactions" and method == "POST" and len(parts) >= 4:
            pending = self.interactions.get(parts[2])
            if pending is None:
                return
            kind = body.get("type")
            pending.callback = kind
            data = body.get("data") or {}
            payload = pending.payload
            channel = str(payload.get("channel_id"))
            user = _user_id(payload)
            if kind in (4, 5):
                mid = str(((result or {}).get("resource") or {}).get("message", {}).get("id"))
                pending.original = mid
                ephemeral = bool(int(data.get("flags") or 0) & 64)
                self.messages[mid] = BotMessage(
                    mid,
                    channel,
                    str(data.get("content") or ""),
                    ephemeral=ephemeral,
                    for_user=user if ephemeral else None,
                    components=list(data.get("components") or []),
                    interaction_token=parts[2],
                )
            elif kind == 7 and payload.get("message"):
                kept = self.messages.get(str(payload["message"]["id"]))
                if kept is not None:
                    self._edit(kept, data)
            elif kind == 9:
                modal = Modal(
                    user,
                    channel,
                    str(data.get("custom_id")),
                    str(data.get("title")),
                    [
                        comp
                        for row in data.get("components") or []
                        for comp in (row.get("components") or [row.get("component") or {}])
                    ],
                )
                self.modals.append(modal)
                self.open_modals[user] = modal
            return
        if parts[0] == "webhooks" and len(parts) >= 3:
            pending = self.interactions.get(parts[2])
            if pending is None:
                return
            channel = str(pending.payload.get("channel_id"))
            target = parts[-1] if len(parts) >= 5 else None
            if target == "@original":
                target = pending.original
            if method == "POST" and len(parts) == 3:
                flags = int(body.get("flags") or 0)
                ephemeral = bool(flags & 64)
                mid = str((result or {}).get("id"))
                self.messages[mid] = BotMessage(
                    mid,
                    channel,
                    str(body.get("content") or ""),
                    ephemeral=ephemeral,
                    for_user=_user_id(pending.payload) if ephemeral else None,
                    components=list(body.get("components") or []),
                    interaction_token=parts[2],
                )
            elif target is not None and target in self.messages:
                if method == "PATCH":
                    self._edit(self.messages[target], body)
                elif method == "DELETE":
                    self.messages[target].deleted = True
            return
        if parts[0] == "channels" and len(parts) >= 3 and parts[2] == "messages":
            cid = parts[1]
            if method == "POST" and len(parts) == 3:
                mid = str((result or {}).get("id"))
                self.messages[mid] = BotMessage(
                    mid,
                    cid,
                    str(body.get("content") or ""),
                    components=list(body.get("components") or []),
                )
            elif len(parts) == 4 and parts[3] in self.messages:
                if method == "PATCH":
                    self._edit(self.messages[parts[3]], body)
                elif method == "DELETE":
                    self.messages[parts[3]].deleted = True

    @staticmethod
    def _edit(message: BotMessage, body: dict[str, Any]) -> None:
        if "content" in body:
            message.content = str(body.get("content") or "")
        if "components" in body:
            message.components = list(body.get("components") or [])
        message.edits += 1

    def _route(self, method: str, path: str, body: Any) -> web.Response:
        parts = path.strip("/").split("/")
        if (method, path) == ("GET", "/users/@me"):
            return self._json(_user(BOT_ID, "byokbot", bot=True))
        if (method, path) == ("GET", "/oauth2/applications/@me"):
            return self._json(
                {
                    "id": APP_ID,
                    "name": "byokbot",
                    "description": "",
                    "icon": None,
                    "bot_public": True,
                    "bot_require_code_grant": False,
                    "owner": _user(OWNER_ID, "owner"),
                    "verify_key": "0" * 64,
                    "flags": 0,
                }
            )
        if parts[0] == "applications" and parts[-1] == "commands":
            scope = parts[3] if len(parts) == 5 else "global"
            if method == "GET":
                return self._json(self.commands.get(scope, []))
            stored = [
                {**cmd, "id": self.next_id(), "application_id": APP_ID, "version": "1"}
                for cmd in body
            ]
            self.commands[scope] = stored
            return self._json(stored)
        if parts[0] == "interactions" and method == "POST":
            kind = body["type"]
            interaction = {"id": parts[1], "type": 2}
            if kind in (4, 5):
                mid = self.next_id()
                flags = body.get("data", {}).get("flags", 0)
                interaction |= {
                    "response_message_id": mid,
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": bool(flags & 64),
                }
                content = body.get("data", {}).get("content", "")
                pending = self.interactions.get(parts[2]) if len(parts) >= 3 else None
                channel = str(pending.payload.get("channel_id")) if pending else "0"
                message = self._bot_message(mid, channel, content) | {"flags": flags}
                return self._json(
                    {"interaction": interaction, "resource": {"type": kind, "message": message}}
                )
            return self._json({"interaction": interaction})
        if parts[0] == "webhooks":
            if method == "DELETE":
                return web.Response(status=204)
            mid = self.next_id() if method == "POST" else parts[-1]
            pending = self.interactions.get(parts[2]) if len(parts) >= 3 else None
            if mid == "@original":
                mid = (pending.original if pending else None) or "1"
            content = (body or {}).get("content", "")
            channel = str(pending.payload.get("channel_id")) if pending else "0"
            flags = int((body or {}).get("flags") or 0)
            return self._json(self._bot_message(mid, channel, content) | {"flags": flags})
        if parts[0] == "users" and path == "/users/@me/channels":
            uid = str(body["recipient_id"])
            cid = self.dm_channels.setdefault(uid, self.next_id())
            return self._json({"id": cid, "type": 1, "recipients": [_user(uid, "someone")]})
        if parts[0] == "channels":
            cid = parts[1]
            if parts[-1] == "typing":
                return web.Response(status=204)
            if method == "POST":
                return self._json(self._bot_message(self.next_id(), cid, body.get("content", "")))
            if method == "PATCH":
                return self._json(self._bot_message(parts[3], cid, body.get("content", "")))
            if method == "DELETE":
                if parts[3] in self.forbidden_deletes:
                    return self._json({"code": 50013, "message": "Missing Permissions"}, 403)
                return web.Response(status=204)
        return self._json({"code": 0, "message": f"fake: no route for {method} {path}"}, 404)

    # -- gateway ---------------------------------------------------------------------------

    async def _send(self, frame: dict[str, Any], ws: web.WebSocketResponse | None = None) -> None:
        ws = ws or self._ws
        assert ws is not None
        await ws.send_str(json.dumps(frame))

    async def _gateway_gate(self, request: web.Request) -> web.StreamResponse:
        if self.gateway_refused:
            return web.Response(status=503, text="service unavailable")
        return await self._gateway(request)

    async def drop_gateway(self, *, refuse: bool = True) -> None:
        """Close the gateway with 4000 (unknown error: clients resume) as an outage would."""
        self.gateway_refused = refuse
        self.resumed.clear()
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close(code=4000, message=b"outage")

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        await self._send({"op": 10, "d": {"heartbeat_interval": 45000}}, ws)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            self.gateway_frames.append(frame)
            op = frame["op"]
            if op == 1:
                await self._send({"op": 11, "d": None}, ws)
            elif op == 2:
                shard_id, count = (frame["d"].get("shard") or [0, 1])[:2]
                self.identifies.append((int(shard_id), int(count)))
                self.shard_count = max(self.shard_count, int(count))
                self.shards[int(shard_id)] = ws
                if self.send_ready:
                    await self._ready(ws, int(shard_id))
            elif op == 6:
                self._seq = max(self._seq, frame["d"].get("seq") or 0)
                self._seq += 1
                await self._send({"op": 0, "t": "RESUMED", "s": self._seq, "d": {}}, ws)
                self.resumed.set()
        return ws

    async def _ready(self, ws: web.WebSocketResponse, shard_id: int = 0) -> None:
        self._seq += 1
        ours = self.shard_of(GUILD_ID) == shard_id
        ready = {
            "v": 10,
            "user": _user(BOT_ID, "byokbot", bot=True),
            "session_id": f"fake-session-{shard_id}",
            "resume_gateway_url": self.gateway_url,
            "guilds": [{"id": GUILD_ID, "unavailable": True}] if ours else [],
            "application": {"id": APP_ID, "flags": 0},
        }
        await self._send({"op": 0, "t": "READY", "s": self._seq, "d": ready}, ws)
        if not ours:
            self.identified.set()
            return
        self._seq += 1
        guild = {
            "id": GUILD_ID,
            "name": "Test guild",
            "unavailable": False,
            "owner_id": OWNER_ID,
            "member_count": 2,
            "large": False,
            "features": [],
            "roles": [
                {
                    "id": GUILD_ID,
                    "name": "@everyone",
                    "permissions": "2147483647",
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
            ],
            "emojis": [],
            "stickers": [],
            "channels": [
                {
                    "id": GUILD_CHANNEL_ID,
                    "type": 0,
                    "name": "general",
                    "position": 0,
                    "permission_overwrites": [],
                },
            ],
            "threads": [],
            "members": [{**self._member(_user(BOT_ID, "byokbot", bot=True))}],
            "voice_states": [],
            "presences": [],
            "joined_at": TIMESTAMP,
        }
        await self._send({"op": 0, "t": "GUILD_CREATE", "s": self._seq, "d": guild}, ws)
        self.identified.set()
