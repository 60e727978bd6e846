"""Metering proxy overhead against a bare aiohttp relay on the same stack, in the same run.

Processes, so no event loop is shared between the load and what it measures:

* the fake Anthropic upstream (``tests/fakes/llm_server.py``), streamed or plain JSON,
* the **relay**: a bare aiohttp pass-through (no auth, budget or metering) on the same aiohttp
  server and client stack, the baseline,
* the **proxy** (``core.proxy.ProxyServer``) on SQLite (or ``--pg URL``),
* this process, the load generator (aiohttp client).

Stages: streamed ``/v1/messages`` at 1, 16 and 64 concurrent streams, and non-streaming at
16. Each stage runs in interleaved rounds (direct, relay, proxy; the order alternates per
round), so the load of a shared machine falls on both sides alike; every figure is the median
over rounds. Per stage: CPU per request of the relay's and the proxy's processes, TTFT added
over going direct (p50, p99), req/s, and the ratios proxy/relay. Then 500 concurrent streams
through each (errors counted) and both servers' RSS after 20,000 requests each
(``--quick``: 2,000 and fewer rounds; CI runs it). ``--workers N`` runs N processes of each
server on one port (SO_REUSEPORT); ``--scaling`` adds req/s at 64 streams of 1 vs 2 workers.

    .venv/bin/python bench/proxy_overhead.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import machine  # noqa: E402

PLATFORM_KEY = "sk-ant-api03-" + "B3nch" * 18 + "xyz" + "AA"
REPLY = " ".join(f"word{i}" for i in range(40))


def _loop_runner() -> Any:
    """uvloop when installed (as the proxy itself), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


# --- child roles ---------------------------------------------------------------------------------


async def run_fake(port_file: str, chunk_ms: float) -> None:
    from tests.fakes.llm_server import FakeLLMServer

    async with FakeLLMServer(
        reply=lambda _m: REPLY, valid_keys={PLATFORM_KEY}, chunk_delay=chunk_ms / 1000
    ) as fake:
        Path(port_file).write_text(str(fake.port))  # noqa: ASYNC240 - once, at start-up
        await asyncio.Event().wait()


async def run_relay(port_file: str, port: int, upstream: str) -> None:
    """The baseline: forward the body and stream the reply back, nothing else."""
    import aiohttp
    from aiohttp import web

    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,
    )
    url = f"{upstream}/v1/messages"
    headers = {
        "x-api-key": PLATFORM_KEY,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with http.post(url, data=body, headers=headers) as up:
            if up.headers.get("Content-Type", "").startswith("text/event-stream"):
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                async for chunk in up.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
            return web.Response(
                status=up.status, body=await up.read(), content_type="application/json"
            )

    app = web.Application()
    app.router.add_post("/v1/messages", relay)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_port=True)
    await site.start()
    Path(port_file).write_text(str(port))  # noqa: ASYNC240 - once, at start-up
    await asyncio.Event().wait()


def bench_plans() -> dict[str, Any]:
    from core.config import Config, PlanSettings

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
    return plans


async def run_proxy(port_file: str, port: int, db_url: str, upstream: str) -> None:
    from core.proxy import ProxyServer, parse_proxy

    try:  # as ``byokbot proxy`` opens it: by the driver, without SQLAlchemy
        from core.rawdb import open_raw
    except ImportError:  # a proxy from before core.rawdb

        def open_raw(url: str) -> Any:
            return None

    plans = bench_plans()
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
    db = open_raw(db_url)
    if db is None:
        from core.db import Database

        db = Database(db_url)
    server = ProxyServer(
        settings,
        db,
        plans=plans,
        env={"BENCH_UPSTREAM_KEY": PLATFORM_KEY},
        release_heap_when_idle=True,  # as ``byokbot proxy`` runs it
    )
    try:
        await server.start("127.0.0.1", port, reuse_port=True)  # type: ignore[call-arg]
    except TypeError:  # a proxy from before --workers: one process only
        await server.start("127.0.0.1", port)
    Path(port_file).write_text(str(port))  # noqa: ASYNC240 - once, at start-up
    await asyncio.Event().wait()


# --- load ------------------------------------------------------------------------------------


async def one(session: Any, url: str, headers: dict[str, str], body: bytes) -> tuple[float, float]:
    """(time to first text, total) of one request, in seconds."""
    start = time.perf_counter()
    ttft = 0.0
    async with session.post(url, data=body, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:200]!r}")
        async for chunk in r.content.iter_any():
            if not ttft and (b"text_delta" in chunk or b'"text"' in chunk):
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


