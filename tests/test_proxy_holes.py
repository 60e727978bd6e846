"""Issue 12, metering proxy: caps bypass, redirects, bad bodies, revocation lag.

Each test here failed before the fix (see the report on the branch ``proxy-holes``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.llm import BadResponse, ChatMessage, make_client, new_http_client
from core.proxy_tokens import ProxyTokens
from core.secret import Secret
from tests import canaries
from tests.fakes.redirect_server import RecordingOrigin, RedirectingUpstream
from tests.test_proxy_server import (
    World,
    anthropic_body,
    catalog,
    openai_body,
    post_anthropic,
    post_openai,
    spend_directly,
    start_world,
)

ROOT = Path(__file__).resolve().parents[1]


def sqlite(tmp_path: Path, name: str) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / name}"


@pytest.fixture
async def world(tmp_path: Path, db_url: str) -> AsyncIterator[World]:
    """The proxy on SQLite and on PostgreSQL."""
    async with start_world(tmp_path, db_url) as w:
        yield w


# --- 1. caps bypass -------------------------------------------------------------------------------


async def test_the_reservation_covers_every_output_bound_times_n(tmp_path: Path) -> None:
    async with start_world(tmp_path, sqlite(tmp_path, "n.db")) as w:
        token = await w.token()
        w.fake.gate = asyncio.Event()
        body = openai_body(max_tokens=1, max_completion_tokens=300, n=8)
        raw = json.dumps(body).encode()
        task = asyncio.create_task(
            w.http.post(
                f"{w.url}/v1/chat/completions",
                content=raw,
                headers={"Authorization": f"Bearer {token}"},
            )
        )
        await asyncio.wait_for(w.fake.mid_stream.wait(), 5)
        held = await w.summary()
        assert held.tokens_reserved == math.ceil(len(raw) / 2) + 300 * 8
        w.fake.gate.set()
        assert (await task).status_code == 200
        assert w.fake.requests[-1].body["n"] == 8


@pytest.mark.parametrize(
    ("api", "extra", "headers", "message"),
    [
        (
            "anthropic",
            {"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 99}]},
            {},
            "tools.0.type: 'web_search_20250305' is not available on the managed plan",
        ),
        (
            "anthropic",
            {"mcp_servers": [{"type": "url", "url": "https://example.com", "name": "x"}]},
            {},
            "mcp_servers: not supported",
        ),
        ("anthropic", {"service_tier": "auto"}, {}, "service_tier: not supported"),
        ("anthropic", {}, {"anthropic-beta": "context-1m-2025-08-07"}, "anthropic-beta: beta"),
        ("anthropic", {}, {"anthropic-version": "2099-01-01"}, "anthropic-version: must be"),
        ("openai", {"web_search_options": {}}, {}, "web_search_options: not supported"),
        ("openai", {"max_output_tokens": 10}, {}, "max_output_tokens: not supported"),
        ("openai", {"modalities": ["text", "audio"]}, {}, "modalities: not supported"),
        ("openai", {"store": True}, {}, "store: not supported"),
        (
            "openai",
            {"tools": [{"type": "web_search_preview"}]},
            {},
            "tools.0.type: 'web_search_preview' is not available",
        ),
        ("openai", {"n": 500}, {}, "n: must be an integer from 1 to 128"),
    ],
)
async def test_what_token_metering_cannot_see_is_refused_before_reserving(
    tmp_path: Path, api: str, extra: dict[str, Any], headers: dict[str, str], message: str
) -> None:
    async with start_world(tmp_path, sqlite(tmp_path, "a.db")) as w:
        token = await w.token()
        if api == "anthropic":
            r = await w.http.post(
                f"{w.url}/v1/messages",
                json={**anthropic_body(), **extra},
                headers={"x-api-key": token, **headers},
            )
            assert r.json()["error"]["type"] == "invalid_request_error"
        else:
            r = await post_openai(w, token, openai_body(**extra))
            assert r.json()["error"]["type"] == "invalid_request_error"
        assert r.status_code == 400
        assert r.json()["error"]["message"].startswith(message)
        assert w.fake.requests == []
        assert (await w.summary()).tokens_reserved == 0


async def test_client_tools_and_known_fields_still_pass(world: World) -> None:
    token = await world.token()
    tool = {"name": "get_time", "description": "d", "input_schema": {"type": "object"}}
    r = await post_anthropic(
        world,
        token,
        {**anthropic_body(), "tools": [tool], "temperature": 0.2, "stop_sequences": ["x"]},
    )
    assert r.status_code == 200
    fn = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    r = await post_openai(
        world, token, openai_body(tools=[fn], seed=1, stop=None, max_completion_tokens=20)
    )
    assert r.status_code == 200
    assert "stop" not in world.fake.requests[-1].body  # null is absent


async def test_race_with_n_and_max_completion_tokens_never_passes_the_cap(
    tmp_path: Path, db_url: str
) -> None:
    """Overshoot ≤ one reservation, with the fields that used to slip past the estimate.

    The fake bills the largest output each request allows (a model that talks until cut off),
    so a request reserved for ``max_tokens`` alone would overshoot by ``n * 40``.
    """
    async with start_world(tmp_path, db_url, token_cap=100_000) as w:
        w.fake.greedy = True
        token = await w.token()
        await spend_directly(w, 100_000 - 1_000)
        raw = json.dumps(openai_body(max_tokens=1, max_completion_tokens=40, n=2)).encode()
        estimate = math.ceil(len(raw) / 2) + 40 * 2
        expected = 1_000 // estimate
        assert expected >= 3
        w.fake.gate = asyncio.Event()

        async def one() -> int:
            r = await w.http.post(
                f"{w.url}/v1/chat/completions",
                content=raw,
                headers={"Authorization": f"Bearer {token}"},
            )
            return r.status_code

        tasks = [asyncio.create_task(one()) for _ in range(120)]
        for _ in range(1000):
            if sum(t.done() for t in tasks) >= 120 - expected:
                break
            await asyncio.sleep(0.01)
        held = await w.summary()
        assert held.tokens_reserved <= 1_000
        w.fake.gate.set()
        codes = await asyncio.gather(*tasks)
        after = await w.settled()
        assert codes.count(200) == expected
        assert set(codes) == {200, 402}
        assert after.spent.tokens <= 100_000 + estimate  # the promise
        assert after.spent.tokens <= 100_000  # and here, with an honest estimate, none at all


# --- 2. redirects ---------------------------------------------------------------------------------


@pytest.fixture
async def redirect() -> AsyncIterator[tuple[RedirectingUpstream, RecordingOrigin]]:
    origin = RecordingOrigin()
    await origin.start()
    upstream = RedirectingUpstream(origin)
    await upstream.start()
    try:
        yield upstream, origin
    finally:
        await upstream.stop()
        await origin.stop()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_the_proxy_never_follows_an_upstream_redirect(
    tmp_path: Path, redirect: tuple[RedirectingUpstream, RecordingOrigin], status: int
) -> None:
    upstream, origin = redirect
    upstream.status = status
    async with start_world(tmp_path, sqlite(tmp_path, "r.db"), upstream_url=upstream.url) as w:
        token = await w.token()
        r = await post_anthropic(w, token, anthropic_body())
        assert (r.status_code, r.json()) == (
            502,
            {
                "type": "error",
                "error": {
                    "type": "api_error",
                    "message": "upstream provider answered with a redirect (not followed)",
                },
            },
        )
        r = await post_openai(w, token, openai_body(stream=True))
        assert (r.status_code, r.json()["error"]["type"]) == (502, "server_error")
        assert upstream.hits == 2
        assert origin.requests == []
        s = await w.settled()
        assert (s.spent.tokens, s.tokens_reserved) == (0, 0)


@pytest.mark.parametrize("kind", ["anthropic", "openai-compatible"])
async def test_the_agents_own_client_never_follows_a_redirect(
    redirect: tuple[RedirectingUpstream, RecordingOrigin], kind: str
) -> None:
    upstream, origin = redirect
    key = Secret(canaries.anthropic_key())
    base = upstream.url if kind == "anthropic" else upstream.url + "/v1"
    # Even a client built to follow redirects (the default is not to) must not, with a key.
    for http in (new_http_client(timeout=5), httpx.AsyncClient(follow_redirects=True)):
        async with http:
            client = make_client(kind, base, key, http=http)
            with pytest.raises(BadResponse, match="redirect"):
                async for _ in client.stream(
                    [ChatMessage("user", "hi")], model="m", system="", max_tokens=5
                ):
                    pass
            with pytest.raises(BadResponse, match="redirect"):
                await client.list_models()
    assert upstream.hits == 4
    assert origin.requests == []


# --- 3. bad bodies --------------------------------------------------------------------------------


def _bad_bodies() -> list[tuple[str, bytes, str]]:
    good = anthropic_body()

    def with_(**kw: Any) -> bytes:
        return json.dumps({**good, **kw}).encode()

    return [
        ("deep array", b"[" * 200_000 + b"]" * 200_000, "body: nested more than 64"),
        ("deep object", b'{"a":' * 200_000 + b"1" + b"}" * 200_000, "body: nested more than"),
        ("deep unclosed", b"[" * 200_000, "body: nested more than"),
        (
            "deep in a field",
            with_(metadata={"a": json.loads("[" * 70 + "]" * 70)}),
            "body: nested more than",
        ),
        ("not json", b"{nope", "body: not valid JSON"),
        ("empty", b"", "body: not valid JSON"),
        ("invalid utf-8", b'{"model": "\xff\xfe"}', "body: not valid UTF-8"),
        ("a list", b"[1, 2]", "body: must be a JSON object"),
        ("a string", b'"hello"', "body: must be a JSON object"),
        ("no model", json.dumps({"messages": good["messages"]}).encode(), "model: field req"),
        ("model not a string", with_(model=["claude-curated"]), "model: must be a string"),
        ("no messages", json.dumps({"model": "claude-curated"}).encode(), "messages: field"),
        ("messages not a list", with_(messages="hi"), "messages: must be a non-empty list"),
        ("messages empty", with_(messages=[]), "messages: must be a non-empty list"),
        ("message not an object", with_(messages=["hi"]), "messages.0: must be an object"),
        ("role missing", with_(messages=[{"content": "x"}]), "messages.0: must be an object"),
        ("content a number", with_(messages=[{"role": "user", "content": 5}]), "messages.0.c"),
        ("stream not a bool", with_(stream="yes"), "stream: must be true or false"),
        ("max_tokens negative", with_(max_tokens=-5), "max_tokens: must be an integer from 1"),
        ("max_tokens zero", with_(max_tokens=0), "max_tokens: must be an integer from 1"),
        ("max_tokens huge", with_(max_tokens=10**30), "max_tokens: must be an integer from 1"),
        ("max_tokens a string", with_(max_tokens="50"), "max_tokens: must be an integer"),
        ("max_tokens a bool", with_(max_tokens=True), "max_tokens: must be an integer"),
        ("max_tokens a float", with_(max_tokens=5.5), "max_tokens: must be an integer"),
        ("tools not a list", with_(tools={"name": "x"}), "tools: must be a list"),
        ("tool not an object", with_(tools=["x"]), "tools.0: must be an object"),
        ("temperature a string", with_(temperature="hot"), "temperature: must be a number"),
        ("system a number", with_(system=3), "system: must be a string or a list"),
        ("stop_sequences mixed", with_(stop_sequences=["a", 1]), "stop_sequences: must be"),
        ("unknown field", with_(surprise=1), "surprise: not supported"),
    ]


def _bad_openai_bodies() -> list[tuple[str, bytes, str]]:
    good = openai_body()

    def with_(**kw: Any) -> bytes:
        return json.dumps({**good, **kw}).encode()

    return [
        ("stream_options a list", with_(stream_options=[1]), "stream_options: must be an obj"),
        ("stream_options a string", with_(stream_options="x"), "stream_options: must be"),
        ("include_usage a string", with_(stream_options={"include_usage": "y"}), "stream_opt"),
        ("n zero", with_(n=0), "n: must be an integer from 1"),
        ("n a string", with_(n="8"), "n: must be an integer"),
        ("max_completion_tokens", with_(max_completion_tokens=-1), "max_completion_tokens: "),
        ("tool_choice a number", with_(tool_choice=3), "tool_choice: must be a string or"),
        ("stop a number", with_(stop=3), "stop: must be a list of strings"),
        ("tools without type", with_(tools=[{"function": {}}]), "tools.0.type: 'NoneType'"),
    ]


@pytest.mark.parametrize(
    ("case", "raw", "message"), _bad_bodies(), ids=[c[0] for c in _bad_bodies()]
)
async def test_every_malformed_anthropic_body_is_a_json_400(
    world: World, case: str, raw: bytes, message: str
) -> None:
    token = await world.token()
    r = await world.http.post(f"{world.url}/v1/messages", content=raw, headers={"x-api-key": token})
    assert r.status_code == 400, case
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()
    assert err["type"] == "error"
    assert err["error"]["type"] == "invalid_request_error"
    assert err["error"]["message"].startswith(message), err
    assert world.fake.requests == []


@pytest.mark.parametrize(
    ("case", "raw", "message"), _bad_openai_bodies(), ids=[c[0] for c in _bad_openai_bodies()]
)
async def test_every_malformed_openai_body_is_a_json_400(
    tmp_path: Path, case: str, raw: bytes, message: str
) -> None:
    async with start_world(tmp_path, sqlite(tmp_path, "b.db")) as w:
        token = await w.token()
        r = await w.http.post(
            f"{w.url}/v1/chat/completions",
            content=raw,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 400, case
        err = r.json()["error"]
        assert (err["type"], err["code"]) == ("invalid_request_error", None)
        assert err["message"].startswith(message), err
        assert w.fake.requests == []
        assert (await w.summary()).tokens_reserved == 0


def test_depth_is_measured_on_the_bytes_ignoring_brackets_in_strings() -> None:
    from core.proxy import policy

    def nest(depth: int) -> bytes:
        return b"[" * depth + b"]" * depth

    assert not policy.too_deep(nest(64))
    assert policy.too_deep(nest(65))
    assert not policy.too_deep(json.dumps({"a": "[" * 500, "b": '\\"[[[' * 100}).encode())
    assert not policy.too_deep(json.dumps([[[]] * 400] * 10).encode())  # wide, shallow
    alternating = b"".join(b'{"k":[' for _ in range(40)) + b"1" + b"]}" * 40  # depth 80
    assert policy.too_deep(alternating)
    started = time.perf_counter()
    assert policy.too_deep(b"[[]" * 1_300_000)
    assert not policy.too_deep((nest(60) + b",") * 60_000)
    assert time.perf_counter() - started < 2.0  # a 4 MB body costs a scan, not seconds


# --- 4. revocation lag ----------------------------------------------------------------------------


async def test_a_revocation_reaches_a_proxy_in_the_same_process_at_once(tmp_path: Path) -> None:
    async with start_world(tmp_path, sqlite(tmp_path, "s.db"), token_cache_seconds=60) as w:
        token = await w.token()
        assert (await post_anthropic(w, token, anthropic_body())).status_code == 200
        # The bot's own ProxyTokens (another object on the same database) revokes.
        bot_tokens = ProxyTokens(w.db, w.clock, cache_seconds=60)
        assert await bot_tokens.revoke_all("t-managed", actor="console:local") == 1
        r = await post_anthropic(w, token, anthropic_body())
        assert (r.status_code, r.json()["error"]["type"]) == (401, "authentication_error")


async def test_a_pause_reaches_the_proxy_at_once(tmp_path: Path) -> None:
    from core.credentials import Credentials
    from core.plans import PlanCatalog
    from core.tenants import Tenants
    from core.vault import MasterKeyRing, Vault

    async with start_world(tmp_path, sqlite(tmp_path, "p.db"), token_cache_seconds=60) as w:
        token = await w.token()
        assert (await post_anthropic(w, token, anthropic_body())).status_code == 200
        vault = Vault(MasterKeyRing({1: os.urandom(32)}, primary=1))
        tenants = Tenants(w.db, Credentials(w.db, vault, w.clock), PlanCatalog(catalog()), w.clock)
        await tenants.set_paused("t-managed", True, actor="console:local")
        assert (await post_anthropic(w, token, anthropic_body())).status_code == 401


_REVOKE_SCRIPT = """
import asyncio, sys
from core.db import Database
from core.ports import SystemClock
from core.proxy_tokens import ProxyTokens

