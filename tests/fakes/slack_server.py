"""A loopback fake of Slack: Web API, Socket Mode websocket and response URLs, recording calls.

Also builders for the payloads Slack sends (slash commands, events, actions, modal
submissions), a request signer for HTTP mode, and a scripted handler that stands in for
the router in adapter scenario tests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import WSMsgType, web
from slack_sdk.signature import SignatureVerifier

from core.chat import Button, ButtonStyle, Event, EventKind, Outcome, Reply, SecretRequest
from core.ports import Messenger
from tests.fakes import FAKE_SHUTDOWN

BOT_USER = "UBOT"
TEAM = "T0TEST"
ANTHROPIC_KEY = re.compile(r"sk-ant-api03-[A-Za-z0-9_-]{93}AA")


def anthropic_key(fill: str = "x") -> str:
    """A realistic fake Anthropic key (the canary)."""
    return "sk-ant-api03-" + (fill * 93)[:93] + "AA"


@dataclass
class Call:
    """One Web API call as the fake received it."""

    method: str
    args: dict[str, Any]
    token: str
    status: int = 200
    at: float = field(default_factory=time.monotonic)  # when it arrived
    error: str = ""  # Slack's error code when it refused the call
    result: dict[str, Any] = field(default_factory=dict, repr=False)


# Slack's limits as ``enforce_rate_limits`` applies them: (method, scope, limit, seconds).
# chat.postMessage: about 1 a second per channel with short bursts (5 in any 5 s);
# chat.update the same per channel, and Tier 3 (50 a minute) in the workspace.
SLACK_LIMITS: tuple[tuple[str, str, int, float], ...] = (
    ("chat.postMessage", "channel", 5, 5.0),
    ("chat.update", "channel", 5, 5.0),
    ("chat.update", "workspace", 50, 60.0),
)


@dataclass
class FakeSlack:
    """Serves ``/api/<method>``, ``/link`` (Socket Mode) and ``/respond/<name>`` on 127.0.0.1."""

    bot_user: str = BOT_USER
    valid_tokens: set[str] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    responses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    port: int = 0
    respond_status: int = 200
    _failures: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = field(
        default_factory=dict
    )
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _views: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    _ws: web.WebSocketResponse | None = None
    _acks: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    # Shared files (``add_file``) served at their url_private with a valid token; each
    # download's file id is recorded.
    files: dict[str, bytes] = field(default_factory=dict)
    downloads: list[str] = field(default_factory=list)
    # An outage (``drop_link``): the Socket Mode link is closed and new ones refused.
    link_refused: bool = False
    # Rate limits (``enforce_rate_limits``): the arrival times of accepted calls per window.
    limits: tuple[tuple[str, str, int, float], ...] = ()
    _windows: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    # Calls held ``seconds`` and then answered ``status`` (``stall``), by method.
    _stalls: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/link", self._link_gate)
        app.router.add_get("/files-pri/{team_file}/{name}", self._file)
        app.router.add_post("/respond/{name}", self._respond)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=FAKE_SHUTDOWN)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def add_file(self, file_id: str, name: str, data: bytes) -> str:
        """Serve ``data`` as file ``file_id``; returns its ``url_private``."""
        self.files[file_id] = data
        return f"http://127.0.0.1:{self.port}/files-pri/T0001-{file_id}/{name}"

    async def _file(self, request: web.Request) -> web.Response:
        # Like Slack: url_private needs a token in the Authorization header.
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not token or (self.valid_tokens and token not in self.valid_tokens):
            return web.Response(status=403)
        file_id = request.match_info["team_file"].partition("-")[2]
        if file_id not in self.files:
            return web.Response(status=404)
        self.downloads.append(file_id)
        return web.Response(body=self.files[file_id])

    def response_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/respond/{name}"

    # -------------------------------------------------------------- scripting / reading

    def fail(
        self,
        method: str,
        error: str,
        *,
        status: int = 200,
        times: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with an error."""
        entry = (status, {"ok": False, "error": error}, headers or {})
        self._failures.setdefault(method, []).extend([entry] * times)

    def enforce_rate_limits(
        self, limits: tuple[tuple[str, str, int, float], ...] = SLACK_LIMITS
    ) -> None:
        """Refuse, as Slack does, calls over its limits: HTTP 429, ``Retry-After`` seconds."""
        self.limits = limits

    def stall(self, method: str, seconds: float, *, status: int = 504) -> None:
        """Hold the next ``method`` call ``seconds``, then answer ``status`` (not applied)."""
        self._stalls.setdefault(method, []).append((seconds, status))

    def rate_limited(self) -> list[Call]:
        """Every call answered 429."""
        return [c for c in self.calls if c.status == 429]

    def accepted(self, method: str, channel: str) -> list[Call]:
        """The calls of ``method`` in ``channel`` that Slack carried out, in order."""
        return [
            c
            for c in self.calls
            if c.method == method and c.status == 200 and not c.error and _channel(c) == channel
        ]

    def most_in_window(self, method: str, seconds: float, channel: str | None = None) -> int:
        """The most accepted ``method`` calls (in ``channel``, or anywhere) in any ``seconds``."""
        times = [
            c.at
            for c in self.calls
            if c.method == method
            and c.status == 200
            and not c.error
            and (channel is None or _channel(c) == channel)
        ]
        most, lo = 0, 0
        for hi, t in enumerate(times):
            while times[lo] <= t - seconds:
                lo += 1
            most = max(most, hi - lo + 1)
        return most

    def _limited(self, method: str, args: dict[str, Any]) -> web.Response | None:
        now = time.monotonic()
        hit: list[list[float]] = []
        for m, scope, limit, seconds in self.limits:
            if m != method:
                continue
            key = (m, scope, str(args.get("channel", "")) if scope == "channel" else "")
            arrivals = self._windows.setdefault(key, [])
            arrivals[:] = [t for t in arrivals if t > now - seconds]
            if len(arrivals) >= limit:
                retry = max(math.ceil(arrivals[0] + seconds - now), 1)
                return _json(
                    {"ok": False, "error": "ratelimited"},
                    status=429,
                    headers={"Retry-After": str(retry)},
                )
            hit.append(arrivals)
        for arrivals in hit:
            arrivals.append(now)
        return None

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [c.args for c in self.calls if c.method == method]

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]

    def outgoing_text(self) -> str:
        """Everything the bot sent anywhere, as one string (for leak checks)."""
        return json.dumps([c.args for c in self.calls] + [r for _, r in self.responses])

    # -------------------------------------------------------------- Web API

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        elif request.can_read_body:
            args.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        for key in ("view", "blocks"):
            if isinstance(args.get(key), str):
                args[key] = json.loads(args[key])
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") or str(args.pop("token", ""))
        call = Call(method, args, token)
        self.calls.append(call)
        queued = self._failures.get(method)
        if queued:
            status, body, headers = queued.pop(0)
            call.status, call.error = status, str(body.get("error", ""))
            return _json(body, status=status, headers=headers)
        stalls = self._stalls.get(method)
        if stalls:
            seconds, status = stalls.pop(0)
            await asyncio.sleep(seconds)
            call.status, call.error = status, "gateway_timeout"
            return _json({"ok": False, "error": "gateway_timeout"}, status=status)
        limited = self._limited(method, args)
        if limited is not None:
            call.status, call.error = 429, "ratelimited"
            return limited
        if self.valid_tokens and token not in self.valid_tokens:
            call.error = "invalid_auth"
            return _json({"ok": False, "error": "invalid_auth"})
        result = self._result(method, args)
        call.result = result
        if not result.get("ok", True):
            call.error = str(result.get("error", ""))
        return _json(result)

    def _result(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args.get("channel", ""))
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://test.slack.com/",
                "team": "Test",
                "user": "byokbot",
                "team_id": TEAM,
                "user_id": self.bot_user,
                "bot_id": "BBOT",
            }
        if method == "apps.connections.open":
            return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link?ticket=t1"}
        if method == "chat.postMessage":
            ts = f"1700000000.{next(self._ts):06d}"
            message = {"text": args.get("text", ""), "ts": ts, "user": self.bot_user}
            return {"ok": True, "channel": channel, "ts": ts, "message": message}
        if method == "chat.update":
            return {"ok": True, "channel": channel, "ts": args.get("ts"), "text": args.get("text")}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": f"1700000000.{next(self._ts):06d}"}
        if method == "chat.delete":
            return {"ok": True, "channel": channel, "ts": args.get("ts")}
        if method == "conversations.open":
            return {"ok": True, "channel": {"id": f"D{args.get('users', '')}"}}
        if method in ("views.open", "views.publish", "views.update"):
            view = dict(args.get("view") or {})
            view_id = args.get("view_id") or f"V{next(self._views):04d}"
            return {"ok": True, "view": {**view, "id": view_id}}
        return {"ok": True}

    async def _respond(self, request: web.Request) -> web.Response:
        self.responses.append((request.match_info["name"], await request.json()))
        if self.respond_status != 200:
            return web.Response(text="expired_url", status=self.respond_status)
        return web.Response(text="ok")

    # -------------------------------------------------------------- Socket Mode

    async def _link_gate(self, request: web.Request) -> web.StreamResponse:
        if self.link_refused:
            return web.Response(status=503, text="service unavailable")
        return await self._link(request)

    async def drop_link(self, *, refuse: bool = True) -> None:
        """Close the Socket Mode link as an outage would; refuse new links while ``refuse``."""
        self.link_refused = refuse
        self.connected.clear()
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

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
            future = self._acks.pop(str(data.get("envelope_id", "")), None)
            if future is not None and not future.done():
                future.set_result(data.get("payload") or {})
        return ws

    async def envelope(
        self, kind: str, payload: dict[str, Any], *, accepts_response_payload: bool = False
    ) -> dict[str, Any]:
        """Send one Socket Mode envelope and return the payload of the client's ack."""
        await asyncio.wait_for(self.connected.wait(), 5)
        assert self._ws is not None
        envelope_id = str(uuid.uuid4())
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[envelope_id] = future
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
        }
        await self._ws.send_str(json.dumps(envelope))
        return await asyncio.wait_for(future, 5)


