"""The metering proxy against the fake providers: both APIs, metering, catalog, tokens, errors, leaks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.budget import Budget, BudgetSummary, Cost, RecordingAlertSink
from core.config import PlanSettings
from core.db import Database
from core.llm import (
    ChatMessage,
    InvalidKey,
    LLMError,
    ModelNotFound,
    ModelNotInPlan,
    OutOfCredit,
    Overloaded,
    RateLimited,
    TextDelta,
    Usage,
    UsageCapReached,
    classify,
    make_client,
)
from core.ports import ManualClock
from core.proxy import ProxyServer, parse_proxy
from core.proxy.wire import error_body
from core.proxy_tokens import ProxyTokens
from core.secret import Secret
from tests import canaries
from tests.fakes.llm_server import FakeLLMServer
from tests.test_budget import add_tenant, open_db

START = datetime(2026, 3, 10, 12, 0, 30, tzinfo=UTC)
CURATED = ("claude-curated", "gpt-curated")


def catalog(*, token_cap: int = 1_000_000, rpm: int = 10_000) -> dict[str, PlanSettings]:
    return {
        "managed": PlanSettings(
            id="managed",
            name="Managed",
            price_usd=39.0,
            byok=False,
            models=CURATED,
            requests_per_minute=rpm,
            monthly_token_cap=token_cap,
            monthly_usd_cap=30.0,
        ),
        "pro": PlanSettings(
            id="pro",
            name="Pro",
            price_usd=99.0,
            byok=False,
            models=("claude-curated", "claude-pro-only"),
            requests_per_minute=rpm,
            monthly_token_cap=token_cap,
        ),
        "byok": PlanSettings(id="byok", name="BYOK", price_usd=15.0, byok=True),
    }


@dataclass
class World:
    fake: FakeLLMServer
    db: Database
    server: ProxyServer
    clock: ManualClock
    sink: RecordingAlertSink
    http: httpx.AsyncClient
    tokens: ProxyTokens
    platform_keys: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def token(self, tenant: str = "t-managed") -> str:
        return (await self.tokens.issue(tenant)).reveal()

    async def summary(self, tenant: str = "t-managed", plan: str = "managed") -> BudgetSummary:
        return await self.server.budget.summary(tenant, plan)

    async def settled(self, tenant: str = "t-managed", plan: str = "managed") -> BudgetSummary:
        """Wait (bounded) until the tenant has nothing reserved, i.e. its requests settled."""
        for _ in range(500):
            s = await self.summary(tenant, plan)
            if s.tokens_reserved == 0:
                return s
            await asyncio.sleep(0.01)
        raise AssertionError("reservation never settled")


def proxy_table(fake: FakeLLMServer, **extra: Any) -> dict[str, Any]:
    return {
        "default_max_tokens": 1000,
        "upstreams": {
            "up-anthropic": {
                "kind": "anthropic",
                "base_url": fake.anthropic_url,
                "key_env": "PX_ANTHROPIC_KEY",
            },
            "up-openai": {
                "kind": "openai-compatible",
                "base_url": fake.openai_url,
                "key_env": "PX_OPENAI_KEY",
            },
        },
        "models": {
            "claude-curated": {
                "upstream": "up-anthropic",
                "upstream_model": "model-large",
                "input_usd_per_mtok": 3.0,
                "output_usd_per_mtok": 15.0,
            },
            "claude-pro-only": {
                "upstream": "up-anthropic",
                "input_usd_per_mtok": 15.0,
                "output_usd_per_mtok": 75.0,
            },
            "gpt-curated": {
                "upstream": "up-openai",
                "upstream_model": "model-small",
                "input_usd_per_mtok": 0.4,
                "output_usd_per_mtok": 1.6,
            },
        },
        "transcription": {"upstream": "up-openai"},
        **extra,
    }


@pytest.fixture
async def world(tmp_path: Path, db_url: str) -> AsyncIterator[World]:
    """The proxy on SQLite and on PostgreSQL."""
    async with start_world(tmp_path, db_url) as w:
        yield w


@contextlib.asynccontextmanager
async def start_world(
    tmp_path: Path,
    url: str,
    *,
    token_cache_seconds: float = 0,
    upstream_url: str | None = None,
    release_heap_when_idle: bool = False,
    **caps: Any,
) -> AsyncIterator[World]:
    """A proxy on loopback in front of the fake providers, with one tenant per plan.

    ``upstream_url`` points both upstreams elsewhere (the fake still runs, unused).
    """
    keys = {"PX_ANTHROPIC_KEY": canaries.anthropic_key(), "PX_OPENAI_KEY": canaries.openai_key()}
    fake = await FakeLLMServer(valid_keys=set(keys.values())).__aenter__()
    db = await open_db(url)
    for tenant, plan in (
        ("t-managed", "managed"),
        ("t-other", "managed"),
        ("t-pro", "pro"),
        ("t-byok", "byok"),
    ):
        await add_tenant(db, tenant, plan)
    await add_tenant(db, "t-suspended", "managed", status="suspended")
    clock = ManualClock(START)
    sink = RecordingAlertSink()
    plans = catalog(**caps)
    table = proxy_table(fake)
    if upstream_url is not None:
        table["upstreams"]["up-anthropic"]["base_url"] = upstream_url
        table["upstreams"]["up-openai"]["base_url"] = upstream_url + "/v1"
    settings = parse_proxy(table, source="test.toml", plans=plans)
    budget = Budget(db, plans, clock, sink=sink)
    tokens = ProxyTokens(db, clock, cache_seconds=token_cache_seconds)
    server = ProxyServer(
        settings,
        db,
        plans=plans,
        env=keys,
        clock=clock,
        budget=budget,
        tokens=tokens,
        release_heap_when_idle=release_heap_when_idle,
    )
    await server.start("127.0.0.1", 0)
    # The race tests open 200 requests at once on a loaded machine: no pool cap to queue
    # behind, and time enough for the slowest (a test failure should be about the cap).
    http = httpx.AsyncClient(
        trust_env=False, timeout=60.0, limits=httpx.Limits(max_connections=None)
    )
    world = World(fake, db, server, clock, sink, http, tokens, keys)
    try:
        yield world
    finally:
        await http.aclose()
        await server.stop()
        await world.fake.__aexit__(None, None, None)
        await db.dispose()


def anthropic_body(
    model: str = "claude-curated", *, stream: bool = False, text: str = "hello there"
) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 50,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    }


def openai_body(
    model: str = "gpt-curated", *, stream: bool = False, **extra: Any
) -> dict[str, Any]:
    return {
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello there"}],
        **extra,
    }


async def post_anthropic(w: World, token: str, body: dict[str, Any]) -> httpx.Response:
    return await w.http.post(
        f"{w.url}/v1/messages",
        json=body,
        headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
    )


async def post_openai(w: World, token: str, body: dict[str, Any]) -> httpx.Response:
    return await w.http.post(
        f"{w.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
    )


async def collect(
    w: World, kind: str, token: str, model: str, text: str = "hello there"
) -> list[object]:
    base = w.url if kind == "anthropic" else f"{w.url}/v1"
    client = make_client(kind, base, Secret(token), http=w.http)
    return [
        item
        async for item in client.stream(
            [ChatMessage("user", text)], model=model, system="", max_tokens=64
        )
    ]


# --- both APIs, streaming and not, metered ------------------------------------------------------


async def test_anthropic_streaming_through_the_agents_own_client(world: World) -> None:
    token = await world.token()
    items = await collect(world, "anthropic", token, "claude-curated")
    assert items == [TextDelta("echo: "), TextDelta("hello "), TextDelta("there"), Usage(2, 3)]
    upstream = world.fake.requests[-1]
    assert (upstream.kind, upstream.key, upstream.body["model"]) == (
        "anthropic",
        world.platform_keys["PX_ANTHROPIC_KEY"],
        "model-large",
    )
    s = await world.settled()
    # 2 input tokens at $3/M and 3 output tokens at $15/M = 51 micro-dollars.
    assert (s.spent.tokens, s.spent.usd, s.tokens_reserved) == (5, 0.000051, 0)


async def test_openai_streaming_through_the_agents_own_client(world: World) -> None:
    token = await world.token()
    items = await collect(world, "openai-compatible", token, "gpt-curated")
    assert items == [TextDelta("echo: "), TextDelta("hello "), TextDelta("there"), Usage(2, 3)]
    upstream = world.fake.requests[-1]
    assert (upstream.key, upstream.body["model"]) == (
        world.platform_keys["PX_OPENAI_KEY"],
        "model-small",
    )
    s = await world.settled()
    assert (s.spent.tokens, s.spent.usd) == (5, 0.000006)  # ceil(0.8 + 4.8) micro-dollars


async def test_openai_stream_without_include_usage_gets_no_usage_chunk(world: World) -> None:
    token = await world.token()
    async with world.http.stream(
        "POST",
        f"{world.url}/v1/chat/completions",
        json=openai_body(stream=True),
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        assert (r.status_code, r.headers["content-type"]) == (200, "text/event-stream")
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    datas = [line.removeprefix("data: ") for line in lines]
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == [
        "",
        "echo: ",
        "hello ",
        "there",
        None,
    ]
    assert all("usage" not in c for c in chunks)
    sent = world.fake.requests[-1].body
    # The proxy asks for usage and bounds the output it reserved for.
    assert (sent["stream"], sent["stream_options"], sent["max_tokens"]) == (
        True,
        {"include_usage": True},
        1000,
    )
    assert (await world.settled()).spent.tokens == 5


async def test_anthropic_non_streaming_request_is_forwarded_as_such(world: World) -> None:
    """Not streamed upstream, metered from the JSON reply's usage, its bytes passed on."""
    token = await world.token()
    r = await post_anthropic(world, token, anthropic_body())
    assert r.status_code == 200
    assert r.json() == {
        "id": "msg_1",
        "model": "model-large",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "echo: hello there"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 2, "output_tokens": 3},
    }
    assert world.fake.requests[-1].body["stream"] is False
    assert (await world.settled()).spent.tokens == 5