def cpu_seconds(processes: list[Any]) -> float:
    total = 0.0
    for p in processes:
        times = p.cpu_times()
        total += float(times.user + times.system)
    return total


def rss_mib(processes: list[Any]) -> float:
    return sum(p.memory_info().rss for p in processes) / 2**20


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def wait_port(path: Path, proc: asyncio.subprocess.Process) -> int:
    for _ in range(600):
        text = await asyncio.to_thread(lambda: path.read_text() if path.exists() else "")
        if text:
            return int(text)
        if proc.returncode is not None:
            raise RuntimeError("child exited early")
        await asyncio.sleep(0.05)
    raise RuntimeError("child did not start")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Side:
    """One server under test (N processes on one port) and its per-round results."""

    def __init__(self, name: str, url: str, headers: list[dict[str, str]], body: dict[bool, bytes]):
        self.name, self.url, self.headers, self.body = name, url, headers, body
        self.procs: list[asyncio.subprocess.Process] = []
        self.ps: list[Any] = []
        self.served = 0

    def body_for(self, stream: bool) -> bytes:
        return self.body[stream]


async def spawn(
    me: str, role: str, tmp: Path, workers: int, env: dict[str, str], *extra: str
) -> tuple[int, list[asyncio.subprocess.Process]]:
    import psutil  # noqa: F401 - checked early: the bench needs it

    port = free_port()
    procs = []
    for i in range(workers):
        port_file = tmp / f"{role}.{port}.{i}.port"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            me,
            "--role",
            role,
            "--port-file",
            str(port_file),
            "--port",
            str(port),
            *extra,
            env=env,
        )
        await wait_port(port_file, proc)
        procs.append(proc)
    return port, procs


async def run_stage(
    session: Any,
    sides: list[Side],
    *,
    stream: bool,
    concurrency: int,
    n: int,
    rounds: int,
) -> dict[str, dict[str, list[float]]]:
    """Interleaved rounds; per side, per round: ttft p50/p99, total p50/p99, req/s, CPU/req."""
    out: dict[str, dict[str, list[float]]] = {
        s.name: {k: [] for k in ("t50", "t99", "tot50", "tot99", "rps", "cpu", "err")}
        for s in sides
    }
    for r in range(rounds):
        order = sides if r % 2 == 0 else [sides[0], *reversed(sides[1:])]
        for side in order:
            before = cpu_seconds(side.ps) if side.ps else 0.0
            ttfts, totals, elapsed, errors = await stage(
                session,
                side.url,
                side.headers,
                side.body_for(stream),
                concurrency=concurrency,
                requests=n,
            )
            side.served += n
            o = out[side.name]
            o["t50"].append(pct(ttfts, 0.5))
            o["t99"].append(pct(ttfts, 0.99))
            o["tot50"].append(pct(totals, 0.5))
            o["tot99"].append(pct(totals, 0.99))
            o["rps"].append(len(totals) / elapsed)
            o["err"].append(errors)
            if side.ps:
                o["cpu"].append((cpu_seconds(side.ps) - before) / max(1, len(totals)) * 1e6)
    return out


def report(label: str, res: dict[str, dict[str, list[float]]], stream: bool) -> list[str]:
    """Lines of the table for one stage, and the ratios proxy/relay."""
    d, rel, pro = res["direct"], res["relay"], res["proxy"]
    # Added TTFT per round (side minus direct in the same round), then the median of rounds.
    t = "t50" if stream else "tot50"
    t99 = "t99" if stream else "tot99"

    def added(side: dict[str, list[float]], key: str) -> float:
        return med([a - b for a, b in zip(side[key], d[key], strict=True)])

    lines = []
    named = [("relay", rel), ("proxy", pro)]
    if "before" in res:
        named.append(("before", res["before"]))
    for name, side in named:
        lines.append(
            f"{label:<14} {name:<6} {med(side['cpu']):>8.0f} {added(side, t):>+9.2f} "
            f"{added(side, t99):>+9.2f} {med(side['rps']):>8.0f} {int(sum(side['err'])):>4}"
        )

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b > 0 else "n/a"

    lines.append(
        f"{label:<14} ratio  {ratio(med(pro['cpu']), med(rel['cpu'])):>8} "
        f"{ratio(added(pro, t), added(rel, t)):>9} {ratio(added(pro, t99), added(rel, t99)):>9} "
        f"{ratio(med(pro['rps']), med(rel['rps'])):>8}"
    )
    if "before" in res:
        b = res["before"]
        lines.append(
            f"{label:<14} p/bef  {ratio(med(pro['cpu']), med(b['cpu'])):>8} "
            f"{ratio(added(pro, t), added(b, t)):>9} {ratio(added(pro, t99), added(b, t99)):>9} "
            f"{ratio(med(pro['rps']), med(b['rps'])):>8}   (this proxy / the --against one)"
        )
    return lines


