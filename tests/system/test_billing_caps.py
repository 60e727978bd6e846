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
import re
import sys
from pathlib import Path

import httpx

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.stripe_server import FakeStripe
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.billing_support import (
    enable_stripe,
    stripe_fixture,  # noqa: F401 - fixture
    subscription,
    wait_link,
    webhook_ready,
)
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.managed_support import enable_proxy, free_port, query, start_bot
from tests.system.people import TelegramPerson

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
            for _ in range(400):
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
        # Once the batch settled, what its reservations held beyond the real usage is free
        # again: requests one at a time are admitted while they fit, then refused for good.
        # (How many fit in the batch depends on how its reservations interleave.)
        for _ in range(20):
            last = await ask()
            if last.status_code != 200:
                break
            statuses.append(200)
            await eventually(lambda: spent(ws) >= 0, message="reservation still held")
        assert last.status_code == 402
        assert spent(ws) <= TRIAL_CAP
        assert statuses.count(200) * (BODY["max_tokens"] + 1) <= TRIAL_CAP
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

        for _ in range(150):  # the revocation poll reaches the proxy within a second, or so
            if await lifted():
                break
            await asyncio.sleep(0.1)
        assert after[-1] == 200, f"the grant did not lift the trial cap: {after}"

    assert proxy.returncode is None, proxy.output()
    assert "Traceback" not in proxy.output()
    assert await proxy.terminate() == 0


# ----- in ``byokbot run``: the trial's cap in chat, then paying lifts it --------------------

CHAT_TRIAL_CAP = 500


def chat_spent(ws: Workspace) -> int:
    rows = query(ws, "SELECT tokens_spent FROM budgets")
    return int(rows[0][0]) if rows else 0


async def test_a_chat_trial_is_told_its_cap_and_paying_by_stripe_brings_the_monthly_one(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    stripe_fake: FakeStripe,
    canaries: CanaryScan,
) -> None:
    # The in-process proxy of ``byokbot run``; the monthly cap (1,000,000) dwarfs the trial's.
    enable_proxy(tg_ws, llm, canaries, managed_trial=False)
    enable_stripe(tg_ws, stripe_fake)
    tg_ws.configure(
        {
            "billing.plans.managed": {"trial_days": 7, "trial_token_cap": CHAT_TRIAL_CAP},
            # Plain requests: tool definitions would make each reservation ~600 tokens larger.
            "plans.managed.tools": {
                "web_fetch": False,
                "web_search": False,
                "notes": False,
                "tasks": False,
            },
        }
    )
    llm.greedy = True  # each reply spends all the output it may: the worst case for a cap
    bot = await start_bot(tg_ws, telegram)
    await webhook_ready(bot, stripe_fake)
    ada.send("/start")
    await ada.wait_text("Pick a plan")
    ada.press("Managed")
    await ada.wait_text("free trial has started")

    cap_text = f"used your free trial's allowance \\({CHAT_TRIAL_CAP:,} tokens\\)"
    answered = 0
    for n in range(12):
        asked = len(llm.requests)
        ada.send(f"trial message {n}")
        said = await ada.wait_text(f"^echo: trial message {n}|{cap_text}", within=30)
        if re.search(cap_text, said):
            # Refused at the proxy's reservation (or before it): the model never saw it.
            assert len(llm.requests) == asked, "a request past the trial cap reached the model"
            break
        answered += 1
    else:
        raise AssertionError(f"{answered} replies and the trial cap was never reached")
    assert answered >= 2, "the trial cap refused before any reply fitted under it"
    assert chat_spent(tg_ws) <= CHAT_TRIAL_CAP
    # A long conversation's next request no longer fits, though part of the trial is left:
    # the refusal says how much, and that a fresh conversation may fit.
    left = CHAT_TRIAL_CAP - chat_spent(tg_ws)
    assert f"nearly used your free trial's allowance (500 tokens): {left} are left" in said
    assert "/new" in said
    ada.send("still there?")
    await eventually(lambda: sum(bool(re.search(cap_text, t)) for t in ada.texts()) == 2)
    ada.send("/new")
    await ada.wait_text("(?i)new conversation")
    ada.send("hi")
    await ada.wait_text("^echo: hi$", within=30)
    assert subscription(tg_ws) == ("trial", "managed", "trial")
    # Only the trial's words: not the month's "allowance used up … switch to BYOK" alert.
    assert not [t for t in ada.texts() if "allowance for this month" in t]

    # The cap's words say to send /plan: it offers the card payment during the trial.
    ada.send("/plan")
    link = await wait_link(telegram, ada.user_id, "Pay by card")
    assert stripe_fake.session_of(link)["price"] == "price_managed_monthly"
    assert await stripe_fake.complete(link) == [200, 200, 200]
    await ada.wait_text("Payment received: 39.00 USD")
    await eventually(lambda: subscription(tg_ws) == ("active", "managed", "stripe"))

    # Paid: the monthly cap applies in the same running proxy, past the trial's allowance.
    for n in range(20):
        ada.send(f"paid message {n}")
        await ada.wait_text(f"^echo: paid message {n}", within=30)
        if chat_spent(tg_ws) > CHAT_TRIAL_CAP:
            break
    assert chat_spent(tg_ws) > CHAT_TRIAL_CAP
    assert sum(bool(re.search(cap_text, t)) for t in ada.texts()) == 2
    assert "Traceback" not in bot.output()