async def test_openai_non_streaming_request_is_forwarded_as_such(world: World) -> None:
    token = await world.token()
    r = await post_openai(world, token, openai_body(max_tokens=20))
    assert r.status_code == 200
    assert r.json() == {
        "object": "chat.completion",
        "model": "model-small",
        "id": "c1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "echo: hello there"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
    }
    sent = world.fake.requests[-1].body
    assert (sent["max_tokens"], sent["stream"], "stream_options" in sent) == (20, False, False)
    assert (await world.settled()).spent.tokens == 5


async def test_usage_accumulates_per_tenant(world: World) -> None:
    a, b = await world.token("t-managed"), await world.token("t-other")
    for _ in range(3):
        await collect(world, "anthropic", a, "claude-curated")
    await collect(world, "openai-compatible", b, "gpt-curated", text="one two three four")
    assert (await world.settled("t-managed")).spent.tokens == 15
    assert (await world.settled("t-other")).spent.tokens == 4 + 5
    totals = await world.server.budget.totals()
    assert (totals.tenants, totals.tokens, totals.open_reservations) == (2, 24, 0)


# --- the curated catalog ------------------------------------------------------------------------


async def test_a_plan_a_token_cannot_use_a_plan_b_only_model(world: World) -> None:
    managed, pro = await world.token("t-managed"), await world.token("t-pro")
    r = await post_anthropic(world, managed, anthropic_body("claude-pro-only"))
    assert (r.status_code, r.json()) == (
        404,
        {
            "type": "error",
            "error": {
                "type": "model_not_in_plan",
                "message": "model 'claude-pro-only' is not in your plan; available: claude-curated, gpt-curated",
            },
        },
    )
    with pytest.raises(ModelNotFound) as err:
        await collect(world, "anthropic", managed, "claude-pro-only")
    assert (err.value.code, err.value.status, str(err.value)) == (
        "model_not_in_plan",
        404,
        "anthropic: HTTP 404 (model_not_in_plan)",
    )
    assert world.fake.requests == []
    items = await collect(world, "anthropic", pro, "claude-pro-only")
    assert items[-1] == Usage(2, 3)
    assert world.fake.requests[-1].body["model"] == "claude-pro-only"