async def main() -> None:
    db = Database(sys.argv[1])
    try:
        print(await ProxyTokens(db, SystemClock()).revoke_all("t-managed", actor="cli"))
    finally:
        await db.dispose()

asyncio.run(main())
"""


async def test_a_revocation_by_another_process_is_seen_within_a_second(
    tmp_path: Path, db_url: str
) -> None:
    async with start_world(tmp_path, db_url, token_cache_seconds=60) as w:
        token = await w.token()
        assert (await post_anthropic(w, token, anthropic_body())).status_code == 200
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _REVOKE_SCRIPT,
            db_url,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert (proc.returncode, out.strip()) == (0, b"1"), err.decode()
        committed = time.monotonic()
        while True:
            r = await post_anthropic(w, token, anthropic_body())
            if r.status_code == 401:
                break
            assert r.status_code == 200
            assert time.monotonic() - committed < 1.0, "revocation not seen within a second"
            await asyncio.sleep(0.05)
        assert time.monotonic() - committed < 1.0


async def test_the_cache_still_spares_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per request, a cached token costs no query: only the background read touches the DB."""
    async with start_world(tmp_path, sqlite(tmp_path, "c.db"), token_cache_seconds=60) as w:
        token = await w.token()
        assert (await post_anthropic(w, token, anthropic_body())).status_code == 200
        sessions = 0
        real = w.db.session

        def counting() -> Any:
            nonlocal sessions
            sessions += 1
            return real()

        monkeypatch.setattr(w.db, "session", counting)
        before = time.monotonic()
        for _ in range(20):
            assert (await w.tokens.owner(token)) is not None
        elapsed = time.monotonic() - before
        # At most the background reads that fell in this window (one per 0.25 s).
        assert sessions <= 1 + int(elapsed / 0.25)
