"""Delivery under load: N tenants chatting at once through ``byokbot run`` (issue 13).

The real program (the ``byokbot`` console script) serves a fake Telegram that enforces the
documented flood limits (about 1 message/s per chat with bursts of 3, 20/min per group, 30/s
per bot, answering 429 with ``retry_after``) and a fake provider streaming every reply in
paced chunks (default 20 x 50 ms). Tenants are signed up beforehand through the product's own
services (sign-up is not what is measured); most talk in private chats (drafts), some in groups
of four (edits of one message). One round warms the agents up; the next is measured.

Figures, per reply, on the fake Telegram's clock: update -> the provider's request (the bot and
the agent layer), first visible text (update handed to the bot
by getUpdates -> first draft/message in the chat), whole reply visible minus provider time (the
provider's own streaming time for one reply, measured in the same run by streaming straight
from the fake provider at the same concurrency), platform calls per reply, 429s, the most
messages any group got in 60 s, the bot's RSS and the agents' USS. Baseline in the same run:
one tenant alone, through the same bot. Targets (issue 13, PERFORMANCE.md): first visible
p50 <= 0.5 s, p99 <= 1.5 s; whole reply p50 <= provider + 1.5 s, p99 <= provider + 5 s;
zero 429s; never over 20/min in a group.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from _common import machine, median, pct, table

from bot.app import App
from core.chat import Platform, UserRef
from core.config import parse_config
from core.secret import Secret
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer, message, tg_user
from tests.system.harness import Workspace
from tests.system.pacing_support import Delivered, direct_reply, group_reply, long_reply

SERVING = r"telegram: serving @\w+ by polling"
BOT = "@byok_test_bot"
GROUP_SIZE = 4
PG_ENV = "BYOKBOT_TEST_PG_URL"
QUIET = 3.5  # seconds: longer than the per-chat flood window (3 in 3 s)


@dataclass
class Person:
    user_id: int
    chat_id: int  # their own id, or the group's (negative)

    @property
    def in_group(self) -> bool:
        return self.chat_id < 0


@dataclass
class Sample:
    person: Person
    first_visible: float
    whole: float
    calls: int
    dispatch: float  # update handed to the bot -> the provider got the request


def tables(
    root: Path, llm: FakeLLMServer, telegram: FakeTelegramServer, database_url: str
) -> dict[str, Any]:
    return {
        "core": {
            "database_url": database_url or f"sqlite+aiosqlite:///{root / 'data' / 'byokbot.db'}",
            "verify_keys_live": False,
            "log_level": "INFO",
        },
        "providers.anthropic": {
            "name": "Anthropic",
            "kind": "anthropic",
            "base_url": llm.anthropic_url,
            "key_shape": "anthropic",
            "default_model": "model-large",
        },
        "agent": {"idle_timeout_seconds": 600, "request_timeout_seconds": 120},
        # Telegram's own pace (the product's defaults).
        "telegram": {
            "enabled": True,
            "api_base_url": telegram.base_url,
            "file_base_url": telegram.file_base_url,
            "poll_timeout": 1,
        },
    }


async def seed(ws: Workspace, env: dict[str, str], people: list[Person]) -> None:
    """Sign everyone up on BYOK with a key, through the product's services (not timed)."""
    raw = tomllib.loads(ws.config_path.read_text())
    config = parse_config(raw, source="bench", base_dir=ws.root)
    app = App(config, env=env, platforms=False, agent_runtime=False)
    await app.open()
    try:
        s = app.services
        for p in people:
            user = UserRef(Platform.TELEGRAM, str(p.user_id), f"P{p.user_id}")
            tenant = await s.tenants.sign_up(user, "byok", dm_chat_id=str(p.user_id))
            key = "sk-ant-api03-" + secrets.token_urlsafe(70)[:93] + "AA"
            await s.credentials.store(tenant.id, "anthropic", Secret(key), actor="bench")
            await s.tenants.activate(tenant.id, actor="bench")
    finally:
        await app.stop()


def say(telegram: FakeTelegramServer, p: Person, text: str) -> tuple[int, int]:
    """``p`` writes ``text`` (mentioning the bot in a group); (update id, message id)."""
    mid = telegram.next_message_id()
    body = f"{BOT} {text}" if p.in_group else text
    uid = telegram.push_update(
        message(p.chat_id, tg_user(p.user_id, f"P{p.user_id}"), body, message_id=mid)
    )
    return uid, mid


