"""The metering proxy: Anthropic Messages and OpenAI-compatible chat completions, metered.

One request, in order::

    scoped token -> tenant (cached; revocations seen < 1 s)   401 unknown/revoked/suspended
    plan has caps; model in the plan's catalog                 403 / 404 model_not_in_plan
    body, tools and headers on the allow-list (policy.py)      400 invalid_request_error
    reserve an upper-bound cost (one atomic statement)         402 usage_cap_reached / 429
    forward to the operator's upstream (redirects refused)    errors: status + type, no text
    settle to the usage the reply reported                     (also on disconnect or error)

A streamed request is streamed upstream and metered from the stream's usage events; a
non-streaming one is forwarded as such and metered from the JSON reply's ``usage`` (cheaper on
both sides than streaming and folding the stream back). Anthropic's prompt-cache tokens
(``cache_creation_input_tokens``, ``cache_read_input_tokens``) are metered as input, at the
route's cache prices.

Per upstream, the URL and headers are built once. A stream has one idle watchdog (a timer
re-armed only when it fires), not a timer per read; the upstream is asked for identity
encoding and its bytes are relayed as they are (no decompression).

Latency: when this process last saw the tenant with ample room (``Budget.likely_admits``), the
upstream call is opened while the reservation commits, so the reservation hides behind the
provider's time to first token; nothing is relayed before it succeeds, and a refused call is
dropped. Settlement runs after the reply, in the background (``stop`` waits for it).

The platform's keys live in this object only; they go into upstream request headers and
nowhere else (not in logs, errors or responses).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import BodyPartReader, web

from core import heap
from core.budget import (
    AlertSink,
    Budget,
    CapReached,
    Cost,
    NotMetered,
    RateLimitExceeded,
    Reservation,
)
from core.config import PlanSettings
from core.metrics import BUDGET_REFUSALS, PROXY_REQUESTS, PROXY_SPEND, PROXY_TOKENS
from core.ports import Clock, SystemClock
from core.proxy import policy
from core.proxy.config import (
    ModelRoute,
    ProxySettings,
    TranscriptionRoute,
    UpstreamSettings,
    load_upstream_keys,
)
from core.proxy.upstream import Call, Reply, Target, UpstreamError, UpstreamPool
from core.proxy.wire import (
    ANTHROPIC,
    MODEL_NOT_IN_PLAN,
    OPENAI,
    USAGE_CAP_REACHED,
    Meter,
    as_json,
    error_body,
    loads,
    sanitized_error,
    status_of_stream_error,
)
from core.proxy_tokens import ProxyTokens, TokenOwner
from core.secret import Secret

if TYPE_CHECKING:
    from core.db import Database
    from core.rawdb import RawDatabase

log = logging.getLogger(__name__)

ANTHROPIC_VERSION: Final = "2023-06-01"
_LIVE_STATUSES: Final = ("trial", "active")
IDLE_RELEASE_SECONDS: Final = 1.0
_SSE_HEADERS: Final = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_ANTHROPIC_OPAQUE: Final = (
    b"event: content_block_delta",
    b"event: ping",
    b"event: content_block_start",
    b"event: content_block_stop",
)


class _SSEResponse(web.StreamResponse):
    """A stream whose headers leave with its first events: one packet to the client, not two.

    ``_relay`` prepares it only once the upstream answered 200, and the first read follows at
    once, so holding the headers back does not delay the first token.
    """

    _send_headers_immediately = False


class _Idle:
    """A stream's idle watchdog: one timer, re-armed only when it fires; reads stamp ``last``.

    A ``sock_read`` timeout costs a ``call_later`` and a cancel per read; this costs one
    ``loop.time()`` per read. When nothing arrived for ``seconds`` it closes the upstream
    response, which ends the read loop; ``fired`` then tells the relay it was a timeout.
    """

    __slots__ = ("_handle", "_loop", "_upstream", "clock", "fired", "last", "seconds")

    def __init__(self, upstream: Reply, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.clock = self._loop.time
        self._upstream = upstream
        self.seconds = seconds
        self.last = self._loop.time()
        self.fired = False
        self._handle = self._loop.call_at(self.last + seconds, self._check)

    def _check(self) -> None:
        due = self.last + self.seconds
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self.fired = True
        self._upstream.close()

    def cancel(self) -> None:
        self._handle.cancel()


class _Refusal(Exception):
    """Answer the client with an error in its API's format."""

    def __init__(
        self, status: int, error_type: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message
        self.headers = headers or {}


@dataclass(frozen=True, slots=True)
class _Admitted:
    tenant_id: str
    plan_id: str
    route: ModelRoute
    upstream: UpstreamSettings
    estimate: Cost
    token_cap: int | None  # a trial's cap, below the plan's monthly one
    input_estimate: int
    # The body as sent upstream, serialised once at admission: the parsed dict (many small
    # objects) is not kept alive for the length of a stream.
    payload: bytes
    stream: bool
    client_wants_usage: bool


@dataclass(frozen=True, slots=True)
class _Audio:
    """A transcription request's form: the file, the fields passed on, what was asked for."""

    data: bytes
    filename: str
    mime: str
    fields: dict[str, str]
    verbose: bool
    claimed_seconds: float


# The form fields passed on besides the file (model and response_format are the proxy's).
_AUDIO_FIELDS: Final = frozenset({"model", "language", "prompt", "temperature", "response_format"})
_FIELD_BYTES: Final = 4096
_FORM_SLACK: Final = 64 * 1024  # multipart framing and the small fields around the file
_MAX_AUDIO_SECONDS: Final = 24 * 3600


class ProxyServer:
    """The aiohttp application, its upstream connection pool and the budget it enforces.

    Args:
        settings: the ``[proxy]`` table.
        db: the same database the bot uses (tokens, tenants, budgets): the bot's ``Database``,
            or for ``byokbot proxy`` a ``core.rawdb`` one (no SQLAlchemy in that process).
        plans: the plan catalog (``Config.plans``).
        env: where the platform keys are read from (``os.environ`` in production).
        clock: time for budgets; ``SystemClock`` by default.
        budget: an existing ``Budget``; built (with ``sink``) if omitted.
        tokens: an existing ``ProxyTokens``; built if omitted. Pass the bot's own instance
            when the proxy runs inside ``byokbot run``, so its revocations skip the cache.
        sink: where usage alerts go when the budget is built here.
        trial_caps: plan id -> the token cap of a trial of that plan; a tenant in a trial
            is held to it at reservation, as to the monthly cap.
    """

    def __init__(
        self,
        settings: ProxySettings,
        db: Database | RawDatabase,
        *,
        plans: Mapping[str, PlanSettings],
        env: Mapping[str, str],
        clock: Clock | None = None,
        budget: Budget | None = None,
        tokens: ProxyTokens | None = None,
        sink: AlertSink | None = None,
        trial_caps: Mapping[str, int] | None = None,
        release_heap_when_idle: bool = False,
    ) -> None:
        self.settings = settings
        self._plans = plans
        self._trial_caps = dict(trial_caps or {})
        # Only where the proxy owns its process (``byokbot proxy``): a trim walks the whole heap
        # (~10 ms on a bot-sized one), a stall the bot's own loop should not take.
        self._release_heap = release_heap_when_idle
        # Requests in flight, and whether any finished since the heap was last given back.
        self._active = 0
        self._served = False
        self._last_done = 0.0
        self._clock = clock or SystemClock()
        self._keys: dict[str, Secret] = load_upstream_keys(settings, env)
        # Per upstream, built once: the request head (with the platform key) of every call.
        self._calls: dict[str, tuple[str, dict[str, str]]] = {
            uid: _target(settings.upstreams[uid], key) for uid, key in self._keys.items()
        }
        self._targets: dict[tuple[str, str | None], Target] = {
            (uid, None): Target.of(url, headers) for uid, (url, headers) in self._calls.items()
        }
        self.budget = budget or Budget(
            db,
            plans,
            self._clock,
            sink=sink,
            reservation_ttl=timedelta(seconds=settings.reservation_ttl_seconds),
            lease_requests=settings.lease_requests,
        )
        self.tokens = tokens or ProxyTokens(
            db, self._clock, keep=settings.tokens_kept, cache_seconds=settings.token_cache_seconds
        )
        # The transcription route's URL and headers (platform key), when it is offered.
        self._transcription_target: tuple[str, dict[str, str]] = ("", {})
        if settings.transcription is not None:
            up = settings.upstreams[settings.transcription.upstream]
            key = self._keys[up.id]
            self._transcription_target = (
                f"{up.base_url}/audio/transcriptions",
                {"Authorization": f"Bearer {key.reveal()}", "accept-encoding": "identity"},
            )
        self._upstream: UpstreamPool | None = None
        self._http: aiohttp.ClientSession | None = None  # transcription's multipart form only
        self._settling: set[asyncio.Future[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._releaser: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.listening = asyncio.Event()  # set by start(); what ``byokbot proxy`` waits on
        self.app = web.Application(client_max_size=settings.max_body_bytes)
        self.app.router.add_post("/v1/messages", self._anthropic)
        self.app.router.add_post("/v1/chat/completions", self._openai)
        self.app.router.add_post("/v1/audio/transcriptions", self._transcription)

    # --- lifecycle --------------------------------------------------------------------------

    async def start(
        self, host: str | None = None, port: int | None = None, *, reuse_port: bool = False
    ) -> int:
        """Listen on ``host:port`` (default: the settings; port 0 picks one); returns the port.

        ``reuse_port`` (SO_REUSEPORT) lets several processes listen on one port, the kernel
        spreading connections among them (``byokbot proxy --workers N``).
        """
        self._upstream = UpstreamPool(limit=self.settings.max_connections, connect_timeout=10)
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.settings.max_connections),
            # No sock_read: a timer per read; the waits are bounded in _open and by _Idle.
            timeout=aiohttp.ClientTimeout(total=None, connect=10),
            trust_env=False,
            # Identity encoding is asked for, so there is nothing to decompress.
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
        )
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            host if host is not None else self.settings.host,
            port if port is not None else self.settings.port,
            reuse_port=reuse_port or None,
        )
        try:
            await site.start()
        except BaseException:
            await self.stop()
            raise
        if self.tokens.caching:
            self._watcher = asyncio.create_task(self._watch_revocations())
        if self._release_heap:
            self._releaser = asyncio.create_task(self._release_when_idle())
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        self.port = int(sockets[0].getsockname()[1]) if sockets else None
        log.info("metering proxy listening on port %s", self.port)
        self.listening.set()
        return self.port or 0

    async def stop(self) -> None:
        """Stop listening, finish the handlers' settlement, close the upstream pool."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in (self._watcher, self._releaser):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watcher = self._releaser = None
        self.budget.close_leases()  # their requests' settlements commit now, not in a second
        if self._settling:
            # Failures were logged by each one's callback.
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self.budget.drain()
        if self._upstream is not None:
            await self._upstream.close()
            self._upstream = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def serve_forever(self, *, jobs: bool = True, reuse_port: bool = False) -> None:
        """``byokbot proxy``: listen until cancelled, sweeping orphans and rolling periods.

        With ``jobs`` the proxy runs ``sweep_orphans`` and ``reset_month`` itself every
        ``sweep_interval_seconds`` (both are idempotent, so also scheduling them elsewhere is
        harmless). ``reuse_port``: see ``start``.
        """
        await self.start(reuse_port=reuse_port)
        try:
            while True:
                await asyncio.sleep(self.settings.sweep_interval_seconds)
                if jobs:
                    await self.run_jobs()
        finally:
            await self.stop()

    async def _watch_revocations(self) -> None:
        """Re-read the revocation counter twice per check window, off the request path."""
        while True:
            try:
                await self.tokens.check_revocations()
            except Exception as exc:  # noqa: BLE001 - cache hits then check inline, or fail
                log.warning("reading proxy revocations failed (%s)", type(exc).__name__)
            await asyncio.sleep(self.tokens.check_seconds / 2)

    async def _release_when_idle(self) -> None:
        """Give the heap back once the proxy has served and then been idle for a second.

        A burst's buffers would otherwise stay resident (free in malloc, not to the kernel)
        until the next burst reuses them.
        """
        while True:
            await asyncio.sleep(IDLE_RELEASE_SECONDS / 2)
            quiet = time.monotonic() - self._last_done >= IDLE_RELEASE_SECONDS
            if self._served and not self._active and quiet:
                self._served = False
                heap.release()

    async def run_jobs(self) -> None:
        """One round of the periodic jobs (also what an APScheduler job can call)."""
        await self.budget.sweep_orphans(self._clock.now())
        await self.budget.reset_month(self._clock.now())

    # --- handlers ---------------------------------------------------------------------------

    # Each handler counts its answer itself: a middleware is one more coroutine per request.

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return _counted("anthropic", await self._handle(request, ANTHROPIC))

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return _counted("openai", await self._handle(request, OPENAI))

    async def _transcription(self, request: web.Request) -> web.StreamResponse:
        return _counted("openai", await self._transcribe(request))

    async def _handle(self, request: web.Request, api: str) -> web.StreamResponse:
        self._active += 1
        try:
            return await self._serve(request, api)
        finally:
            self._active -= 1
            self._served, self._last_done = True, time.monotonic()

    async def _serve(self, request: web.Request, api: str) -> web.StreamResponse:
        try:
            a = await self._admit(request, api)
        except _Refusal as r:
            if r.status in (401, 403):
                # Names the check that failed (never the token): a managed agent told "invalid
                # key" is the platform's problem, and the operator needs to know which.
                log.warning("proxy: refused %d %s: %s", r.status, r.error_type, r.message)
            return _error(api, r.status, r.error_type, r.message, headers=r.headers)
        early: Call | None = None
        if self.budget.likely_admits(a.tenant_id, a.plan_id, a.estimate, token_cap=a.token_cap):
            # Ample room last time: the upstream call goes out now, while the reservation
            # commits, so the reservation hides behind the provider's time to first token.
            # Nothing is relayed before the reservation succeeds; if it fails, the call is
            # dropped.
            early = self._start(api, a, request)
            early.run_ahead()
        try:
            reservation = await self._reserve(a)
        except BaseException as exc:
            if early is not None:
                early.cancel()
            if isinstance(exc, _Refusal):
                return _error(api, exc.status, exc.error_type, exc.message, headers=exc.headers)
            raise
        meter = Meter()
        settled = False

        def settle() -> None:
            nonlocal settled
            if not settled:
                settled = True
                self._settle(a, reservation, meter)

        try:
            upstream = await self._open(early or self._start(api, a, request), a)
            async with upstream:
                if upstream.status != 200:
                    return await self._upstream_failed(api, a.upstream, upstream)
                if a.stream:
                    return await self._relay(request, api, a, upstream, meter, settle)
                return await self._forward(api, a, upstream, meter)
        except _Refusal as r:
            return _error(api, r.status, r.error_type, r.message, headers=r.headers)
        finally:
            # In the background: the connection is free for the client's next request at once,
            # and a cancelled handler (server stopping) still settles. ``stop`` waits for these.
            settle()

    async def _reserve(self, a: _Admitted) -> Reservation:
        return await self._reserve_cost(a.tenant_id, a.plan_id, a.estimate, a.token_cap)

    async def _reserve_cost(
        self, tenant_id: str, plan_id: str, estimate: Cost, token_cap: int | None
    ) -> Reservation:
        try:
            # The only request in flight has no other reservation to commit with.
            return await self.budget.reserve(
                tenant_id,
                plan_id,
                estimate,
                token_cap=token_cap,
                alone=self._active == 1,
            )
        except CapReached as exc:
            BUDGET_REFUSALS.labels("cap").inc()
            raise _Refusal(
                402,
                USAGE_CAP_REACHED,
                f"monthly usage cap reached ({exc.which}); it resets on "
                f"{exc.resets_on.isoformat()}",
            ) from None
        except RateLimitExceeded as exc:
            BUDGET_REFUSALS.labels("rate").inc()
            seconds = str(math.ceil(exc.retry_after))
            raise _Refusal(
                429,
                "rate_limit_error",
                f"too many requests per minute for your plan; retry in {seconds} s",
                headers={"retry-after": seconds},
            ) from None
        except NotMetered:
            BUDGET_REFUSALS.labels("not_metered").inc()
            raise _Refusal(
                403, "permission_error", "your plan does not include managed models"
            ) from None

    async def _tenant(self, request: web.Request) -> tuple[TokenOwner, PlanSettings]:
        """The live managed tenant the request's scoped token belongs to (401 / 403)."""
        token = request.headers.get("x-api-key") or _bearer(request)
        owner = await self.tokens.owner(token) if token else None
        if owner is None or owner.status not in _LIVE_STATUSES or owner.paused:
            raise _Refusal(401, "authentication_error", "invalid or revoked proxy token")
        plan = self._plans.get(owner.plan)
        if plan is None or plan.byok:
            raise _Refusal(403, "permission_error", "your plan does not include managed models")
        return owner, plan

    async def _admit(self, request: web.Request, api: str) -> _Admitted:
        owner, plan = await self._tenant(request)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _Refusal(413, "request_too_large", "request body too large") from None
        try:
            checked = policy.check(
                api,
                policy.parse(raw),
                request.headers,
                default_max_tokens=self.settings.default_max_tokens,
            )
        except policy.BadRequest as exc:
            raise _Refusal(400, "invalid_request_error", str(exc)) from None
        body = checked.body
        model: str = body["model"]
        route = self.settings.models.get(model)
        if model not in plan.models or route is None:
            if model in plan.models:
                log.error("plan %s lists model %r but [proxy.models] has no route", plan.id, model)
            raise _Refusal(
                404,
                MODEL_NOT_IN_PLAN,
                f"model {model[:100]!r} is not in your plan; available: {', '.join(plan.models)}",
            )
        upstream = self.settings.upstreams[route.upstream]
        if upstream.kind != api:
            where = "/v1/messages" if upstream.kind == ANTHROPIC else "/v1/chat/completions"
            raise _Refusal(400, "invalid_request_error", f"model {model!r} is served on {where}")
        stream = bool(body.get("stream"))
        input_estimate = math.ceil(len(raw) / self.settings.estimate_bytes_per_token)
        estimate = Cost.of(
            input_estimate,
            checked.max_output,
            # Any prompt token may turn out to be a cache write, the dearest kind of input.
            input_usd_per_mtok=route.max_input_usd_per_mtok,
            output_usd_per_mtok=route.output_usd_per_mtok,
        )
        client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        body["model"] = route.wire_model
        if stream and api == OPENAI:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return _Admitted(
            tenant_id=owner.tenant_id,
            plan_id=plan.id,
            route=route,
            upstream=upstream,
            estimate=estimate,
            token_cap=self._trial_caps.get(plan.id) if owner.trial else None,
            input_estimate=input_estimate,
            payload=as_json(body),
            stream=stream,
            client_wants_usage=client_wants_usage,
        )

    def _start(self, api: str, a: _Admitted, request: web.Request) -> Call:
        """Start the call upstream (on a kept connection, its request leaves at once).

        Redirects are never followed (the client has no such thing): one would carry the
        platform's key to another origin.
        """
        assert self._upstream is not None, "ProxyServer.start() was not called"  # noqa: S101
        target = self._targets[a.upstream.id, None]
        version = request.headers.get("anthropic-version")
        if api == ANTHROPIC and version is not None and version != ANTHROPIC_VERSION:
            # The only client header forwarded (policy allows listed versions only).
            target = self._versioned(a.upstream.id, version)
        return self._upstream.start(target, a.payload)

    async def _open(self, call: Call, a: _Admitted) -> Reply:
        """The call's reply once its headers are in.

        Bounded by ``upstream_timeout_seconds`` (a non-streaming reply's headers come when
        the whole reply is ready).
        """
        try:
            async with asyncio.timeout(self.settings.upstream_timeout_seconds):
                return await call.reply()
        except TimeoutError:
            raise _Refusal(504, "api_error", "upstream provider did not answer in time") from None
        except UpstreamError as exc:
            # Its text names the kind of failure only (never the URL or a header).
            log.warning("upstream %s unreachable (%s)", a.upstream.id, exc)
            raise _Refusal(502, "api_error", "upstream provider unreachable") from None

    def _versioned(self, upstream_id: str, version: str) -> Target:
        target = self._targets.get((upstream_id, version))
        if target is None:
            url, headers = self._calls[upstream_id]
            target = Target.of(url, {**headers, "anthropic-version": version})
            self._targets[upstream_id, version] = target
        return target

    async def _upstream_failed(
        self, api: str, up: UpstreamSettings, upstream: Reply | aiohttp.ClientResponse
    ) -> web.StreamResponse:
        try:
            body: Any = loads(await upstream.read())
        except (ValueError, UpstreamError, aiohttp.ClientError):
            body = None
        if upstream.status in (401, 403):
            # The platform's key was refused: the operator's problem, not the tenant's key.
            log.error(
                "upstream %s refused the platform key (HTTP %s); check %s",
                up.id,
                upstream.status,
                up.key_env,
            )
            return _error(api, 502, "api_error", "upstream provider refused the platform's key")
        if 300 <= upstream.status < 400:
            log.error(
                "upstream %s answered a redirect (HTTP %s); not followed, check its base_url",
                up.id,
                upstream.status,
            )
            return _error(
                api, 502, "api_error", "upstream provider answered with a redirect (not followed)"
            )
        headers = {
            k: upstream.headers[k]
            for k in ("retry-after", "retry-after-ms")
            if k in upstream.headers
        }
        return web.Response(
            status=upstream.status,
            body=as_json(sanitized_error(api, body, upstream.status)),
            content_type="application/json",
            headers=headers,
        )

    async def _relay(
        self,
        request: web.Request,
        api: str,
        a: _Admitted,
        upstream: Reply,
        meter: Meter,
        settle: Callable[[], None],
    ) -> web.StreamResponse:
        response = _SSEResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        idle = _Idle(upstream, self.settings.upstream_timeout_seconds)
        try:
            # One write per upstream read: events that arrived together leave together. The end
            # of the body waits for the upstream's end (not just its last event): a client
            # that saw the end sends its next request on this connection, which would wait
            # behind this handler while it drained the upstream.
            # Closed here when left early: an async generator left to the garbage collector
            # is closed by a task the loop is woken for (``call_soon_threadsafe``), per request.
            async with contextlib.aclosing(
                _relayed(upstream, api, meter, a.client_wants_usage, idle)
            ) as relayed:
                async for out in relayed:
                    if meter.ended:
                        # The client is about to have the whole reply and may send its next
                        # request before the upstream closes: that request is judged on this
                        # one's real usage.
                        settle()
                        if upstream.at_eof():
                            # The upstream's end came with its last events: they leave with the
                            # end of the body, in one write.
                            await response.write_eof(out)
                            return response
                    if out:
                        await response.write(out)
            if idle.fired:
                raise TimeoutError
            await response.write_eof()
        except ConnectionResetError:
            log.debug("client left mid-stream (tenant %s)", a.tenant_id)
        except (UpstreamError, TimeoutError) as exc:
            kind = "TimeoutError" if idle.fired else type(exc).__name__
            log.warning("upstream stream broke (%s)", kind)
            with contextlib.suppress(ConnectionResetError):
                await response.write(_sse_error(api, {"error": {"type": "api_error"}}))
                await response.write_eof()
        finally:
            idle.cancel()
        return response

    async def _forward(
        self, api: str, a: _Admitted, upstream: Reply, meter: Meter
    ) -> web.StreamResponse:
        """A non-streaming reply: metered from its ``usage``, its bytes passed on as they are."""
        idle = _Idle(upstream, self.settings.upstream_timeout_seconds)
        try:
            raw = await upstream.read()
        except (UpstreamError, TimeoutError) as exc:
            kind = "TimeoutError" if idle.fired else type(exc).__name__
            log.warning("upstream reply broke (%s)", kind)
            meter.unknown = True  # the provider may have billed it all: charge the estimate
            raise _Refusal(502, "api_error", "upstream provider reply broke") from None
        finally:
            idle.cancel()
        try:
            data = loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict) or not meter.feed_reply(api, data):
            log.warning("upstream %s sent a reply without usage", a.upstream.id)
            meter.unknown = True
            if not isinstance(data, dict):
                raise _Refusal(502, "api_error", "upstream provider sent a malformed reply")
        if _is_error_event(api, data):
            return web.Response(
                status=status_of_stream_error(data),
                body=as_json(sanitized_error(api, data, None)),
                content_type="application/json",
            )
        return web.Response(body=raw, content_type="application/json")

    def _settle(self, a: _Admitted, reservation: Reservation, meter: Meter) -> None:
        """Settle in the background (no task per request on SQLite: ``Budget.settle_soon``)."""
        if meter.unknown:
            # A reply whose usage we could not read: the reservation's bound, in full.
            cost = a.estimate
        else:
            cost = _priced(meter, a)
            if cost.tokens == 0:
                cost = Cost(0, 0)  # nothing used: the reservation goes back untouched
        inp, out = meter.billed(a.input_estimate)
        try:
            settling = self.budget.settle_soon(reservation, cost, plan_id=a.plan_id)
        except Exception as exc:  # noqa: BLE001 - the sweeper releases it; the reply is sent
            self._settle_failed(a.tenant_id, exc)
            return
        self._settling.add(settling)

        def settled(f: asyncio.Future[None]) -> None:
            self._settling.discard(f)
            error = asyncio.CancelledError() if f.cancelled() else f.exception()
            if error is not None:
                self._settle_failed(a.tenant_id, error)
            elif cost.tokens:
                _count_usage(a.route.wire_model, inp, out, cost.usd_micros)

        settling.add_done_callback(settled)

    @staticmethod
    def _settle_failed(tenant_id: str, exc: BaseException) -> None:
        log.error(
            "settling reservation for tenant %s failed (%s); the sweeper will release it",
            tenant_id,
            type(exc).__name__,
        )

    # --- voice notes: POST /v1/audio/transcriptions ----------------------------------------

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's transcription endpoint, metered by the audio's duration.

        Admission as for chat (token, plan, then the body), a reservation of the most the
        file can last, the upstream asked for ``verbose_json`` (its ``duration`` is what is
        billed), settlement to that duration, never above the reservation.
        """
        try:
            owner, plan = await self._tenant(request)
            route = self.settings.transcription
            if route is None:
                raise _Refusal(
                    404, "not_found_error", "voice transcription is not offered by this proxy"
                )
            audio = await self._audio_form(request, route)
        except _Refusal as r:
            if r.status in (401, 403):
                log.warning("proxy: refused %d %s: %s", r.status, r.error_type, r.message)
            return _error(OPENAI, r.status, r.error_type, r.message, headers=r.headers)
        seconds = max(audio.claimed_seconds, len(audio.data) / route.min_bytes_per_second)
        billed, tokens, micros = route.cost_of(seconds)
        estimate = Cost(tokens, micros)
        token_cap = self._trial_caps.get(plan.id) if owner.trial else None
        try:
            reservation = await self._reserve_cost(owner.tenant_id, plan.id, estimate, token_cap)
        except _Refusal as r:
            return _error(OPENAI, r.status, r.error_type, r.message, headers=r.headers)
        cost: Cost | None = None  # None: nothing was billed upstream, the reservation goes back
        try:
            data = await self._transcribe_upstream(route, audio)
            if isinstance(data, web.StreamResponse):
                return data  # the upstream's refusal, sanitised: nothing was billed
            reply: Any = None
            with contextlib.suppress(ValueError):
                reply = loads(data)
            text = reply.get("text") if isinstance(reply, dict) else None
            duration = reply.get("duration") if isinstance(reply, dict) else None
            if not isinstance(duration, int | float) or isinstance(duration, bool):
                log.warning("upstream %s sent a transcript without duration", route.upstream)
                cost = estimate  # the provider may have billed it all: charge the bound
            elif duration > billed:
                # Audio below min_bytes_per_second: the tenant is held to what was reserved.
                log.warning(
                    "transcription lasted %.1f s, over the %d s reserved; charged the reservation",
                    duration,
                    billed,
                )
                cost = estimate
            else:
                _, used_tokens, used_micros = route.cost_of(float(duration))
                cost = Cost(used_tokens, used_micros)
            if not isinstance(text, str):
                cost = estimate
                raise _Refusal(502, "api_error", "upstream provider sent a malformed reply")
            if audio.verbose:
                return web.Response(body=data, content_type="application/json")
            return web.Response(body=as_json({"text": text}), content_type="application/json")
        except _Refusal as r:
            return _error(OPENAI, r.status, r.error_type, r.message, headers=r.headers)
        finally:
            task = asyncio.create_task(
                self._settle_audio(owner.tenant_id, plan.id, route, reservation, cost)
            )
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _audio_form(self, request: web.Request, route: TranscriptionRoute) -> _Audio:
        """The multipart form, read within ``max_audio_bytes``; 400 / 413 for what is wrong."""
        limit = self.settings.max_audio_bytes
        if request.content_length is not None and request.content_length > limit + _FORM_SLACK:
            raise _Refusal(413, "request_too_large", f"audio file larger than {limit} bytes")
        if request.content_type != "multipart/form-data":
            raise _Refusal(
                400, "invalid_request_error", "body: must be multipart/form-data with a file"
            )
        claimed = 0.0
        hint = request.headers.get("x-audio-seconds")
        if hint is not None:
            try:
                claimed = float(hint)
            except ValueError:
                claimed = -1.0
            if not 0 <= claimed <= _MAX_AUDIO_SECONDS:
                raise _Refusal(
                    400, "invalid_request_error", "x-audio-seconds: must be a number of seconds"
                )
        audio: bytes | None = None
        filename, mime = "audio", "application/octet-stream"
        fields: dict[str, str] = {}
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise _Refusal(400, "invalid_request_error", "body: nested multipart")
                name = part.name or ""
                if name == "file":
                    audio = await _read_part(part, limit, "file")
                    filename = (part.filename or filename)[:200]
                    mime = part.headers.get("Content-Type", mime)[:100]
                elif name in _AUDIO_FIELDS:
                    fields[name] = (await _read_part(part, _FIELD_BYTES, name)).decode("utf-8")
                else:
                    shown = name[:60] if name.isprintable() else repr(name[:60])
                    raise _Refusal(
                        400,
                        "invalid_request_error",
                        f"{shown}: not supported by the managed plan's proxy",
                    )
        except (ValueError, UnicodeDecodeError, AssertionError):
            # aiohttp's multipart reader asserts on some malformed framing.
            raise _Refusal(400, "invalid_request_error", "body: malformed multipart form") from None
        if not audio:
            raise _Refusal(400, "invalid_request_error", "file: field required (the audio)")
        wanted = fields.pop("response_format", "json")
        if wanted not in ("json", "verbose_json"):
            raise _Refusal(
                400, "invalid_request_error", "response_format: must be json or verbose_json"
            )
        # The catalog's model is what is priced, so it is what is sent, whatever was asked.
        fields.pop("model", None)
        return _Audio(audio, filename, mime, fields, wanted == "verbose_json", claimed)

    async def _transcribe_upstream(
        self, route: TranscriptionRoute, audio: _Audio
    ) -> bytes | web.StreamResponse:
        """The upstream's reply body (HTTP 200), or the error to send the client."""
        assert self._http is not None, "ProxyServer.start() was not called"  # noqa: S101
        up = self.settings.upstreams[route.upstream]
        url, headers = self._transcription_target
        form = aiohttp.FormData()
        form.add_field("file", audio.data, filename=audio.filename, content_type=audio.mime)
        form.add_field("model", route.model)
        form.add_field("response_format", "verbose_json")
        for name, value in audio.fields.items():
            form.add_field(name, value)
        try:
            async with asyncio.timeout(self.settings.upstream_timeout_seconds):
                # Never follow a redirect: it would carry the platform's key to another origin.
                async with self._http.post(
                    url, data=form, headers=headers, allow_redirects=False
                ) as upstream:
                    if upstream.status != 200:
                        return await self._upstream_failed(OPENAI, up, upstream)
                    return await upstream.read()
        except TimeoutError:
            raise _Refusal(504, "api_error", "upstream provider did not answer in time") from None
        except aiohttp.ClientError as exc:
            log.warning("upstream %s unreachable (%s)", up.id, type(exc).__name__)
            raise _Refusal(502, "api_error", "upstream provider unreachable") from None

    async def _settle_audio(
        self,
        tenant_id: str,
        plan_id: str,
        route: TranscriptionRoute,
        reservation: Reservation,
        cost: Cost | None,
    ) -> None:
        try:
            if cost is None or (cost.tokens == 0 and cost.usd_micros == 0):
                await self.budget.release(reservation)
                return
            await self.budget.settle(reservation, cost, plan_id=plan_id)
            PROXY_SPEND.labels(route.model).inc(cost.usd_micros / 1_000_000)
        except Exception as exc:  # noqa: BLE001 - the sweeper releases it; the reply is sent
            log.error(
                "settling reservation for tenant %s failed (%s); the sweeper will release it",
                tenant_id,
                type(exc).__name__,
            )