async def test_model_not_in_plan_in_the_openai_format(world: World) -> None:
    pro = await world.token("t-pro")
    r = await post_openai(world, pro, openai_body("gpt-curated"))
    assert (r.status_code, r.json()["error"]["type"], r.json()["error"]["code"]) == (
        404,
        "invalid_request_error",
        "model_not_in_plan",
    )
    assert isinstance(classify("openai-compatible", r), ModelNotFound)
    r = await post_openai(world, pro, openai_body("no-such-model"))
    assert r.status_code == 404
    assert world.fake.requests == []


async def test_a_model_on_the_other_api_is_a_clear_400(world: World) -> None:
    token = await world.token()
    r = await post_anthropic(world, token, anthropic_body("gpt-curated"))
    assert (r.status_code, r.json()["error"]) == (
        400,
        {
            "type": "invalid_request_error",
            "message": "model 'gpt-curated' is served on /v1/chat/completions",
        },
    )
    assert (await world.summary()).tokens_reserved == 0


# --- tokens -------------------------------------------------------------------------------------


async def test_revoked_token_gets_401(world: World) -> None:
    token = await world.token()
    assert (await post_anthropic(world, token, anthropic_body())).status_code == 200
    assert await world.tokens.revoke_all("t-managed", actor="console:local") == 1
    r = await post_anthropic(world, token, anthropic_body())
    assert (r.status_code, r.json()["error"]["type"]) == (401, "authentication_error")
    with pytest.raises(InvalidKey):
        await collect(world, "anthropic", token, "claude-curated")
    r = await post_openai(world, token, openai_body())
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_api_key")
    assert len(world.fake.requests) == 1