async def main(args: argparse.Namespace) -> None:
    import aiohttp
    import psutil

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
    me = str(ROOT / "bench" / "proxy_overhead.py")
    fake_port_file = tmp / "fake.port"
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
    children = [fake]
    try:
        fake_port = await wait_port(fake_port_file, fake)
        upstream = f"http://127.0.0.1:{fake_port}"

        def body_for(model: str, stream: bool) -> bytes:
            return json.dumps(
                {
                    "model": model,
                    "max_tokens": 256,
                    "stream": stream,
                    "messages": [{"role": "user", "content": "tell me something " * 20}],
                }
            ).encode()

        direct_headers = [{"x-api-key": PLATFORM_KEY, "anthropic-version": "2023-06-01"}]
        upstream_bodies = {s: body_for("model-large", s) for s in (True, False)}
        proxy_bodies = {s: body_for("claude-bench", s) for s in (True, False)}

        async def start_pair(workers: int) -> tuple[Side, Side]:
            rport, rprocs = await spawn(me, "relay", tmp, workers, env, "--upstream", upstream)
            children.extend(rprocs)
            pport, pprocs = await spawn(
                me, "proxy", tmp, workers, env, "--db", db_url, "--upstream", upstream
            )
            children.extend(pprocs)
            relay = Side(
                "relay", f"http://127.0.0.1:{rport}/v1/messages", direct_headers, upstream_bodies
            )
            proxy = Side(
                "proxy", f"http://127.0.0.1:{pport}/v1/messages", proxy_headers, proxy_bodies
            )
            for side, procs in ((relay, rprocs), (proxy, pprocs)):
                side.procs = procs
                side.ps = [psutil.Process(p.pid) for p in procs]
            return relay, proxy

        relay, proxy = await start_pair(args.workers)
        direct = Side("direct", f"{upstream}/v1/messages", direct_headers, upstream_bodies)
        sides = [direct, relay, proxy]
        if args.against:
            # Another checkout's proxy on the same database, in the same rounds: an A/B of
            # two versions that the machine's drift between runs cannot blur.
            other = Path(args.against)  # made absolute when parsed
            bport, bprocs = await spawn(
                str(other / "bench" / "proxy_overhead.py"),
                "proxy",
                tmp,
                args.workers,
                {**env, "PYTHONPATH": str(other)},
                "--db",
                db_url,
                "--upstream",
                upstream,
            )
            children.extend(bprocs)
            before = Side(
                "before", f"http://127.0.0.1:{bport}/v1/messages", proxy_headers, proxy_bodies
            )
            before.procs, before.ps = bprocs, [psutil.Process(p.pid) for p in bprocs]
            sides.append(before)
        rss_idle = {s.name: rss_mib(s.ps) for s in (relay, proxy)}
        quick = args.quick
        rounds = 2 if quick else 5
        scale = 1 if quick else 5
        stages = [
            ("stream c=1", True, 1, 40 * scale * (1 + 9 * bool(args.only))),
            ("stream c=16", True, 16, 200 * scale),
            ("stream c=64", True, 64, 400 * scale),
            ("json c=16", False, 16, 200 * scale),
        ]
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            for side in sides:  # warm-up: connections, caches, the budget rows
                for stream in (True, False):
                    await stage(
                        session,
                        side.url,
                        side.headers,
                        side.body_for(stream),
                        concurrency=8,
                        requests=100,
                    )
                    side.served += 100
            load = os.getloadavg()
            print(f"machine: {machine()}")
            print(
                f"database: {'PostgreSQL' if args.pg else 'SQLite (WAL)'}; reply: 40 words, "
                f"upstream pause {args.chunk_ms} ms between events; {n_tenants} tenants "
                f"round-robin; {args.workers} worker(s) each; {rounds} interleaved rounds, "
                f"medians; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
            )
            print(
                f"{'stage':<14} {'side':<6} {'CPU us/req':>8} {'TTFT+p50':>9} {'TTFT+p99':>9} "
                f"{'req/s':>8} {'err':>4}   (TTFT added over direct, ms; json: total time)"
            )
            # --only: the stage of that exact label ("stream c=1" is also in "stream c=16"),
            # else every stage whose label contains it.
            chosen = [s for s in stages if s[0] == args.only] or [
                s for s in stages if args.only in s[0]
            ]
            for label, stream, concurrency, n in chosen:
                res = await run_stage(
                    session, sides, stream=stream, concurrency=concurrency, n=n, rounds=rounds
                )
                for line in report(label, res, stream):
                    print(line)
            n500 = 500 if quick else 2000
            for side in (relay, proxy):  # both, so both hold 500 connections' worth of memory
                ttfts, totals, elapsed, errors = await stage(
                    session,
                    side.url,
                    side.headers,
                    side.body_for(True),
                    concurrency=500,
                    requests=n500,
                )
                side.served += n500
                print(
                    f"500 concurrent streams through the {side.name}: {len(totals)} ok, "
                    f"{errors} errors, ttft p50 {pct(ttfts, 0.5):.1f} p99 "
                    f"{pct(ttfts, 0.99):.1f} ms, {len(totals) / elapsed:.0f} req/s"
                )
            target = 2000 if quick else 20000
            for side in (relay, proxy):
                extra = max(0, target - side.served)
                if extra:
                    await stage(
                        session,
                        side.url,
                        side.headers,
                        side.body_for(True),
                        concurrency=64,
                        requests=extra,
                    )
                    side.served += extra
            print(
                f"RSS after {target} requests each: relay {rss_mib(relay.ps):.1f} MiB, "
                f"proxy {rss_mib(proxy.ps):.1f} MiB (idle after start: relay "
                f"{rss_idle['relay']:.1f}, proxy {rss_idle['proxy']:.1f}; "
                f"{args.workers} process(es) each)"
            )
            # Once the load has stopped: what each keeps while idle (the proxy gives a burst's
            # freed heap back after a second without requests).
            await asyncio.sleep(2.0)
            print(
                f"RSS 2 s after the last request: relay {rss_mib(relay.ps):.1f} MiB, "
                f"proxy {rss_mib(proxy.ps):.1f} MiB"
            )
            if args.scaling:
                relay2, proxy2 = await start_pair(2)
                relay2.name, proxy2.name = "relay2", "proxy2"
                scale_sides = [direct, relay, relay2, proxy, proxy2]
                res = await run_stage(
                    session,
                    scale_sides,
                    stream=True,
                    concurrency=64,
                    n=400 if quick else 2000,
                    rounds=rounds,
                )
                print("scaling, 64 streams, req/s (median of rounds) and CPU us/req:")
                for name in ("relay", "relay2", "proxy", "proxy2"):
                    print(
                        f"  {name:<7} {med(res[name]['rps']):>7.0f} req/s "
                        f"{med(res[name]['cpu']):>7.0f} us/req"
                    )
                rps = {name: med(r["rps"]) for name, r in res.items()}
                print(
                    f"  2 workers / 1: relay {rps['relay2'] / rps['relay']:.2f}x, "
                    f"proxy {rps['proxy2'] / rps['proxy']:.2f}x; "
                    f"proxy2/relay2 {rps['proxy2'] / rps['relay2']:.2f}x"
                )
            load = os.getloadavg()
            print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finally:
        for p in children:
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
    parser.add_argument("--workers", type=int, default=1, help="processes per server")
    parser.add_argument(
        "--against",
        metavar="DIR",
        help="also run the proxy of another checkout (e.g. a git worktree of the last "
        "commit) in the same rounds, and print this one's ratios to it",
    )
    parser.add_argument("--scaling", action="store_true", help="also 1 vs 2 workers")
    parser.add_argument(
        "--only",
        default="",
        help="run only the stages whose label contains this (e.g. 'c=1'), for profiling",
    )
    parser.add_argument("--role", choices=("main", "fake", "proxy", "relay"), default="main")
    parser.add_argument("--port-file", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db", default="")
    parser.add_argument("--upstream", default="")
    a = parser.parse_args()
    if a.against:
        a.against = str(Path(a.against).resolve())
    run = _loop_runner() if a.role in ("proxy", "relay") else asyncio.run
    if a.role == "fake":
        asyncio.run(run_fake(a.port_file, a.chunk_ms))
    elif a.role == "proxy":
        run(run_proxy(a.port_file, a.port, a.db, a.upstream))
    elif a.role == "relay":
        run(run_relay(a.port_file, a.port, a.upstream))
    else:
        asyncio.run(main(a))
