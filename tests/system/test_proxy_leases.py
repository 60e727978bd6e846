"""Budget leases through ``byokbot proxy``: one reservation row for a tenant's next requests.

Seen from outside: HTTP answers, the budget and reservation rows in the program's database
file, and the exit code. Every admitted request is billed exactly, the rate limit admits
exactly its requests per minute, and nothing stays reserved once the tenant goes quiet or the
proxy stops.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.fakes.llm_server import FakeLLMServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.managed_support import execute, query
from tests.system.test_proxy_workers import budget_row, start_proxy

RPM = 40
MAX_TOKENS = 50
BILLED = 1 + 2  # one input word ("hello"), "echo: hello" back: one token per word


def open_reservations(ws: Workspace) -> list[tuple[int, int]]:
    return query(ws, "SELECT tokens, usd_micros FROM budget_reservations")


async def ask(http: httpx.AsyncClient, url: str, token: str, *, stream: bool) -> int:
    r = await http.post(
        f"{url}/v1/messages",
        json={
            "model": "claude-sys",
            "max_tokens": MAX_TOKENS,
            "stream": stream,
            "messages": [{"role": "user", "content": "hello"}],
        },
        headers={"x-api-key": token},
    )
    return r.status_code


async def test_a_busy_tenant_shares_one_reservation_and_the_limits_hold_exactly(
    ws: Workspace, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    process, url, tenant, token = await start_proxy(ws, llm, canaries, cap=10**9, rpm=RPM)
    if time.time() % 60 > 40:  # all of it within one minute's window
        await asyncio.sleep(61 - time.time() % 60)
    # Counts the reservation rows the proxy writes (one per request without leases).
    execute(ws, "CREATE TABLE seen_reservations (id TEXT)")
    execute(
        ws,
        "CREATE TRIGGER seen AFTER INSERT ON budget_reservations"
        " BEGIN INSERT INTO seen_reservations VALUES (NEW.id); END",
    )
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        codes = [await ask(http, url, token, stream=i % 2 == 0) for i in range(10)]
        # The first alone, then two leases of 4 (1/8 of the minute's 40, less those used)
        # and the tenth alone again (too few requests left for a lease): 4 rows, not 10.
        assert query(ws, "SELECT count(*) FROM seen_reservations")[0][0] <= 5
        # Quiet: the lease goes back, with the minute's requests it did not use.
        await eventually(lambda: not open_reservations(ws), within=5)
        assert budget_row(ws, tenant)[:2] == (10 * BILLED, 0)
        assert query(ws, "SELECT window_requests FROM budgets")[0][0] == 10
        codes += [await ask(http, url, token, stream=i % 2 == 0) for i in range(RPM - 10)]
        assert codes == [200] * RPM
        assert await ask(http, url, token, stream=True) == 429  # exactly RPM a minute
        # Stopped while a lease holds room: it is given back, its usage committed.
        assert await process.terminate() == 0
    assert open_reservations(ws) == []
    assert budget_row(ws, tenant)[:2] == (RPM * BILLED, 0)
    assert "Traceback" not in process.output()