# Labelled children, looked up once: ``labels()`` takes a lock and builds a key per call.
_REQUEST_COUNTERS: dict[tuple[str, int], Any] = {}
_USAGE_COUNTERS: dict[str, tuple[Any, Any, Any]] = {}


def _counted(api: str, response: web.StreamResponse) -> web.StreamResponse:
    key = (api, response.status)
    counter = _REQUEST_COUNTERS.get(key)
    if counter is None:
        counter = _REQUEST_COUNTERS[key] = PROXY_REQUESTS.labels(api, str(response.status))
    counter.inc()
    return response


def _count_usage(model: str, input_tokens: int, output_tokens: int, usd_micros: int) -> None:
    counters = _USAGE_COUNTERS.get(model)
    if counters is None:
        counters = _USAGE_COUNTERS[model] = (
            PROXY_TOKENS.labels(model, "input"),
            PROXY_TOKENS.labels(model, "output"),
            PROXY_SPEND.labels(model),
        )
    counters[0].inc(input_tokens)
    counters[1].inc(output_tokens)
    counters[2].inc(usd_micros / 1_000_000)


def _target(up: UpstreamSettings, key: Secret) -> tuple[str, dict[str, str]]:
    """The URL and headers of every call to ``up`` (identity encoding: relayed byte for byte)."""
    if up.kind == ANTHROPIC:
        return f"{up.base_url}/v1/messages", {
            "x-api-key": key.reveal(),
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
            "accept-encoding": "identity",
        }
    return f"{up.base_url}/chat/completions", {
        "Authorization": f"Bearer {key.reveal()}",
        "content-type": "application/json",
        "accept-encoding": "identity",
    }