async def test_missing_unknown_and_malformed_tokens_get_401(world: World) -> None:
    for headers in (
        {},
        {"x-api-key": canaries.byok_token()},
        {"x-api-key": "byok-short"},
        {"Authorization": "Bearer " + canaries.byok_token()},
        {"Authorization": "Basic Zm9vOmJhcg=="},
    ):
        r = await world.http.post(
            f"{world.url}/v1/messages", json=anthropic_body(), headers=headers
        )
        assert r.status_code == 401
    assert world.fake.requests == []


async def test_rotation_keeps_the_newest_tokens_working(world: World) -> None:
    tokens = [await world.token() for _ in range(4)]
    codes = [(await post_anthropic(world, t, anthropic_body())).status_code for t in tokens]
    assert codes == [401, 200, 200, 200]


async def test_suspended_and_byok_tenants_are_refused(world: World) -> None:
    suspended = await world.token("t-suspended")
    r = await post_anthropic(world, suspended, anthropic_body())
    assert r.status_code == 401
    byok = await world.token("t-byok")
    r = await post_anthropic(world, byok, anthropic_body())
    assert (r.status_code, r.json()["error"]["type"]) == (403, "permission_error")
    assert world.fake.requests == []


# --- caps ---------------------------------------------------------------------------------------


async def test_cap_reached_is_402_and_tells_when_it_resets(tmp_path: Path) -> None:
    async with start_world(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'c.db'}", token_cap=2_000
    ) as w:
        token = await w.token()
        await spend_directly(w, 1_500)
        r = await post_anthropic(w, token, anthropic_body())  # ~70 input + 50 output: fits
        assert r.status_code == 200
        r = await post_openai(w, token, openai_body())  # + 1000 default max_tokens: does not
        assert (r.status_code, r.json()["error"]) == (
            402,
            {
                "message": "monthly usage cap reached (tokens); it resets on 2026-04-01",
                "type": "insufficient_quota",
                "param": None,
                "code": "usage_cap_reached",
            },
        )
        await spend_directly(w, 400)
        with pytest.raises(OutOfCredit) as err:
            await collect(w, "openai-compatible", token, "gpt-curated")
        assert err.value.code == "cap_reached"
        assert [pct for _, pct, _, _ in w.sink.alerts] == [50, 100]
        assert len(w.fake.requests) == 1
        w.clock.advance(22 * 86400)
        assert (await post_openai(w, token, openai_body())).status_code == 200


async def spend_directly(w: World, tokens: int) -> None:
    budget = w.server.budget
    r = await budget.reserve("t-managed", "managed", Cost(tokens, 0))
    await budget.settle(r, Cost(tokens, 0), plan_id="managed")