def done(telegram: FakeTelegramServer, p: Person, text: str, words: int) -> bool:
    whole = f"{text} {long_reply(words - 1)}"
    return whole in telegram.texts(p.chat_id)


async def wait_until(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"error: {what} not done within {within:.0f} s")
        await asyncio.sleep(0.1)


async def round_of(
    telegram: FakeTelegramServer,
    people: list[Person],
    tag: str,
    words: int,
    asked: dict[str, float],
) -> list[Sample]:
    """Everyone writes at once; wait for every whole reply; the figures of each."""
    since = len(telegram.calls)
    sent: dict[int, tuple[int, int, str]] = {}
    for p in people:
        text = f"{tag}-{p.user_id}"  # one word: one chunk of the reply
        uid, mid = say(telegram, p, text)
        sent[p.user_id] = (uid, mid, text)
    await wait_until(
        lambda: all(done(telegram, p, sent[p.user_id][2], words) for p in people),
        600,
        f"round {tag!r}",
    )
    out: list[Sample] = []
    for p in people:
        uid, mid, text = sent[p.user_id]
        served = telegram.served[uid]
        reply: Delivered = (
            group_reply(telegram, p.chat_id, mid)
            if p.in_group
            else direct_reply(telegram, p.chat_id, since)
        )
        out.append(
            Sample(
                p,
                reply.first - served,
                reply.last - served,
                len(reply.calls),
                asked[text] - served,
            )
        )
    return out


async def provider_time(llm: FakeLLMServer, concurrency: int) -> list[float]:
    """Seconds one reply streams straight from the fake provider, ``concurrency`` at once."""
    body = {
        "model": "model-large",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "baseline"}],
    }
    headers = {"x-api-key": "sk-ant-baseline", "anthropic-version": "2023-06-01"}

    async def one(http: aiohttp.ClientSession) -> float:
        t = time.monotonic()
        async with http.post(f"{llm.anthropic_url}/v1/messages", json=body, headers=headers) as r:
            await r.read()
        return time.monotonic() - t

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        return list(await asyncio.gather(*(one(http) for _ in range(concurrency))))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def uss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


def row(name: str, samples: list[Sample], provider: float) -> list[str]:
    if not samples:
        return [name, "0", "-", "-", "-", "-", "-", "-", "-", "-"]
    dispatch = [s.dispatch for s in samples]
    first = [s.first_visible for s in samples]
    extra = [s.whole - provider for s in samples]
    calls = [s.calls for s in samples]
    return [
        name,
        str(len(samples)),
        f"{median(dispatch):.2f}",
        f"{pct(dispatch, 99):.2f}",
        f"{median(first):.2f}",
        f"{pct(first, 99):.2f}",
        f"{median(extra):+.2f}",
        f"{pct(extra, 99):+.2f}",
        f"{sum(calls) / len(calls):.1f}",
        str(max(calls)),
    ]


async def fresh_postgres() -> tuple[str, str]:
    """A throwaway database beside the one ``BYOKBOT_TEST_PG_URL`` names: (URL, name)."""
    import asyncpg

    base = os.environ.get(PG_ENV, "")
    if not base:
        raise SystemExit(f"error: --database postgres needs {PG_ENV} (a PostgreSQL URL)")
    name = f"loadbench_{os.getpid()}"
    conn = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{base.rpartition('/')[0]}/{name}", name