def _priced(meter: Meter, a: _Admitted) -> Cost:
    """The metered usage at the route's prices (prompt-cache tokens at their own)."""
    inp, out = meter.billed(a.input_estimate)
    route = a.route
    micros = (
        inp * route.input_usd_per_mtok
        + out * route.output_usd_per_mtok
        + meter.cache_write_tokens * route.cache_write_price
        + meter.cache_read_tokens * route.cache_read_price
    )
    tokens = inp + out + meter.cache_write_tokens + meter.cache_read_tokens
    return Cost(tokens, math.ceil(round(micros, 6)))


async def _relayed(
    upstream: Reply,
    api: str,
    meter: Meter,
    keep_usage: bool,
    idle: _Idle | None = None,
) -> AsyncGenerator[bytes, None]:
    """Per upstream read: the complete events in it, as they are to be sent on.

    Events are metered on the way; an incomplete one waits for the next read. A read takes
    everything buffered, so under loop lag the events of several packets leave in one write.
    """
    rest = b""
    clock = time.monotonic if idle is None else idle.clock
    while chunk := await upstream.readany():
        if idle is not None:
            idle.last = clock()
        if rest:
            chunk = rest + chunk
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        end = chunk.rfind(b"\n\n")
        if end < 0:
            rest = chunk
            continue
        rest = chunk[end + 2 :]
        yield _relay_events(chunk[: end + 2], api, meter, keep_usage)
    if rest.strip():
        yield _relay_events(rest + b"\n\n", api, meter, keep_usage)