async def test_requests_per_minute_is_429_with_retry_after(tmp_path: Path) -> None:
    async with start_world(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", rpm=2) as w:
        token = await w.token()
        assert [
            (await post_anthropic(w, token, anthropic_body())).status_code for _ in range(2)
        ] == [200, 200]
        r = await post_anthropic(w, token, anthropic_body())
        assert (r.status_code, r.headers["retry-after"], r.json()["error"]["type"]) == (
            429,
            "30",
            "rate_limit_error",
        )
        with pytest.raises(RateLimited) as err:
            await collect(w, "anthropic", token, "claude-curated")
        assert err.value.retry_after == 30.0


async def test_concurrent_requests_through_the_proxy_never_pass_the_cap(
    tmp_path: Path, db_url: str
) -> None:
    """SECURITY 12 end to end: 200 concurrent requests against a nearly spent cap.

    The upstream holds every admitted request at a gate, so nothing settles (and frees room)
    until all 200 have been admitted or refused: exactly headroom // estimate get through.
    (The upstream may also have seen a few calls the proxy opened early and dropped when their
    reservation lost the race; none of those reached the client.)
    """
    async with start_world(tmp_path, db_url, token_cap=100_000) as w:
        token = await w.token()
        await spend_directly(w, 100_000 - 1_000)
        raw = json.dumps(anthropic_body()).encode()
        estimate = 50 + -(-len(raw) // 2)  # max_tokens + body bytes / estimate_bytes_per_token
        expected = 1_000 // estimate
        assert expected >= 3
        w.fake.gate = asyncio.Event()

        async def one() -> int:
            r = await w.http.post(f"{w.url}/v1/messages", content=raw, headers={"x-api-key": token})
            return r.status_code

        tasks = [asyncio.create_task(one()) for _ in range(200)]
        for _ in range(1000):
            if sum(t.done() for t in tasks) == 200 - expected:
                break
            await asyncio.sleep(0.01)
        held = await w.summary()
        assert (held.spent.tokens, held.tokens_reserved) == (99_000, expected * estimate)
        w.fake.gate.set()
        codes = await asyncio.gather(*tasks)
        after = await w.settled()
        assert (codes.count(200), codes.count(402)) == (expected, 200 - expected)
        assert after.spent.tokens == 99_000 + 5 * expected
        assert after.spent.tokens <= 100_000


# --- upstream errors, faithfully and without secrets ---------------------------------------------


async def test_upstream_errors_keep_status_and_type_and_release_the_reservation(
    world: World,
) -> None:
    token = await world.token()
    key = world.platform_keys["PX_ANTHROPIC_KEY"]
    world.fake.fail(429, error_type="rate_limit_error", retry_after="7", message=f"slow down {key}")
    r = await post_anthropic(world, token, anthropic_body())
    assert (r.status_code, r.headers["retry-after"], r.json()) == (
        429,
        "7",
        {
            "type": "error",
            "error": {
                "type": "rate_limit_error",
                "message": "upstream provider error (HTTP 429, rate_limit_error)",
            },
        },
    )
    world.fake.fail(529, error_type="overloaded_error")
    with pytest.raises(Overloaded) as err:
        await collect(world, "anthropic", token, "claude-curated")
    assert (err.value.status, str(err.value)) == (529, "anthropic: HTTP 529 (overloaded_error)")
    world.fake.fail(400, error_type="invalid_request_error", message=f"bad {key}")
    r = await post_openai(world, token, openai_body())
    assert (r.status_code, r.json()["error"]["type"], r.json()["error"]["code"]) == (
        400,
        "invalid_request_error",
        "invalid_request_error",
    )
    s = await world.settled()
    assert (s.spent.tokens, s.tokens_reserved) == (0, 0)


async def test_the_platform_key_refused_upstream_is_the_operators_problem(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = await world.token()
    world.fake.valid_keys = {"someone-else"}
    r = await post_anthropic(world, token, anthropic_body())
    assert (r.status_code, r.json()["error"]) == (
        502,
        {"type": "api_error", "message": "upstream provider refused the platform's key"},
    )
    assert (
        "upstream up-anthropic refused the platform key (HTTP 401); check PX_ANTHROPIC_KEY"
        in caplog.text
    )


async def test_an_error_inside_the_stream_is_passed_on_and_partial_use_is_charged(
    world: World,
) -> None:
    token = await world.token()
    world.fake.fail(
        mode="stream_error",
        error_type="overloaded_error",
        message="x " + world.platform_keys["PX_ANTHROPIC_KEY"],
    )
    with pytest.raises(Overloaded) as err:
        await collect(world, "anthropic", token, "claude-curated")
    assert str(err.value) == "anthropic: stream error (overloaded_error)"
    # message_start reported 2 input tokens and 1 output token before the error.
    assert (await world.settled()).spent.tokens == 3
    world.fake.fail(mode="stream_error", error_type="server_error")
    r = await post_openai(world, token, openai_body())
    assert (r.status_code, r.json()["error"]["type"]) == (500, "server_error")
    assert (await world.settled()).spent.tokens == 3


async def test_unreachable_upstream_is_502_and_releases(tmp_path: Path) -> None:
    async with start_world(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'u.db'}") as w:
        token = await w.token()
        await w.fake.__aexit__(None, None, None)
        w.fake = await FakeLLMServer().__aenter__()  # a new port; the old one is closed
        r = await post_anthropic(w, token, anthropic_body())
        assert (r.status_code, r.json()["error"]["type"]) == (502, "api_error")
        s = await w.settled()
        assert (s.spent.tokens, s.tokens_reserved) == (0, 0)


async def test_a_client_leaving_mid_stream_settles_what_was_used(world: World) -> None:
    token = await world.token()
    world.fake.gate = asyncio.Event()
    async with world.http.stream(
        "POST",
        f"{world.url}/v1/messages",
        json=anthropic_body(stream=True),
        headers={"x-api-key": token},
    ) as r:
        async for line in r.aiter_lines():
            if "text_delta" in line:
                break
    world.fake.gate.set()
    s = await world.settled()
    # message_start said 2 in, 1 out and a delta was seen, so at least 3 are charged; how many
    # more deltas pass before the kernel reports the closed socket is up to the OS (at most the
    # whole reply, 5). Either way the reservation (50 + body estimate) is settled, not kept.
    assert s.tokens_reserved == 0
    assert s.spent.tokens in (3, 4, 5)


async def test_oversized_and_malformed_bodies(tmp_path: Path) -> None:
    async with start_world(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'o.db'}") as w:
        token = await w.token()
        big = anthropic_body(text="x" * 5_000_000)
        r = await post_anthropic(w, token, big)
        assert (r.status_code, r.json()["error"]["type"]) == (413, "request_too_large")
        r = await w.http.post(
            f"{w.url}/v1/messages", content=b"{nope", headers={"x-api-key": token}
        )
        assert (r.status_code, r.json()["error"]["type"]) == (400, "invalid_request_error")
        r = await post_anthropic(w, token, {"messages": []})
        assert r.status_code == 400
        assert (await w.summary()).tokens_reserved == 0


async def test_the_tenant_never_sees_the_platform_key(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Canary: the platform keys never appear in any response, header or log line."""
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.INFO)
    token = await world.token()
    seen: list[str] = []

    def keep(r: httpx.Response) -> None:
        seen.append(f"{r.status_code} {dict(r.headers)} {r.text}")

    keep(await post_anthropic(world, token, anthropic_body()))
    keep(await post_openai(world, token, openai_body()))
    keep(await post_openai(world, token, openai_body(stream=True)))
    for status, etype in ((429, "rate_limit_error"), (500, "api_error"), (402, "billing_error")):
        world.fake.fail(
            status, error_type=etype, message="echo " + world.platform_keys["PX_ANTHROPIC_KEY"]
        )
        keep(await post_anthropic(world, token, anthropic_body(stream=True)))
    world.fake.fail(mode="stream_error", message="echo " + world.platform_keys["PX_OPENAI_KEY"])
    keep(await post_openai(world, token, openai_body(stream=True)))
    world.fake.valid_keys = set()  # the fake's 401 echoes the first 12 characters of the key
    keep(await post_anthropic(world, token, anthropic_body()))
    keep(await post_openai(world, token, openai_body()))
    everything = "\n".join(seen) + "\n" + caplog.text
    for key in world.platform_keys.values():
        assert key not in everything
        assert key[8:30] not in everything
        assert key[:16] not in everything
    assert token not in caplog.text
    if world.db.is_sqlite:  # and the database holds neither the keys nor the token itself
        path = Path(world.db.url.removeprefix("sqlite+aiosqlite:///"))
        stored = b"".join(
            p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists()
        )
        assert len(stored) > 0
        for secret in (*world.platform_keys.values(), token):
            assert secret.encode() not in stored
    assert [r.key for r in world.fake.requests if r.kind == "anthropic"] == [
        world.platform_keys["PX_ANTHROPIC_KEY"]
    ] * 5


def test_llm_errors_for_the_proxys_own_refusals() -> None:
    """What ``core.llm`` makes of each refusal (the lead's texts key on these codes)."""
    cases = {
        401: ("authentication_error", InvalidKey),
        402: ("usage_cap_reached", UsageCapReached),
        404: ("model_not_in_plan", ModelNotInPlan),
        429: ("rate_limit_error", RateLimited),
    }
    for status, (etype, cls) in cases.items():
        for kind, api in (("anthropic", "anthropic"), ("openai-compatible", "openai-compatible")):
            r = httpx.Response(status, json=error_body(api, etype, "m"))
            err: LLMError = classify(kind, r)
            assert type(err) is cls
            assert isinstance(err, (InvalidKey, OutOfCredit, ModelNotFound, RateLimited))


async def test_an_upstream_call_opened_early_is_dropped_when_the_reservation_fails(
    world: World,
) -> None:
    """The proxy may open the upstream call while reserving; a refusal still reaches the client."""
    token = await world.token()
    assert (await post_anthropic(world, token, anthropic_body())).status_code == 200
    await world.settled()
    assert world.server.budget.likely_admits("t-managed", "managed", Cost(200, 0)) is True
    # Another proxy process spends the rest of the month meanwhile.
    other = Budget(world.db, catalog(), world.clock)
    r = await other.reserve("t-managed", "managed", Cost(1_000_000 - 5 - 100, 0))
    await other.settle(r, Cost(1_000_000 - 5 - 100, 0), plan_id="managed")
    r = await post_anthropic(world, token, anthropic_body())
    assert (r.status_code, r.json()["error"]["type"]) == (402, "usage_cap_reached")
    s = await world.settled()
    assert (s.spent.tokens, s.tokens_reserved) == (1_000_000 - 100, 0)


async def test_jobs_release_orphans_and_serve_forever_stops_cleanly(tmp_path: Path) -> None:
    async with start_world(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'j.db'}") as w:
        await w.server.budget.reserve("t-managed", "managed", Cost(500, 0))  # then "crash"
        w.clock.advance(3600)
        await w.server.run_jobs()
        assert (await w.summary()).tokens_reserved == 0
        settings = parse_proxy(proxy_table(w.fake), source="test.toml", plans=catalog())
        busy = ProxyServer(
            dataclasses.replace(settings, port=w.server.port or 0),
            w.db,
            plans=catalog(),
            env=w.platform_keys,
            clock=w.clock,
        )
        with pytest.raises(OSError, match="address already in use"):
            await busy.serve_forever()
        standalone = ProxyServer(
            dataclasses.replace(settings, port=0),
            w.db,
            plans=catalog(),
            env=w.platform_keys,
            clock=w.clock,
        )
        task = asyncio.create_task(standalone.serve_forever())
        for _ in range(500):
            if standalone.port is not None:
                break
            await asyncio.sleep(0.01)
        token = await w.token()
        r = await w.http.post(
            f"http://127.0.0.1:{standalone.port}/v1/messages",
            json=anthropic_body(),
            headers={"x-api-key": token},
        )
        assert r.status_code == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (standalone._runner, standalone._http, standalone._upstream) == (None, None, None)


@pytest.fixture
async def own_process(tmp_path: Path, db_url: str) -> AsyncIterator[World]:
    """The proxy as ``byokbot proxy`` runs it, owning its process: it gives back its heap."""
    async with start_world(tmp_path, db_url, release_heap_when_idle=True) as w:
        yield w


async def test_the_heap_is_given_back_once_after_a_quiet_second_never_mid_request(
    own_process: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import heap

    world = own_process
    released: list[float] = []
    monkeypatch.setattr(heap, "release", lambda: released.append(asyncio.get_running_loop().time()))
    await asyncio.sleep(1.5)
    assert released == [], "an idle proxy that served nothing has nothing to give back"
    token = await world.token()
    world.fake.chunk_delay = 0.6  # one reply streams for about three seconds
    loop = asyncio.get_running_loop()
    started = loop.time()
    await collect(world, "anthropic", token, "claude-curated")
    ended = loop.time()
    assert ended - started > 2.0
    assert released == [], "the heap was trimmed while a request was in flight"
    # The handler ends when the upstream closes (after the client saw the last event), then
    # a quiet second, then the next look: well inside ten seconds on a loaded machine.
    for _ in range(100):
        if released:
            break
        await asyncio.sleep(0.1)
    assert len(released) == 1 and released[0] >= ended + 0.9
    await asyncio.sleep(1.5)
    assert len(released) == 1, "nothing was served since: no second trim"


async def test_the_proxy_inside_the_bot_leaves_the_heap_to_the_bot(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import heap

    released: list[str] = []
    monkeypatch.setattr(heap, "release", lambda: released.append("trim"))
    await collect(world, "anthropic", await world.token(), "claude-curated")
    await asyncio.sleep(2.0)
    assert released == []
