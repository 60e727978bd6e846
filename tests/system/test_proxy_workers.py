"""Issue 17 through the real program: ``byokbot proxy --workers 2`` sharing one budget.

The proxy runs as a subprocess with a config written here; the tenant and its token come from
``scripts/managed_tenant.py``. The test sees HTTP answers, what reached the loopback fake, the
budget row in the program's database file, exit codes and output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import ssl
import sys

import aiohttp
import httpx
import pytest

from tests.canaries import anthropic_key
from tests.certs import self_signed
from tests.fakes.llm_server import FakeLLMServer
from tests.system.harness import BotProcess, CanaryScan, Workspace, eventually
from tests.system.managed_support import db_path, query
from tests.system.test_proxy_holes import SCRIPT, free_port

CAP = 12_000
MAX_TOKENS = 400


async def start_proxy(
    ws: Workspace,
    llm: FakeLLMServer,
    canaries: CanaryScan,
    *args: str,
    cap: int = CAP,
    rpm: int = 100_000,
) -> tuple[BotProcess, str, str, str]:
    """(process, url, tenant, token) of ``byokbot proxy <args>`` in front of the fake."""
    key = anthropic_key()
    canaries.add(key)
    llm.valid_keys = {key}
    ws.env["PX_ANTHROPIC"] = key
    port = free_port()
    ws.configure(
        {
            "plans.managed": {
                "name": "Managed",
                "price_usd": 39,
                "byok": False,
                "models": ["claude-sys"],
                "requests_per_minute": rpm,
                "monthly_token_cap": cap,
            },
            "proxy": {"enabled": True, "host": "127.0.0.1", "port": port},
            "proxy.upstreams.up-a": {
                "kind": "anthropic",
                "base_url": llm.anthropic_url,
                "key_env": "PX_ANTHROPIC",
            },
            'proxy.models."claude-sys"': {
                "upstream": "up-a",
                "upstream_model": "model-large",
                "input_usd_per_mtok": 3.0,
                "output_usd_per_mtok": 15.0,
                "cache_write_usd_per_mtok": 3.75,
                "cache_read_usd_per_mtok": 0.3,
            },
        }
    )
    migrated = await ws.cli("db", "upgrade")
    assert migrated.returncode == 0, migrated.output
    made = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "managed",
        "1717",
        cwd=ws.root,
        env=ws.environment(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await made.communicate()
    assert made.returncode == 0, err.decode()
    tenant, token = out.decode().split()
    process = await ws.start("proxy", *args)
    await process.wait_output(r"metering proxy on", within=60)
    return process, f"http://127.0.0.1:{port}", tenant, token


def budget_row(ws: Workspace, tenant: str) -> tuple[int, int, int]:
    rows = query(
        ws,
        "SELECT tokens_spent, tokens_reserved, usd_micros_spent FROM budgets WHERE tenant_id = ?",
        tenant,
    )
    return rows[0] if rows else (0, 0, 0)


async def test_two_workers_share_one_budget_and_200_racing_requests_keep_the_cap(
    ws: Workspace, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    llm.greedy = True  # every admitted request bills all the output it allows
    process, url, tenant, token = await start_proxy(ws, llm, canaries, "--workers", "2")
    assert "metering proxy worker 0 on" in process.stdout()
    assert "metering proxy worker 1 on" in process.stdout()
    assert len(process.children()) >= 2

    def body(stream: bool) -> bytes:
        return json.dumps(
            {
                "model": "claude-sys",
                "max_tokens": MAX_TOKENS,
                "stream": stream,
                "messages": [{"role": "user", "content": "hello"}],
            }
        ).encode()

    async with httpx.AsyncClient(
        trust_env=False, timeout=60, limits=httpx.Limits(max_connections=200)
    ) as http:

        async def one(i: int) -> int:
            r = await http.post(
                f"{url}/v1/messages",
                content=body(i % 2 == 0),
                headers={"x-api-key": token, "content-type": "application/json"},
            )
            return r.status_code

        codes = await asyncio.gather(*(one(i) for i in range(200)))
    assert set(codes) == {200, 402}, codes
    await eventually(lambda: budget_row(ws, tenant)[1] == 0, within=30)
    spent, _reserved, _ = budget_row(ws, tenant)
    assert spent <= CAP  # the hard cap, across both processes
    # Every admitted request was billed exactly (1 input word, all its output), none lost.
    assert spent == codes.count(200) * (1 + MAX_TOKENS)
    assert codes.count(200) >= CAP // (len(body(True)) // 2 + MAX_TOKENS + 1)
    assert "Traceback" not in process.output()
    assert await process.terminate() == 0


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
async def test_prompt_cache_tokens_are_metered_through_the_proxy(
    ws: Workspace, llm: FakeLLMServer, canaries: CanaryScan, stream: bool
) -> None:
    llm.cache_usage = {"cache_creation_input_tokens": 1_000, "cache_read_input_tokens": 4_000}
    process, url, tenant, token = await start_proxy(ws, llm, canaries)
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        r = await http.post(
            f"{url}/v1/messages",
            json={
                "model": "claude-sys",
                "max_tokens": 50,
                "stream": stream,
                "messages": [{"role": "user", "content": "hello"}],
            },
            headers={"x-api-key": token},
        )
    assert r.status_code == 200
    assert llm.requests[-1].body.get("stream") is stream  # forwarded as the client asked
    if not stream:
        assert r.json()["usage"]["cache_read_input_tokens"] == 4_000
    await eventually(lambda: budget_row(ws, tenant)[0] > 0 and budget_row(ws, tenant)[1] == 0)
    spent, _, micros = budget_row(ws, tenant)
    reply_words = len(llm.requests[-1].body["messages"][0]["content"].split())
    output = 2  # "echo: hello", one token per word
    assert spent == reply_words + output + 5_000
    assert micros == math.ceil(reply_words * 3.0 + output * 15.0 + 1_000 * 3.75 + 4_000 * 0.3)
    # It served and metered all that through the database driver alone: SQLAlchemy (whose
    # compiled modules would be mapped once imported) never loaded into `byokbot proxy`.
    assert _mapped(process.pid, "/sqlalchemy/") == []
    assert _mapped(process.pid, "_sqlite3")  # the driver it does use
    assert await process.terminate() == 0


def _mapped(pid: int, part: str) -> list[str]:
    """The files mapped into process ``pid`` whose path contains ``part``."""
    with open(f"/proc/{pid}/maps") as f:
        return sorted({line.split()[-1] for line in f if part in line})


async def test_a_worker_that_dies_stops_the_proxy_with_an_error(
    ws: Workspace, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    process, _url, _tenant, _token = await start_proxy(ws, llm, canaries, "--workers", "2")
    workers = process.children()
    assert len(workers) >= 2
    os.kill(workers[-1], signal.SIGKILL)
    code = await process.wait(30)
    assert code == 1
    assert "proxy worker" in process.stderr() and "exited" in process.stderr()
    await eventually(lambda: not _alive(workers))


def _alive(pids: list[int]) -> bool:
    """Whether any of ``pids`` still runs (a zombie does not count)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            return True
    return False