def _relay_events(events: bytes, api: str, meter: Meter, keep_usage: bool) -> bytes:
    """Meter complete events (each ending in a blank line); returns what to send on.

    Text deltas are most of a stream and carry no usage: they are counted, not decoded. The
    bytes go on untouched unless an event had to be rewritten (an error) or dropped (OpenAI's
    usage chunk, which we asked for and this client did not).
    """
    anthropic = api == ANTHROPIC
    n_events = events.count(b"\n\n")
    if anthropic:
        if n_events == 1 and events.startswith(_DELTA):  # a stream read at its pace: one delta
            meter.deltas += 1
            return events
        # Most reads are only text deltas: count them at event starts, send them untouched.
        framed = b"\n\n" + events
        deltas = framed.count(b"\n\n" + _DELTA)
        # content_block_start/_delta/_stop and ping (two scans, not four).
        opaque = framed.count(b"\n\nevent: content_block_") + framed.count(b"\n\nevent: ping\n")
        if opaque == n_events:
            meter.deltas += deltas
            return events
        # The rest are as a rule the few events with usage: found by name, only they parsed.
        usage = _usage_events(framed, n_events - opaque)
        if usage is not None:
            for data in usage:
                meter.feed(api, data)
            meter.deltas += deltas
            return events
    elif not (
        b'"usage":{' in events
        or b'"usage": {' in events
        or b'"error"' in events
        or b"[DONE]" in events
    ):
        meter.deltas += n_events
        return events
    kept: list[bytes] = []
    changed = False
    for event in events[:-2].split(b"\n\n"):
        if not _worth_parsing(api, event):
            if not anthropic or event.startswith(b"event: content_block_delta"):
                meter.deltas += 1
            kept.append(event)
            continue
        data = _data_of(event)
        meter.feed(api, data)
        if _is_error_event(api, data):
            kept.append(_sse_error(api, data)[:-2])
            changed = True
        elif (
            not anthropic
            and not keep_usage
            and isinstance(data, dict)
            and "usage" in data
            and not data.get("choices")
        ):
            changed = True  # we asked for the usage chunk; this client did not
        else:
            kept.append(event)
    if not changed:
        return events
    return b"".join(event + b"\n\n" for event in kept)


