"""Issue 17, the proxy's fast paths: the cap under group commit and non-streaming forwarding,
prompt-cache metering, the idle watchdog, the refresh-ahead single-flight token cache."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import math
import sys
import types
from pathlib import Path
from typing import Any

import httpx
import pytest

import core.proxy_tokens
from core.budget import Budget, Cost
from core.config import PlanSettings
from core.db import Database
from core.ports import SystemClock
from core.proxy import parse_proxy
from core.proxy.config import ModelRoute
from core.proxy_tokens import ProxyTokens
from tests.test_budget import add_tenant, open_db
from tests.test_proxy_server import (
    anthropic_body,
    post_anthropic,
    spend_directly,
    start_world,
)


def sqlite(tmp_path: Path, name: str) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / name}"


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
async def test_200_racing_requests_never_pass_a_small_cap(
    tmp_path: Path, db_url: str, stream: bool
) -> None:
    """Group commit batches the racing reservations; each still checks the cap on its own.

    The upstream holds every admitted request at a gate, so nothing settles (and frees room)
    while the others race; the fake bills the most output each request allows.
    """
    async with start_world(tmp_path, db_url, token_cap=100_000) as w:
        w.fake.greedy = True
        token = await w.token()
        await spend_directly(w, 100_000 - 1_000)
        body = {**anthropic_body(stream=stream), "max_tokens": 40}
        raw = json.dumps(body).encode()
        estimate = math.ceil(len(raw) / 2) + 40
        expected = 1_000 // estimate
        assert expected >= 3
        w.fake.gate = asyncio.Event()

        async def one() -> int:
            r = await w.http.post(
                f"{w.url}/v1/messages",
                content=raw,
                headers={"x-api-key": token, "content-type": "application/json"},
            )
            if r.status_code == 200 and stream:
                assert b"event: message_stop" in r.content
            return r.status_code

        tasks = [asyncio.create_task(one()) for _ in range(200)]
        for _ in range(2000):
            if sum(t.done() for t in tasks) >= 200 - expected:
                break
            await asyncio.sleep(0.01)
        held = await w.summary()
        assert held.tokens_reserved <= 1_000
        w.fake.gate.set()
        codes = await asyncio.gather(*tasks)
        after = await w.settled()
        assert codes.count(200) == expected
        assert set(codes) == {200, 402}
        assert after.spent.tokens <= 100_000


def _small_cap() -> dict[str, PlanSettings]:
    """A managed plan of 1,000 tokens a month."""
    return {
        "managed": PlanSettings(
            id="managed",
            name="Managed",
            price_usd=39.0,
            byok=False,
            models=("m",),
            requests_per_minute=10_000,
            monthly_token_cap=1_000,
        )
    }


async def test_concurrent_reserves_of_one_loop_turn_share_a_transaction(tmp_path: Path) -> None:
    """What group commit must keep: of 50 reserves batched together, only those that fit win."""
    db = await open_db(sqlite(tmp_path, "g.db"))
    await add_tenant(db, "t1")
    budget = Budget(db, _small_cap(), SystemClock())
    first = await budget.reserve("t1", "managed", Cost(100, 0))  # creates the row
    results = await asyncio.gather(
        *(budget.reserve("t1", "managed", Cost(100, 0)) for _ in range(50)),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 9  # 900 left, 100 each
    assert all(type(r).__name__ == "CapReached" for r in results if isinstance(r, BaseException))
    await asyncio.gather(*(budget.settle(r, Cost(50, 0), plan_id="managed") for r in won))
    await budget.settle(first, Cost(50, 0), plan_id="managed")
    summary = await budget.summary("t1", "managed")
    assert (summary.spent.tokens, summary.tokens_reserved) == (500, 0)
    await db.dispose()


async def test_a_reserve_alone_commits_at_once_and_one_with_company_waits_for_the_turn(
    tmp_path: Path,
) -> None:
    """``alone`` (the proxy's only request in flight) commits in the caller's own step; a
    reserve queued beside another one this turn still shares that one's commit."""
    db = await open_db(sqlite(tmp_path, "a.db"))
    await add_tenant(db, "t1")
    budget = Budget(db, _small_cap(), SystemClock())
    first = await budget.reserve("t1", "managed", Cost(100, 0))  # creates the row
    settling = budget.settle_soon(first, Cost(50, 0), plan_id="managed")  # waits for company

    alone = asyncio.ensure_future(budget.reserve("t1", "managed", Cost(100, 0), alone=True))
    await asyncio.sleep(0)  # one turn: its first step ran, and committed
    assert alone.done()
    await asyncio.sleep(0)  # its callback's turn, long before the settle's own 5 ms wait
    assert settling.done()  # the waiting settle went with it

    queued = asyncio.ensure_future(budget.reserve("t1", "managed", Cost(100, 0)))
    joined = asyncio.ensure_future(budget.reserve("t1", "managed", Cost(100, 0), alone=True))
    await asyncio.sleep(0)
    assert not queued.done() and not joined.done()  # one commit, on the next turn
    both = await asyncio.gather(queued, joined)
    summary = await budget.summary("t1", "managed")
    assert (summary.spent.tokens, summary.tokens_reserved) == (50, 300)
    for r in (alone.result(), *both):
        await budget.settle(r, Cost(0, 0), plan_id="managed")
    await db.dispose()


CACHE = {"cache_creation_input_tokens": 1_000, "cache_read_input_tokens": 5_000}


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
async def test_prompt_cache_tokens_are_metered_at_their_prices(
    tmp_path: Path, stream: bool
) -> None:
    async with start_world(tmp_path, sqlite(tmp_path, "c.db")) as w:
        w.fake.cache_usage = dict(CACHE)
        token = await w.token()
        # The catalog's own cache prices; without them cache tokens are priced as input.
        route = w.server.settings.models["claude-curated"]
        priced = dataclasses.replace(
            route, cache_write_usd_per_mtok=3.75, cache_read_usd_per_mtok=0.3
        )
        models = {**w.server.settings.models, "claude-curated": priced}
        w.server.settings = dataclasses.replace(w.server.settings, models=models)
        r = await post_anthropic(w, token, anthropic_body(stream=stream))
        assert r.status_code == 200
        after = await w.settled()
        # 2 input + 3 output words, and the cache's 6,000 tokens.
        assert after.spent.tokens == 2 + 3 + 6_000
        micros = 2 * 3.0 + 3 * 15.0 + 1_000 * 3.75 + 5_000 * 0.3
        assert after.spent.usd == pytest.approx(math.ceil(micros) / 1e6)


async def test_cache_tokens_default_to_the_input_price_and_prices_parse() -> None:
    table: dict[str, Any] = {
        "upstreams": {"u": {"kind": "anthropic", "base_url": "http://x", "key_env": "K"}},
        "models": {
            "a": {"upstream": "u", "input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0},
            "b": {
                "upstream": "u",
                "input_usd_per_mtok": 3.0,
                "output_usd_per_mtok": 15.0,
                "cache_write_usd_per_mtok": 3.75,
                "cache_read_usd_per_mtok": 0.3,
            },
        },
    }
    models = parse_proxy(table, source="t.toml").models
    a, b = models["a"], models["b"]
    assert (a.cache_write_price, a.cache_read_price, a.max_input_usd_per_mtok) == (3.0, 3.0, 3.0)
    assert (b.cache_write_price, b.cache_read_price, b.max_input_usd_per_mtok) == (3.75, 0.3, 3.75)
    table["models"]["b"]["cache_read_usd_per_mtok"] = -1.0
    with pytest.raises(Exception, match="cache_read_usd_per_mtok must not be negative"):
        parse_proxy(table, source="t.toml")
    assert isinstance(a, ModelRoute)


async def test_a_reply_without_usage_is_charged_the_whole_reservation(tmp_path: Path) -> None:
    async with start_world(tmp_path, sqlite(tmp_path, "u.db")) as w:
        token = await w.token()
        w.fake.fail(status=200, mode="malformed")
        raw = json.dumps(anthropic_body()).encode()
        r = await w.http.post(f"{w.url}/v1/messages", content=raw, headers={"x-api-key": token})
        assert (r.status_code, r.json()["error"]["type"]) == (502, "api_error")
        after = await w.settled()
        # The estimate (prompt bytes / 2, plus max_tokens 50), since the provider may bill it.
        assert after.spent.tokens == math.ceil(len(raw) / 2) + 50


async def test_a_stalled_stream_is_cut_by_the_idle_watchdog(tmp_path: Path) -> None:
    async with start_world(tmp_path, sqlite(tmp_path, "w.db")) as w:
        w.server.settings = dataclasses.replace(w.server.settings, upstream_timeout_seconds=1)
        token = await w.token()
        w.fake.fail(mode="stall_mid")
        async with w.http.stream(
            "POST",
            f"{w.url}/v1/messages",
            json=anthropic_body(stream=True),
            headers={"x-api-key": token},
            timeout=httpx.Timeout(30.0),
        ) as r:
            body = b"".join([chunk async for chunk in r.aiter_bytes()])
        assert r.status_code == 200
        assert body.rstrip().endswith(b'"upstream provider error (stream error, api_error)"}}')
        assert b"event: error" in body
        after = await w.settled()
        assert after.spent.tokens > 0  # what the stream showed is billed


async def test_a_request_still_streaming_is_not_cut_while_it_reads(tmp_path: Path) -> None:
    """The watchdog measures idleness, not length: a slow steady stream outlives the timeout."""
    async with start_world(tmp_path, sqlite(tmp_path, "s.db")) as w:
        w.server.settings = dataclasses.replace(w.server.settings, upstream_timeout_seconds=1)
        w.fake.chunk_delay = 0.3  # 8 events, ~2.4 s in all, never 1 s apart
        token = await w.token()
        r = await post_anthropic(w, token, anthropic_body(stream=True))
        assert r.status_code == 200
        assert b"event: message_stop" in r.content
        assert b"event: error" not in r.content


async def test_the_token_cache_refreshes_ahead_in_one_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db: Database = await open_db(sqlite(tmp_path, "t.db"))
    await add_tenant(db, "t1")
    now = [1000.0]
    monkeypatch.setattr(core.proxy_tokens, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    tokens = ProxyTokens(db, SystemClock(), cache_seconds=10, check_seconds=1e9)
    token = (await tokens.issue("t1")).reveal()
    lookups = 0
    real = tokens._lookup

    async def counted(digest: str) -> Any:
        nonlocal lookups
        lookups += 1
        await asyncio.sleep(0.01)  # long enough for every caller to arrive while it runs
        return await real(digest)

    monkeypatch.setattr(tokens, "_lookup", counted)
    owners = await asyncio.gather(*(tokens.owner(token) for _ in range(50)))
    assert {o.tenant_id for o in owners if o is not None} == {"t1"}
    assert lookups == 1  # single flight
    now[0] += 6  # past half the cache's life: served from the cache, refreshed behind
    assert (await tokens.owner(token)) is not None
    await asyncio.sleep(0)  # the refresh starts on the next turn of the loop
    assert lookups == 2
    for _ in range(100):
        if not tokens._flights:
            break
        await asyncio.sleep(0.01)
    now[0] += 6  # past the first entry's expiry, within the refreshed one's
    started = lookups
    assert (await tokens.owner(token)) is not None
    assert lookups == started  # no wait, no miss: the refresh renewed it
    # A revocation still reaches it at once (the refresh does not resurrect it).
    await tokens.revoke_all("t1")
    assert (await tokens.owner(token)) is None
    await db.dispose()


async def test_a_streamed_reply_leaves_no_generator_for_the_loop_to_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay closes its event reader itself: one left to the garbage collector is closed
    by a task the loop is woken for from "another thread" (an eventfd write), per request."""
    left: list[str] = []
    hooks = sys.get_asyncgen_hooks()

    def finalizer(agen: Any) -> None:
        if agen.ag_code.co_filename.endswith(str(Path("core", "proxy", "server.py"))):
            left.append(agen.ag_code.co_name)
        assert hooks.finalizer is not None
        hooks.finalizer(agen)

    sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=finalizer)
    try:
        async with start_world(tmp_path, sqlite(tmp_path, "g.db")) as w:
            token = await w.token()
            for _ in range(5):
                r = await post_anthropic(w, token, anthropic_body(stream=True))
                assert r.status_code == 200 and b"event: message_stop" in r.content
            gc.collect()
    finally:
        sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=hooks.finalizer)
    assert left == []