async def test_workers_below_one_is_one_line_and_exit_2(ws: Workspace) -> None:
    result = await ws.cli("proxy", "--workers", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "byokbot: error: --workers must be at least 1"


async def test_an_https_upstream_is_verified_against_ssl_cert_file(
    ws: Workspace, canaries: CanaryScan, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The README's word for an upstream behind a private CA, through ``byokbot proxy``."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    async with FakeLLMServer(ssl_context=tls) as llm:
        assert llm.anthropic_url.startswith("https://")
        ws.env["SSL_CERT_FILE"] = str(cert)
        process, url, _tenant, token = await start_proxy(ws, llm, canaries)
        async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
            for stream in (True, False, True):
                r = await http.post(
                    f"{url}/v1/messages",
                    json={
                        "model": "claude-sys",
                        "max_tokens": 50,
                        "stream": stream,
                        "messages": [{"role": "user", "content": "over tls"}],
                    },
                    headers={"x-api-key": token},
                )
                assert r.status_code == 200, r.text
                if stream:  # the reply's words, streamed one per delta, to its end
                    assert "tls" in r.text and r.text.endswith('message_stop"}\n\n')
                else:
                    assert r.json()["content"][0]["text"] == "echo: over tls"
        assert await process.terminate() == 0

        # Without the CA the upstream's certificate is refused: a 502, and the log says why.
        del ws.env["SSL_CERT_FILE"]
        process = await ws.start("proxy")
        await process.wait_output(r"metering proxy on", within=60)
        async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
            r = await http.post(
                f"{url}/v1/messages",
                json={
                    "model": "claude-sys",
                    "max_tokens": 50,
                    "messages": [{"role": "user", "content": "no ca"}],
                },
                headers={"x-api-key": token},
            )
        assert r.status_code == 502
        assert r.json()["error"]["message"] == "upstream provider unreachable"
        await process.wait_output(r"unreachable \(SSLCertVerificationError\)")
        assert len(llm.requests) == 3
        assert await process.terminate() == 0


async def test_the_budget_log_stays_bounded_under_steady_load(
    ws: Workspace, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    """The SQLite budget's write-ahead log is started again while requests keep coming.

    A passive checkpoint running beside a writer that commits without pause never catches up,
    so the log was never restarted and grew by ~11 KB a request for as long as the load lasted
    (175 MB after ~40k requests in the benchmark). Here 4,000 requests back to back, four at a
    time, left a log of 37 MiB (on 40a6480); bounded, it stays near the 8 MiB at which commits
    start waiting for the checkpoint (plus the commits until the next one). aiohttp's client,
    not httpx: a third of the CPU per request, so the other tests running beside this one are
    not starved.
    """
    llm.chunk_delay = 0.0  # throughput, not pacing
    process, url, tenant, token = await start_proxy(ws, llm, canaries, cap=10**12)
    wal = db_path(ws).with_name(db_path(ws).name + "-wal")
    body = json.dumps(
        {
            "model": "claude-sys",
            "max_tokens": 20,
            "stream": True,
            "messages": [{"role": "user", "content": "hello"}],
        }
    ).encode()
    headers = {"x-api-key": token, "content-type": "application/json"}
    largest = 0
    total = 4_000
    codes: list[int] = []
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=4), trust_env=False
    ) as http:

        async def post() -> int:
            async with http.post(f"{url}/v1/messages", data=body, headers=headers) as r:
                await r.read()
                return r.status

        assert await post() == 200
        await eventually(lambda: budget_row(ws, tenant)[1] == 0, within=30)
        each = budget_row(ws, tenant)[0]  # what one request is billed
        assert each > 0

        async def client() -> None:
            while len(codes) < total:
                codes.append(await post())

        async def watch() -> None:
            nonlocal largest
            while len(codes) < total:
                with contextlib.suppress(FileNotFoundError):
                    largest = max(largest, wal.stat().st_size)
                await asyncio.sleep(0.05)

        await asyncio.gather(watch(), *(client() for _ in range(4)))
    assert set(codes) == {200}, sorted(set(codes))
    assert largest < 24 * 2**20, f"the budget's log grew to {largest / 2**20:.1f} MiB"
    await eventually(lambda: budget_row(ws, tenant)[1] == 0, within=30)
    spent, _reserved, _ = budget_row(ws, tenant)
    assert spent == (1 + len(codes)) * each  # every request settled: nothing lost on the way
    assert "Traceback" not in process.output()
    assert await process.terminate() == 0