_DELTA: Final = b"event: content_block_delta\n"
_USAGE_MARKERS: Final = tuple(
    (name, b"\n\nevent: " + name.encode() + b"\n")
    for name in ("message_start", "message_delta", "message_stop")
)


def _usage_events(framed: bytes, expected: int) -> list[Any] | None:
    """The data of the Anthropic events that carry usage or the end, in ``framed``.

    One of each is looked for, from the end it is usually at (a stream starts with
    ``message_start`` and ends with ``message_delta``, ``message_stop``), so the search stops
    early. None unless that makes exactly ``expected`` events, each of the type its name says:
    anything else (an error, an event of a new kind, two of a kind) takes the careful path.
    """
    found: list[Any] = []
    for name, marker in _USAGE_MARKERS:
        at = framed.find(marker) if name == "message_start" else framed.rfind(marker)
        if at < 0:
            continue
        data = _data_of(framed[at + 2 : framed.find(b"\n\n", at + 2)])
        if not isinstance(data, dict) or data.get("type") != name:
            return None
        found.append(data)
    return found if len(found) == expected else None


def _worth_parsing(api: str, event: bytes) -> bool:
    if api == ANTHROPIC:
        # Nothing the meter or the error check reads is in these (nor in their data).
        return not event.startswith(_ANTHROPIC_OPAQUE)
    return (
        b'"usage":{' in event or b'"usage": {' in event or b'"error"' in event or b"[DONE]" in event
    )


