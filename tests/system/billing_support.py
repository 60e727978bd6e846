"""Helpers for the billing system tests: price tables, link buttons, the operator, the DB file.

Nothing here imports the program: the config is written as an operator would, buttons are read
from the platform calls the fakes recorded, and billing state from the SQLite file on disk.
"""

from __future__ import annotations

from typing import Any

from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import Workspace, eventually
from tests.system.managed_support import query
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