async def drop_postgres(name: str) -> None:
    import asyncpg

    base = os.environ[PG_ENV].replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def main(tenants: int, words: int, delay: float, group_share: float, database: str) -> None:
    groups = round(tenants * group_share / GROUP_SIZE)
    people = [
        Person(8_000_000 + i, -1_000_000 - i // GROUP_SIZE if i < groups * GROUP_SIZE else 0)
        for i in range(tenants)
    ]
    for p in people:
        if p.chat_id == 0:
            p.chat_id = p.user_id
    alone = Person(7_999_999, 7_999_999)

    asked: dict[str, float] = {}  # when the provider got each message's request

    def reply(messages: list[dict[str, Any]]) -> str:
        # The message's own tag (one word), then the rest: ``words`` chunks in all.
        last = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        asked.setdefault(str(last), time.monotonic())
        return f"{last} {long_reply(words - 1)}"

    database_url, pg_name = await fresh_postgres() if database == "postgres" else ("", "")
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeLLMServer(chunk_delay=delay, reply=reply) as llm:
            telegram = FakeTelegramServer(
                token=f"{secrets.randbelow(10**9)}:AAbench{secrets.token_hex(12)}",
                exclusive_polling=True,
                max_hold=0.5,
            )
            await telegram.start()
            telegram.enforce_flood_limits()
            root = Path(tmp) / "work"
            root.mkdir()
            ws = Workspace(root)
            ws.configure(tables(root, llm, telegram, database_url))
            master = base64.b64encode(os.urandom(32)).decode()
            ws.env |= {"TELEGRAM_BOT_TOKEN": telegram.token, "BYOKBOT_MASTER_KEY": master}
            try:
                await seed(ws, {"BYOKBOT_MASTER_KEY": master}, [alone, *people])
                bot = await ws.start("run")
                await bot.wait_output(SERVING, within=60)
                baseline_provider = median(await provider_time(llm, 1))
                await round_of(telegram, [alone], "warmup-alone", words, asked)
                base: list[Sample] = []
                for i in range(3):
                    # Apart, so no reply waits for the previous one's room in the chat.
                    await asyncio.sleep(QUIET)
                    base += await round_of(telegram, [alone], f"alone{i}", words, asked)
                await round_of(telegram, people, "warmup", words, asked)
                loaded_provider = median(await provider_time(llm, tenants))
                await asyncio.sleep(QUIET)
                samples = await round_of(telegram, people, "measured", words, asked)
                rss = rss_mib(bot.pid)
                uss = uss_mib(bot.children())
                refusals = len(telegram.flood_refusals())
                group_ids = sorted({p.chat_id for p in people if p.in_group})
                busiest = max((telegram.most_in_window(g, 60.0) for g in group_ids), default=0)
                await bot.terminate()
            finally:
                await ws.close()
                await telegram.stop()
                if pg_name:
                    await drop_postgres(pg_name)

    load = os.getloadavg()
    print(f"machine: {machine()} | load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"{tenants} tenants at once ({len(people) - groups * GROUP_SIZE} in private chats, "
        f"{groups * GROUP_SIZE} in {groups} groups of {GROUP_SIZE}); replies of {words} chunks "
        f"x {delay * 1000:.0f} ms; {'PostgreSQL' if pg_name else 'SQLite'}; "
        "fake Telegram enforcing its flood limits\n"
    )
    print(
        f"provider time for one reply: {baseline_provider:.2f} s alone, "
        f"{loaded_provider:.2f} s with {tenants} streams at once (subtracted below)\n"
    )
    private = [s for s in samples if not s.person.in_group]
    grouped = [s for s in samples if s.person.in_group]
    print(
        table(
            [
                "replies",
                "n",
                "to provider p50 s",
                "p99 s",
                "first visible p50 s",
                "p99 s",
                "whole - provider p50 s",
                "p99 s",
                "calls/reply",
                "max",
            ],
            [
                row("baseline: one tenant alone", base, baseline_provider),
                row("private chats (drafts)", private, loaded_provider),
                row("groups (edits)", grouped, loaded_provider),
                row("all", samples, loaded_provider),
            ],
        )
    )
    first_all = median([s.first_visible for s in samples])
    first_base = median([s.first_visible for s in base])
    print(
        f"\nfirst visible p50, loaded / alone: x{first_all / first_base:.1f}; "
        f"429s from the fake Telegram (whole run): {refusals}; "
        f"most messages in one group in 60 s: {busiest}"
    )
    print(f"bot RSS {rss:.0f} MiB; agents' USS {uss:.0f} MiB in total")
    print(
        "targets: first visible p50 <= 0.5 s, p99 <= 1.5 s; whole reply p50 <= provider + 1.5 s,"
        " p99 <= provider + 5 s; 0 429s; <= 20 messages/min per group"
    )
    if refusals:
        raise SystemExit(f"error: the fake Telegram answered {refusals} request(s) with 429")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 tenants (CI)")
    parser.add_argument("--tenants", type=int, default=200, help="tenants chatting at once")
    parser.add_argument("--chunks", type=int, default=20, help="chunks per reply")
    parser.add_argument("--chunk-ms", type=float, default=50.0, help="ms between chunks")
    parser.add_argument(
        "--in-groups", type=float, default=0.2, help="share of tenants talking in groups of 4"
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help=f"postgres: a fresh database beside the one {PG_ENV} names",
    )
    args = parser.parse_args()
    n = 20 if args.quick else args.tenants
    asyncio.run(main(n, args.chunks, args.chunk_ms / 1000, args.in_groups, args.database))