def _data_of(event: bytes) -> Any:
    parts = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    if not parts:
        return None
    text = b"\n".join(parts)
    if text == b"[DONE]":
        return "[DONE]"
    try:
        return loads(text)
    except ValueError:
        return None


def _is_error_event(api: str, data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    if api == ANTHROPIC:
        return data.get("type") == "error"
    return "error" in data


def _sse_error(api: str, data: Any) -> bytes:
    body = sanitized_error(api, data, None)
    if api == ANTHROPIC:
        return b"event: error\ndata: " + as_json(body) + b"\n\n"
    return b"data: " + as_json(body) + b"\n\n"


async def _read_part(part: BodyPartReader, limit: int, name: str) -> bytes:
    """A form part's bytes, refused with a 413 (the file) or a 400 once over ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(65536):
        size += len(chunk)
        if size > limit:
            if name == "file":
                raise _Refusal(413, "request_too_large", f"audio file larger than {limit} bytes")
            raise _Refusal(400, "invalid_request_error", f"{name}: longer than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _bearer(request: web.Request) -> str:
    value = request.headers.get("Authorization", "")
    return value[7:].strip() if value[:7].lower() == "bearer " else ""


def _error(
    api: str, status: int, error_type: str, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=as_json(error_body(api, error_type, message)),
        content_type="application/json",
        headers=headers,
    )
