"""Helpers for the managed-plan and background-job system tests.

The metering proxy listens inside ``byokbot run`` on a free loopback port, with every upstream
pointed at the fake LLM and the platform's keys (canaries) in the environment. The SQLite file
the program writes is read with the stdlib ``sqlite3`` module: a file crossing the boundary.
"""

from __future__ import annotations

import re
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.canaries import anthropic_key, openai_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import BotProcess, CanaryScan, Workspace
from tests.system.people import TelegramPerson

ANTHROPIC_KEY_ENV = "BYOKBOT_PROXY_ANTHROPIC_KEY"
OPENAI_KEY_ENV = "BYOKBOT_PROXY_OPENAI_KEY"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PlatformKeys:
    """The operator's provider keys, given to the proxy through the environment."""

    anthropic: str
    openai: str


def enable_proxy(
    ws: Workspace,
    llm: FakeLLMServer,
    canaries: CanaryScan,
    *,
    token_cap: int = 1_000_000,
    proxy: dict[str, Any] | None = None,
    managed_trial: bool = True,
) -> PlatformKeys:
    """``[proxy] enabled = true`` on a free port, upstreams and models on the fake LLM.

    The managed plan lists the fake's two models: ``model-large`` through the Anthropic
    upstream, ``model-small`` through the OpenAI-compatible one.
    """
    keys = PlatformKeys(anthropic_key(), openai_key())
    canaries.add(keys.anthropic, keys.openai)
    ws.env[ANTHROPIC_KEY_ENV] = keys.anthropic
    ws.env[OPENAI_KEY_ENV] = keys.openai
    ws.configure(
        {
            "plans.byok": {},
            "plans.managed": {
                "models": ["model-large", "model-small"],
                "monthly_token_cap": token_cap,
                "monthly_usd_cap": 1000.0,
                "requests_per_minute": 1000,
            },
            "proxy": {"enabled": True, "host": "127.0.0.1", "port": free_port(), **(proxy or {})},
            "proxy.upstreams.anthropic": {
                "kind": "anthropic",
                "base_url": llm.anthropic_url,
                "key_env": ANTHROPIC_KEY_ENV,
            },
            "proxy.upstreams.openai": {
                "kind": "openai-compatible",
                "base_url": llm.openai_url,
                "key_env": OPENAI_KEY_ENV,
            },
            'proxy.models."model-large"': {
                "upstream": "anthropic",
                "input_usd_per_mtok": 3.0,
                "output_usd_per_mtok": 15.0,
            },
            'proxy.models."model-small"': {
                "upstream": "openai",
                "input_usd_per_mtok": 0.4,
                "output_usd_per_mtok": 1.6,
            },
            # Small replies keep the reservation (input estimate + max_tokens) small.
            "agent": {"max_reply_tokens": 20},
        }
    )
    if managed_trial:
        # A managed plan is never free (issue 15): a trial stands in for paying.
        ws.configure({"billing.plans.managed": {"trial_days": 30}})
    return keys


async def start_bot(ws: Workspace, telegram: FakeTelegramServer) -> BotProcess:
    bot = await ws.start("run")
    await bot.wait_output(r"telegram: serving @\w+ by polling", within=30)
    return bot


async def sign_up_managed(person: TelegramPerson) -> None:
    person.send("/start")
    await person.wait_text("Pick a plan")
    person.press("Managed")
    await person.wait_text("(?i)just write to me")


def db_path(ws: Workspace) -> Path:
    return ws.root / "data" / "byokbot.db"


def query(ws: Workspace, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows from the program's SQLite file (read-only, beside the running process)."""
    with sqlite3.connect(f"file:{db_path(ws)}?mode=ro", uri=True, timeout=5) as conn:
        return conn.execute(sql, args).fetchall()


def execute(ws: Workspace, sql: str, *args: object) -> int:
    """Change the program's SQLite file while it is stopped; returns the rows changed."""
    conn = sqlite3.connect(db_path(ws), timeout=5)
    try:
        with conn:
            return conn.execute(sql, args).rowcount
    finally:
        conn.close()


def streamed_parts(person: TelegramPerson, final: str) -> list[str]:
    """Texts the bot showed in the chat that were partial states of ``final`` (drafts, edits)."""
    chat = str(person.user_id)
    shown = [
        str(c.params.get("text", ""))
        for c in person.server.calls
        if str(c.params.get("chat_id")) == chat
    ]
    return [t for t in shown if t.strip() and t != final and final.startswith(t)]


def key_was_asked(person: TelegramPerson) -> bool:
    """Whether the bot ever asked this person for an API key (a ForceReply prompt or words)."""
    for call in person.server.calls:
        if str(call.params.get("chat_id")) != str(person.user_id):
            continue
        markup = call.params.get("reply_markup")
        if isinstance(markup, dict) and markup.get("force_reply"):
            return True
    return bool(re.search(r"(?i)api key|/key add|which provider", person.everything()))


def prompts(person: TelegramPerson) -> int:
    """How many ForceReply prompts (key requests) the bot sent this person."""
    return sum(
        1
        for c in person.server.calls
        if c.method == "sendMessage"
        and c.status == 200
        and str(c.params.get("chat_id")) == str(person.user_id)
        and isinstance(c.params.get("reply_markup"), dict)
        and c.params["reply_markup"].get("force_reply")
    )


async def wait_prompts(person: TelegramPerson, n: int) -> None:
    try:
        await person.server.wait_for(lambda: prompts(person) >= n, 15)
    except TimeoutError:
        raise AssertionError("no key prompt:\n" + "\n---\n".join(person.texts())) from None


async def sign_up_byok(person: TelegramPerson, key: str) -> None:
    """BYOK with an Anthropic key handed over as a reply to the bot's prompt."""
    person.send("/start")
    await person.wait_text("Pick a plan")
    person.press("BYOK")
    await person.wait_text("Which provider")
    person.press("Anthropic")
    await wait_prompts(person, 1)
    person.reply_to_prompt(key)
    await person.wait_text("sk-ant-…")
