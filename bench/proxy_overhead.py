"""Metering proxy overhead: proxy vs direct to the same fake upstream, in the same run.

Three processes, so the proxy's event loop is not shared with the load or the upstream:

* the fake Anthropic upstream (``tests/fakes/llm_server.py``),
* the proxy (``core.proxy.ProxyServer``) on SQLite (or ``--pg URL``),
* this process, the load generator (aiohttp client).

For concurrency 1, 16 and 64 it sends the same streaming ``/v1/messages`` request directly to
the upstream and through the proxy, and reports time to first token (first ``text_delta``)
and total time, p50/p99, the added time (proxy minus direct, per percentile) and throughput.
Then 500 concurrent streams through the proxy (errors counted), then the proxy's RSS after
10,000 requests (``--quick``: fewer requests everywhere; the whole run stays under a minute).

    /work/venv/bin/python bench/proxy_overhead.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLATFORM_KEY = "sk-ant-api03-" + "B3nch" * 18 + "xyz" + "AA"
REPLY = " ".join(f"word{i}" for i in range(40))


# --- child roles ---------------------------------------------------------------------------------


async def run_fake(port_file: str, chunk_ms: float) -> None:
    from tests.fakes.llm_server import FakeLLMServer

    async with FakeLLMServer(
        reply=lambda _m: REPLY, valid_keys={PLATFORM_KEY}, chunk_delay=chunk_ms / 1000
    ) as fake:
        Path(port_file).write_text(str(fake.port))  # noqa: ASYNC240 - once, at start-up
        await asyncio.Event().wait()


async def run_proxy(port_file: str, db_url: str, upstream: str) -> None:
    from core.config import Config, PlanSettings
    from core.db import Database
    from core.proxy import ProxyServer, parse_proxy

    plans = dict(Config().plans)
    plans["managed"] = PlanSettings(
        id="managed",
        name="Managed",
        price_usd=39.0,
        byok=False,
        models=("claude-bench",),
        requests_per_minute=1_000_000,
        monthly_token_cap=10**15,
        monthly_usd_cap=10.0**9,
    )
    settings = parse_proxy(
        {
            "upstreams": {
                "up": {"kind": "anthropic", "base_url": upstream, "key_env": "BENCH_UPSTREAM_KEY"}
            },
            "models": {
                "claude-bench": {
                    "upstream": "up",
                    "upstream_model": "model-large",
                    "input_usd_per_mtok": 3.0,
                    "output_usd_per_mtok": 15.0,
                }
            },
        },
        source="bench",
        plans=plans,
    )
    db = Database(db_url)
    server = ProxyServer(settings, db, plans=plans, env={"BENCH_UPSTREAM_KEY": PLATFORM_KEY})
    port = await server.start("127.0.0.1", 0)
    Path(port_file).write_text(str(port))  # noqa: ASYNC240 - once, at start-up
    profile = os.environ.get("BENCH_PROFILE")
    if not profile:
        await asyncio.Event().wait()
    import cProfile
    import signal

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    prof = cProfile.Profile()
    prof.enable()
    await stop.wait()
    prof.disable()
    prof.dump_stats(profile)
    await server.stop()


# --- load ------------------------------------------------------------------------------------


async def one(session: Any, url: str, headers: dict[str, str], body: bytes) -> tuple[float, float]:
    start = time.perf_counter()
    ttft = 0.0
    async with session.post(url, data=body, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:200]!r}")
        async for chunk in r.content.iter_any():
            if not ttft and b"text_delta" in chunk:
                ttft = time.perf_counter() - start
    return ttft, time.perf_counter() - start


async def stage(
    session: Any,
    url: str,
    headers_for: list[dict[str, str]],
    body: bytes,
    *,
    concurrency: int,
    requests: int,
) -> tuple[list[float], list[float], float, int]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    ttfts: list[float] = []
    totals: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                t, total = await one(session, url, headers_for[i % len(headers_for)], body)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors += 1
                if errors <= 3:
                    print(f"  error: {type(exc).__name__}: {exc}")
                continue
            ttfts.append(t)
            totals.append(total)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ttfts, totals, time.perf_counter() - start, errors


def cpu_seconds(process: Any) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def row(
    concurrency: int, name: str, ttfts: list[float], totals: list[float], elapsed: float, err: int
) -> str:
    return (
        f"{concurrency:>4} {name:>6} {len(totals):>6} {pct(ttfts, 0.5):>9.2f} "
        f"{pct(ttfts, 0.99):>9.2f} {pct(totals, 0.5):>10.2f} {pct(totals, 0.99):>10.2f} "
        f"{len(totals) / elapsed:>8.0f} {err:>4}"
    )


def added(
    concurrency: int, d: tuple[list[float], list[float]], p: tuple[list[float], list[float]]
) -> str:
    def diff(i: int, q: float) -> float:
        return pct(p[i], q) - pct(d[i], q)

    return (
        f"{concurrency:>4}  added: ttft p50 {diff(0, 0.5):+.2f}  p99 {diff(0, 0.99):+.2f}  "
        f"total p50 {diff(1, 0.5):+.2f}  p99 {diff(1, 0.99):+.2f}"
    )


async def wait_port(path: Path, proc: asyncio.subprocess.Process) -> int:
    for _ in range(600):
        text = await asyncio.to_thread(lambda: path.read_text() if path.exists() else "")
        if text:
            return int(text)
        if proc.returncode is not None:
            raise RuntimeError("child exited early")
        await asyncio.sleep(0.05)
    raise RuntimeError("child did not start")


async def main(args: argparse.Namespace) -> None:
    import aiohttp
    import psutil

    from core.config import PlanSettings
    from core.db import Database, upgrade
    from core.db.models import TenantRow
    from core.ports import SystemClock
    from core.proxy_tokens import ProxyTokens

    tmp = Path(tempfile.mkdtemp(prefix="proxybench-"))
    db_url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    pg_name = ""
    if args.pg:
        # A throwaway database beside the one named, never the named one itself.
        import asyncpg

        pg_name = f"proxybench_{os.getpid()}"
        admin = args.pg.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(admin)
        await conn.execute(f'CREATE DATABASE "{pg_name}"')
        await conn.close()
        db_url = f"{args.pg.rpartition('/')[0]}/{pg_name}"
    await upgrade(db_url)
    db = Database(db_url)
    del PlanSettings
    tokens = ProxyTokens(db, SystemClock())
    now = SystemClock().now()
    n_tenants = 64
    async with db.session() as s, s.begin():
        for i in range(n_tenants):
            s.add(
                TenantRow(
                    id=f"bench{i:03d}",
                    plan="managed",
                    status="active",
                    status_reason="",
                    paused=False,
                    persona="",
                    created_at=now,
                    updated_at=now,
                )
            )
    proxy_headers = [
        {
            "x-api-key": (await tokens.issue(f"bench{i:03d}")).reveal(),
            "anthropic-version": "2023-06-01",
        }
        for i in range(n_tenants)
    ]
    await db.dispose()

    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = str(ROOT)
    fake_port_file, proxy_port_file = tmp / "fake.port", tmp / "proxy.port"
    me = str(ROOT / "bench" / "proxy_overhead.py")
    fake = await asyncio.create_subprocess_exec(
        sys.executable,
        me,
        "--role",
        "fake",
        "--port-file",
        str(fake_port_file),
        "--chunk-ms",
        str(args.chunk_ms),
        env=env,
    )
    fake_port = await wait_port(fake_port_file, fake)
    upstream = f"http://127.0.0.1:{fake_port}"
    proxy = await asyncio.create_subprocess_exec(
        sys.executable,
        me,
        "--role",
        "proxy",
        "--port-file",
        str(proxy_port_file),
        "--db",
        db_url,
        "--upstream",
        upstream,
        env=env,
    )
    try:
        proxy_port = await wait_port(proxy_port_file, proxy)
        proxy_ps = psutil.Process(proxy.pid)
        rss_idle = proxy_ps.memory_info().rss / 2**20
        direct_url = f"{upstream}/v1/messages"
        proxy_url = f"http://127.0.0.1:{proxy_port}/v1/messages"
        direct_headers = [{"x-api-key": PLATFORM_KEY, "anthropic-version": "2023-06-01"}]

        def body_for(model: str) -> bytes:
            import json

            return json.dumps(
                {
                    "model": model,
                    "max_tokens": 256,
                    "stream": True,
                    "messages": [{"role": "user", "content": "tell me something " * 20}],
                }
            ).encode()

        direct_body, proxy_body = body_for("model-large"), body_for("claude-bench")
        quick = args.quick
        if quick and args.chunk_ms:
            plan, n500 = [(1, 40), (16, 320), (64, 640)], 500
        elif quick:
            plan, n500 = [(1, 150), (16, 800), (64, 1600)], 500
        else:
            plan, n500 = [(1, 1000), (16, 5000), (64, 10000)], 2000
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            for url, h, b in (
                (direct_url, direct_headers, direct_body),
                (proxy_url, proxy_headers, proxy_body),
            ):
                await stage(session, url, h, b, concurrency=8, requests=100)  # warm-up
            print(
                f"database: {'PostgreSQL' if args.pg else 'SQLite (WAL)'}; reply: 40 words, "
                f"upstream pause {args.chunk_ms} ms between events; {n_tenants} tenants "
                "round-robin; times in ms"
            )
            header = (
                f"{'conc':>4} {'path':>6} {'n':>6} {'ttft p50':>9} {'ttft p99':>9} "
                f"{'total p50':>10} {'total p99':>10} {'req/s':>8} {'err':>4}"
            )
            print(header)
            for concurrency, n in plan:
                results = {}
                for name, url, h, b in (
                    ("direct", direct_url, direct_headers, direct_body),
                    ("proxy", proxy_url, proxy_headers, proxy_body),
                ):
                    cpu_before = cpu_seconds(proxy_ps)
                    ttfts, totals, elapsed, errors = await stage(
                        session, url, h, b, concurrency=concurrency, requests=n
                    )
                    results[name] = (ttfts, totals)
                    print(row(concurrency, name, ttfts, totals, elapsed, errors))
                cpu_us = (cpu_seconds(proxy_ps) - cpu_before) / max(1, len(totals)) * 1e6
                print(added(concurrency, results["direct"], results["proxy"]))
                print(
                    f"{concurrency:>4}  proxy CPU {cpu_us:.0f} us/request (user+sys); "
                    f"RSS {proxy_ps.memory_info().rss / 2**20:.1f} MiB"
                )
            ttfts, totals, elapsed, errors = await stage(
                session,
                proxy_url,
                proxy_headers,
                proxy_body,
                concurrency=500,
                requests=n500,
            )
            print(
                f"500 concurrent streams through the proxy: {len(totals)} ok, {errors} errors, "
                f"ttft p50 {pct(ttfts, 0.5):.1f} p99 {pct(ttfts, 0.99):.1f}, "
                f"{len(totals) / elapsed:.0f} req/s; "
                f"RSS {proxy_ps.memory_info().rss / 2**20:.1f} MiB"
            )
            rss_n = 2000 if quick else 10000
            done = 100 + sum(n for _, n in plan) + n500
            extra = max(0, rss_n - done)
            if extra:
                await stage(
                    session, proxy_url, proxy_headers, proxy_body, concurrency=64, requests=extra
                )
            total_done = done + extra
            rss = proxy_ps.memory_info().rss / 2**20
            print(
                f"proxy RSS after {total_done} requests: {rss:.1f} MiB "
                f"(idle after start: {rss_idle:.1f} MiB)"
            )
    finally:
        for p in (proxy, fake):
            if p.returncode is None:
                p.terminate()
                await p.wait()
        if pg_name:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
            await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests; under a minute")
    parser.add_argument(
        "--pg",
        default="",
        help="a PostgreSQL server URL (postgresql+asyncpg://...); the bench creates and drops"
        " its own database there",
    )
    parser.add_argument(
        "--chunk-ms",
        type=float,
        default=0.0,
        help="upstream pause between stream events (0: the whole reply at once, which makes"
        " every stage throughput-bound; 5: a 40-word reply streams over ~0.25 s)",
    )
    parser.add_argument("--role", choices=("main", "fake", "proxy"), default="main")
    parser.add_argument("--port-file", default="")
    parser.add_argument("--db", default="")
    parser.add_argument("--upstream", default="")
    a = parser.parse_args()
    if a.role == "fake":
        asyncio.run(run_fake(a.port_file, a.chunk_ms))
    elif a.role == "proxy":
        asyncio.run(run_proxy(a.port_file, a.db, a.upstream))
    else:
        asyncio.run(main(a))
