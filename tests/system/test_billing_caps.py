"""A managed trial's smaller allowance is a hard cap, held at the metering proxy (issue 15).

``byokbot proxy`` runs as a subprocess; the trial tenant and its agent's token come from
``scripts/trial_tenant.py`` (the bot's own sign-up and trial, minus the chat). Many requests
race for the last of the allowance: the tokens spent never pass the trial cap, although the
plan's monthly cap is far larger. An operator's grant (``byokbot admin comp``) ends the trial
and lifts the cap in the running proxy, although it caches tokens for half a minute.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.managed_support import free_port, query

SCRIPT = Path(__file__).with_name("scripts") / "trial_tenant.py"
TRIAL_CAP = 600
MONTHLY_CAP = 50_000
BODY = {"model": "claude-sys", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}


def spent(ws: Workspace) -> int:
    rows = query(ws, "SELECT tokens_spent, tokens_reserved FROM budgets")
    return int(rows[0][0]) if rows and rows[0][1] == 0 else -1


async def test_a_managed_trial_cap_is_hard_under_a_race_and_a_grant_lifts_it(
    ws: Workspace, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    key = anthropic_key()
    canaries.add(key)
    llm.valid_keys = {key}
    llm.chunk_delay = 0.0
    llm.greedy = True  # every reply spends all the output it may: the worst case for a cap
    ws.env["PX_ANTHROPIC"] = key
    port = free_port()
    ws.configure(
        {
            "plans.managed": {
                "name": "Managed",
                "price_usd": 39,
                "byok": False,
                "models": ["claude-sys"],
                "requests_per_minute": 10_000,
                "monthly_token_cap": MONTHLY_CAP,
            },
            "billing.plans.managed": {"trial_days": 7, "trial_token_cap": TRIAL_CAP},
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
            },
        }
    )
    ws.configure({"proxy": {"token_cache_seconds": 30}})
    migrated = await ws.cli("db", "upgrade")
    assert migrated.returncode == 0, migrated.output
    made = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "managed",
        "4242",
        cwd=ws.root,
        env=ws.environment(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await made.communicate()
    assert made.returncode == 0, err.decode()
    _, token = out.decode().split()
    proxy = await ws.start("proxy")
    await proxy.wait_output(r"metering proxy on")
    url = f"http://127.0.0.1:{port}/v1/messages"
    body = json.dumps(BODY).encode()

    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:

        async def ask() -> httpx.Response:
            for _ in range(100):
                try:
                    return await http.post(url, content=body, headers={"x-api-key": token})
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)  # the line is printed as the listener starts
            raise AssertionError("the proxy never listened")

        # Batches of concurrent requests until the proxy refuses: ~11 replies fit the trial
        # cap; without a hard cap all 160 would fit the monthly one.
        statuses: list[int] = []
        refused: list[httpx.Response] = []
        for _ in range(10):
            batch = await asyncio.gather(*(ask() for _ in range(16)))
            statuses += [r.status_code for r in batch]
            refused += [r for r in batch if r.status_code != 200]
            if refused:
                break
        assert refused, f"no request was refused in {len(statuses)}: the trial cap is soft"
        assert {r.status_code for r in refused} == {402}
        assert {r.json()["error"]["type"] for r in refused} == {"usage_cap_reached"}
        await eventually(lambda: spent(ws) >= 0, message="reservations still held")
        assert spent(ws) <= TRIAL_CAP, f"{spent(ws)} tokens spent past a {TRIAL_CAP} trial cap"
        assert statuses.count(200) * (BODY["max_tokens"] + 1) <= TRIAL_CAP
        # Refused at the reservation: no upstream call was made for them.
        assert len(llm.requests) == statuses.count(200)
        assert (await ask()).status_code == 402

        # An operator's grant ends the trial: the monthly cap applies again at once.
        comped = await ws.cli("admin", "comp", "telegram:4242", "managed", "30")
        assert comped.returncode == 0, comped.output
        assert query(ws, "SELECT state FROM subscriptions") == [("active",)]
        after: list[int] = []

        async def lifted() -> bool:
            after.append((await ask()).status_code)
            return after[-1] == 200

        for _ in range(40):
            if await lifted():
                break
            await asyncio.sleep(0.1)
        assert after[-1] == 200, f"the grant did not lift the trial cap: {after}"

    assert proxy.returncode is None, proxy.output()
    assert "Traceback" not in proxy.output()
    assert await proxy.terminate() == 0