def _channel(call: Call) -> str:
    return str(call.args.get("channel", ""))


def _json(
    body: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=json.dumps(body), status=status, content_type="application/json", headers=headers
    )


# ------------------------------------------------------------------ payloads Slack sends


def slash(
    text: str,
    *,
    user: str = "UALICE",
    channel: str = "C0GENERAL",
    response_url: str = "",
    trigger: str | None = None,
    command: str = "/byok",
) -> dict[str, str]:
    return {
        "token": "legacy-verification",
        "team_id": TEAM,
        "team_domain": "test",
        "channel_id": channel,
        "channel_name": "directmessage" if channel.startswith("D") else "general",
        "user_id": user,
        "user_name": user.lower(),
        "command": command,
        "text": text,
        "api_app_id": "A0BYOK",
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger or f"trig.{uuid.uuid4().hex[:8]}",
    }


def event_callback(event: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
    return {
        "token": "legacy-verification",
        "team_id": TEAM,
        "api_app_id": "A0BYOK",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time()),
        "authorizations": [
            {"team_id": TEAM, "user_id": BOT_USER, "is_bot": True, "is_enterprise_install": False}
        ],
    }


def message(
    text: str,
    *,
    user: str = "UALICE",
    channel: str = "DUALICE",
    ts: str = "1700000100.000100",
    channel_type: str = "im",
    kind: str = "message",
    thread_ts: str | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": kind,
        "user": user,
        "text": text,
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
        "team": TEAM,
    }
    if kind == "message":
        event["channel_type"] = channel_type
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def block_action(
    value: str,
    *,
    action_id: str = "byok:r0:0",
    user: str = "UALICE",
    channel: str | None = "DUALICE",
    message_ts: str = "1700000000.000001",
    response_url: str = "",
    ephemeral: bool = False,
    trigger: str | None = None,
) -> dict[str, Any]:
    container: dict[str, Any]
    if channel is None:
        container = {"type": "view", "view_id": "VHOME"}
    else:
        container = {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": ephemeral,
        }
    body: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
        "api_app_id": "A0BYOK",
        "token": "legacy-verification",
        "container": container,
        "trigger_id": trigger or f"trig.{uuid.uuid4().hex[:8]}",
        "team": {"id": TEAM, "domain": "test"},
        "actions": [
            {
                "action_id": action_id,
                "block_id": "byok_r0_0",
                "text": {"type": "plain_text", "text": "Press"},
                "value": value,
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    if channel is not None:
        body["channel"] = {"id": channel, "name": "directmessage"}
        body["message"] = {"type": "message", "ts": message_ts, "text": "", "user": BOT_USER}
        body["response_url"] = response_url
    else:
        body["view"] = {"id": "VHOME", "type": "home"}
    return body


def view_submission(
    opened_view: dict[str, Any], value: str, *, user: str = "UALICE"
) -> dict[str, Any]:
    """What Slack sends when the person submits a modal the bot opened with ``views.open``."""
    view = dict(opened_view)
    view.setdefault("id", "V0001")
    input_block = next(b for b in view["blocks"] if b["type"] == "input")
    action_id = input_block["element"]["action_id"]
    view["state"] = {
        "values": {
            input_block["block_id"]: {action_id: {"type": "plain_text_input", "value": value}}
        }
    }
    view["hash"] = "156772938.1827394"
    return {
        "type": "view_submission",
        "team": {"id": TEAM, "domain": "test"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
        "api_app_id": "A0BYOK",
        "token": "legacy-verification",
        "trigger_id": f"trig.{uuid.uuid4().hex[:8]}",
        "view": view,
        "response_urls": [],
    }


def home_opened(*, user: str = "UALICE", channel: str = "DUALICE") -> dict[str, Any]:
    return {
        "type": "app_home_opened",
        "user": user,
        "channel": channel,
        "tab": "home",
        "event_ts": f"{time.time():.6f}",
    }


def signed_headers(
    secret: str, body: str, *, timestamp: int | None = None, content_type: str
) -> dict[str, str]:
    ts = str(timestamp if timestamp is not None else int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
    }


def form_body(fields: dict[str, str]) -> str:
    return urlencode(fields)


def payload_body(payload: dict[str, Any]) -> str:
    return urlencode({"payload": json.dumps(payload)})


# ------------------------------------------------------------------ a stand-in for the router


@dataclass
class ScriptedBot:
    """Replies the way the router will, enough to drive every adapter path.

    ``/byok start`` offers plans as buttons; pressing one confirms; ``key add`` asks for a
    secret; a SECRET is checked for the Anthropic shape (refused into the modal, or
    confirmed with a fingerprint); ``status`` shows plan and key; a message with a key
    shape is deleted and warned about; any other addressed message streams ``chunks``.
    """

    chunks: tuple[str, ...] = ("Hello", " there,", " friend.")
    tick: float = 0.4
    clock: list[float] = field(default_factory=lambda: [0.0])
    messenger: Messenger | None = None
    events: list[Event] = field(default_factory=list)
    plan: str = "none"
    fingerprint: str = "none"
    deleted: list[bool] = field(default_factory=list)
    secret_delay: float = 0.0
    stream_error: BaseException | None = None

    def now(self) -> float:
        return self.clock[0]

    async def _chunks(self) -> AsyncIterator[str]:
        for chunk in self.chunks:
            self.clock[0] += self.tick
            yield chunk
        if self.stream_error is not None:
            raise self.stream_error

    async def __call__(self, event: Event) -> Outcome:
        self.events.append(event)
        m = self.messenger
        assert m is not None
        if event.kind is EventKind.COMMAND:
            if event.command == "start":
                plans = (
                    Button("BYOK $15", "plan:byok", ButtonStyle.PRIMARY),
                    Button("Managed $39", "plan:managed"),
                )
                await m.respond(event, Reply("Welcome! Pick a plan:", buttons=(plans,)))
            elif event.command == "key" and event.args[:1] == ("add",):
                request = SecretRequest(
                    token="intake-token-123",
                    provider="anthropic",
                    title="Add Anthropic key",
                    prompt="Paste your Anthropic API key. It is encrypted at once.",
                    expires_at=datetime.now(UTC) + timedelta(minutes=10),
                )
                await m.ask_secret(event, request)
            elif event.command == "status":
                await m.respond(
                    event,
                    Reply(
                        f"Plan: {self.plan}\nKey: {self.fingerprint}",
                        sensitive=True,
                        buttons=((Button("Change plan", "plan:menu"),),),
                    ),
                )
            elif event.command == "usage":
                await m.respond(event, Reply("Usage: 0 tokens this month", sensitive=True))
            else:
                await m.respond(event, Reply("*Commands*: `start`, `key add`", sensitive=True))
        elif event.kind is EventKind.BUTTON:
            self.plan = event.payload.removeprefix("plan:")
            await m.respond(event, Reply(f"You are on {self.plan}.", sensitive=True))
        elif event.kind is EventKind.SECRET:
            assert event.secret is not None
            if self.secret_delay:
                await asyncio.sleep(self.secret_delay)
            value = event.secret.reveal()
            if not ANTHROPIC_KEY.fullmatch(value):
                return Outcome(secret_error="That is not an Anthropic key (sk-ant-…).")
            self.fingerprint = f"sk-ant-…{value[-6:-2]}"
            await m.respond(event, Reply(f"Key saved: {self.fingerprint}", sensitive=True))
        elif event.kind is EventKind.MESSAGE:
            if ANTHROPIC_KEY.search(event.text):
                assert event.message_id is not None
                self.deleted.append(await m.delete(event.chat, event.message_id))
                await m.respond(
                    event,
                    Reply("That was an API key: I deleted it. Rotate it now.", sensitive=True),
                )
            elif event.addressed:
                await m.stream(event, self._chunks())
            else:
                return Outcome(handled=False)
        return Outcome()


# ------------------------------------------------------------------ running the real adapter

BOT_TOKEN = "xoxb-1000000001-2000000002-CanaryBotTokenValue0001"
APP_TOKEN = "xapp-1-A0BYOK-3000000003-canaryapptokenvalue0000000000000000000001"
USER_TOKEN = "xoxp-1000000001-4000000004-5000000005-canaryusertokenvalue00001"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def slack_env() -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_APP_TOKEN": APP_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_USER_TOKEN": USER_TOKEN,
    }


class ManualSleep:
    """An injectable ``sleep`` that returns only when the test says so, recording each delay.

    Scenario tests use it so the stream's pacing timer never fires on its own: which edits
    happen then depends only on the (fake) clock, never on how fast the machine is.
    """

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._release = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await self._release.wait()

    def release(self) -> None:
        self._release.set()
