"""Helpers for the billing system tests: price tables, link buttons, the operator, the DB file.

Nothing here imports the program: the config is written as an operator would, buttons are read
from the platform calls the fakes recorded, and billing state from the SQLite file on disk.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import psutil
import pytest

from tests.canaries import stripe_api_key, stripe_webhook_secret
from tests.fakes.stripe_server import FakeStripe
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import BotProcess, CanaryScan, Workspace, eventually
from tests.system.managed_support import free_port, query
from tests.system.people import TelegramPerson

STARS = 250  # the managed plan's Star price in these tests
OPERATOR_ID = 900  # telegram:900 is an admin in the base config


def link_buttons(server: FakeTelegramServer, chat_id: int) -> list[tuple[str, str]]:
    """``(label, url)`` of every link button the bot sent to the chat, newest first."""
    found: list[tuple[str, str]] = []
    for call in reversed(server.calls):
        if call.status != 200 or str(call.params.get("chat_id")) != str(chat_id):
            continue
        markup = call.params.get("reply_markup")
        if not isinstance(markup, dict):
            continue
        for row in markup.get("inline_keyboard", []):
            for button in row:
                if "url" in button:
                    found.append((str(button["text"]), str(button["url"])))
    return found


async def wait_link(server: FakeTelegramServer, chat_id: int, label: str) -> str:
    """The newest link button whose label contains ``label``, once the bot has sent one."""
    await eventually(
        lambda: any(label.lower() in t.lower() for t, _ in link_buttons(server, chat_id)),
        message=lambda: repr(server.texts(chat_id)),
    )
    return next(u for t, u in link_buttons(server, chat_id) if label.lower() in t.lower())


def subscription(ws: Workspace) -> tuple[Any, ...] | None:
    """(state, plan, provider) of the only subscription in the program's database."""
    rows = query(ws, "SELECT state, plan, provider FROM subscriptions")
    return rows[0] if rows else None


def tenant_status(ws: Workspace) -> str:
    rows = query(ws, "SELECT status FROM tenants WHERE status != 'deleted'")
    return str(rows[0][0]) if rows else ""


def live_proxy_tokens(ws: Workspace) -> int:
    return int(query(ws, "SELECT count(*) FROM proxy_tokens")[0][0])


def audit_actions(ws: Workspace) -> list[str]:
    return [str(r[0]) for r in query(ws, "SELECT action FROM audit_log ORDER BY id")]


def operator(server: FakeTelegramServer) -> TelegramPerson:
    return TelegramPerson(server, OPERATOR_ID, "Op", "op")


def stars_tables(*, stars: int = STARS, **billing: Any) -> dict[str, dict[str, Any]]:
    """``[billing]`` with Telegram Stars on and the managed plan priced in Stars."""
    return {
        "billing": {"stars": True, "check_interval_seconds": 0.2, **billing},
        "billing.plans.managed": {"stars": stars},
    }


# ----- Stripe ------------------------------------------------------------------------------

STRIPE_KEY_ENV = "STRIPE_API_KEY"
STRIPE_SECRET_ENV = "STRIPE_WEBHOOK_SECRET"
WEBHOOK_READY = r"stripe: webhook listening on (http://127\.0\.0\.1:\d+/\S+)"


@pytest.fixture(name="stripe_fake")
async def stripe_fixture(canaries: CanaryScan) -> AsyncIterator[FakeStripe]:
    """The fake Stripe API; its secret key and webhook secret are canaries."""
    fake = FakeStripe(api_key=stripe_api_key(), webhook_secret=stripe_webhook_secret())
    await fake.start()
    canaries.add(fake.api_key, fake.webhook_secret)

    def calls() -> Iterable[tuple[str, bytes]]:
        # What the bot sent Stripe (the key travels only in the Authorization header).
        yield "stripe requests", json.dumps([r.form for r in fake.requests]).encode()

    canaries.watch(calls)
    try:
        yield fake
    finally:
        await fake.stop()


def enable_stripe(ws: Workspace, fake: FakeStripe, **billing: Any) -> None:
    """``[billing.stripe]`` on the fake, its webhook on a free port, managed priced by Stripe."""
    ws.configure(
        {
            "billing": {"check_interval_seconds": 0.2, **billing},
            "billing.stripe": {
                "enabled": True,
                "api_base": fake.api_base,
                "webhook_host": "127.0.0.1",
                "webhook_port": free_port(),
                "success_url": "https://bot.example.org/paid",
                "cancel_url": "https://bot.example.org/cancelled",
            },
            "billing.plans.managed": {"stripe_price": "price_managed_monthly"},
        }
    )
    ws.env[STRIPE_KEY_ENV] = fake.api_key
    ws.env[STRIPE_SECRET_ENV] = fake.webhook_secret


async def webhook_ready(bot: BotProcess, fake: FakeStripe) -> None:
    found = await bot.wait_output(WEBHOOK_READY, within=30)
    fake.webhook_url = found.group(1)


def payments(ws: Workspace) -> list[tuple[Any, ...]]:
    return query(ws, "SELECT provider, charge_id, amount, currency FROM payments ORDER BY id")


def agent_pids(bot: BotProcess) -> set[int]:
    """Agent processes: descendants of the bot forked by the fork server (not its helpers)."""
    try:
        tree = psutil.Process(bot.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    out: set[int] = set()
    for p in tree:
        try:
            if p.ppid() != bot.pid and p.status() != psutil.STATUS_ZOMBIE:
                out.add(p.pid)
        except psutil.NoSuchProcess:
            continue
    return out
