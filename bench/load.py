"""Delivery under load: N tenants chatting through ``byokbot run`` (issue 13).

The real program (the ``byokbot`` console script) serves a fake Telegram that enforces the
documented flood limits (about 1 message/s per chat with bursts of 3, 20/min per group, 30/s
per bot, answering 429 with ``retry_after``) and a fake provider streaming every reply in
paced chunks (default 20 x 50 ms). Tenants are signed up beforehand through the product's own
services (sign-up is not what is measured); most talk in private chats (drafts), some in groups
of four (edits of one message).

Two ways of arriving (``--arrivals``):

* ``steady`` (the default, checked against the targets): people chatting. Each tenant writes
  for the first time at a random moment within its longest think time (a warm-up turn, not
  measured), then, again and again, waits for the whole reply, thinks for a random time
  (``--think``, uniform 10-30 s: reading the reply and typing the next message) and writes
  again; in a group each of the four thinks four times as long (``--group-think``, 40-120 s:
  the group talks at about one person's pace, among themselves too). Turns written once every
  tenant's warm-up reply is whole are measured, for ``--window`` seconds (60) and until every
  tenant has had ``--turns`` (1) measured turns, everyone chatting on until then (so the load
  holds to the end); arrivals spread as they do when people chat.
  The offered load is printed against Telegram's capacity: with ``--think 5-15`` (an earlier
  default) 200 tenants ask for about 32 calls/s of the bot's 30 and a group of four for 21
  replies/min of its 20, so no pacing can meet the targets there; it is a stress run.
* ``burst``: every tenant writes in the same instant (one getUpdates batch), once to warm up
  and once measured. Every draft and message counts against the bot-wide 30/s, so the burst
  has an arithmetic floor, printed beside its figures: N x calls/reply / 30 s for all of it to
  go out (N / 30 s for the first texts alone). Its first-visible figures cannot meet the
  targets above a few dozen tenants; it shows how the bot drains a backlog without a 429.

Figures, per reply, on the fake Telegram's clock: update -> the provider's request (the bot and
the agent layer), first visible text (update handed to the bot by getUpdates -> first
draft/message in the chat), whole reply visible minus provider time (the provider's own
streaming time for one reply, measured in the same run by streaming straight from the fake
provider at the scenario's concurrency), platform calls per reply, 429s, the most messages any
group got in 60 s, the bot's RSS and the agents' USS. Baseline in the same run: one tenant
alone, through the same bot. Targets (issue 13, PERFORMANCE.md): first visible p50 <= 0.5 s,
p99 <= 1.5 s; whole reply p50 <= provider + 1.5 s, p99 <= provider + 5 s; zero 429s; never over
20/min in a group.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import os
import random
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
from tests.fakes.telegram_server import FLOODED_METHODS, FakeTelegramServer, message, tg_user
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


class Stuck(Exception):
    """A reply never became whole: the run is stopped with an error."""


@dataclass
class Sent:
    """One message a tenant wrote, and where its reply lies among the fake's calls."""

    person: Person
    update_id: int
    message_id: int
    text: str
    since: int  # len(telegram.calls) when it was written
    until: int  # len(telegram.calls) once its whole reply showed


@dataclass
class Scenario:
    arrivals: str  # "steady" or "burst"
    think: tuple[float, float]  # seconds, uniform
    group_think: tuple[float, float]  # seconds, uniform, for a person in a group
    window: float  # seconds of measured turns (steady)
    turns: int  # measured turns per tenant at least (steady)
    seed: int


async def wait_until(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise Stuck(f"{what} not done within {within:.0f} s")
        await asyncio.sleep(0.1)


TURNS = [0]  # every turn written, warm-ups and unmeasured ones too


async def turn(telegram: FakeTelegramServer, p: Person, text: str, words: int) -> Sent:
    """``p`` writes ``text`` (one word: one chunk of the reply) and waits for the whole reply."""
    TURNS[0] += 1
    since = len(telegram.calls)
    uid, mid = say(telegram, p, text)
    await wait_until(lambda: done(telegram, p, text, words), 180, f"the reply to {text!r}")
    return Sent(p, uid, mid, text, since, len(telegram.calls))


def sample(telegram: FakeTelegramServer, sent: Sent, asked: dict[str, float]) -> Sample:
    served = telegram.served[sent.update_id]
    p = sent.person
    reply: Delivered = (
        group_reply(telegram, p.chat_id, sent.message_id, since=sent.since, until=sent.until)
        if p.in_group
        else direct_reply(telegram, p.chat_id, sent.since, until=sent.until)
    )
    return Sample(
        p,
        reply.first - served,
        reply.last - served,
        len(reply.calls),
        asked[sent.text] - served,
    )


async def burst(
    telegram: FakeTelegramServer, people: list[Person], tag: str, words: int
) -> list[Sent]:
    """Everyone writes in the same instant; every whole reply."""
    return list(
        await asyncio.gather(*(turn(telegram, p, f"{tag}-{p.user_id}", words) for p in people))
    )


async def steady(
    telegram: FakeTelegramServer, people: list[Person], words: int, sc: Scenario
) -> tuple[list[Sent], float]:
    """People chatting: write, wait for the whole reply, think, write again.

    The measured turns, and when the window opened (every tenant's warm-up reply whole).
    """
    rng = random.Random(sc.seed)
    opened: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    closed = asyncio.Event()  # the window is over and every tenant had its measured turns
    warmed = 0
    measured: list[Sent] = []
    counts = {p.user_id: 0 for p in people}

    def close_if_done() -> None:
        over = opened.done() and time.monotonic() - opened.result() >= sc.window
        if over and min(counts.values()) >= sc.turns:
            closed.set()

    async def chat(p: Person, first: float, thinks: list[float]) -> None:
        nonlocal warmed
        await asyncio.sleep(first)
        await turn(telegram, p, f"warmup-{p.user_id}", words)
        warmed += 1
        if warmed == len(people):
            opened.set_result(time.monotonic())
            asyncio.get_running_loop().call_later(sc.window, close_if_done)
        # Everyone keeps chatting until the run closes, so the load stays the same to the end.
        for n, think in enumerate(thinks, 1):
            await asyncio.sleep(think)
            if closed.is_set():
                return
            counted = opened.done()
            sent = await turn(telegram, p, f"t{n}-{p.user_id}", words)
            if counted:
                measured.append(sent)
                counts[p.user_id] += 1
                close_if_done()
        raise Stuck(f"tenant {p.user_id} had {counts[p.user_id]} measured turns in {len(thinks)}")

    # Drawn up front, in a fixed order, so a seed gives the same arrivals whatever the timing.
    plans = []
    for p in people:
        think = sc.group_think if p.in_group else sc.think
        plans.append((rng.uniform(0, think[1]), [rng.uniform(*think) for _ in range(1000)]))
    await asyncio.gather(
        *(chat(p, first, thinks) for p, (first, thinks) in zip(people, plans, strict=True))
    )
    return measured, opened.result()


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used (not its children: the agents)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def platform_calls(telegram: FakeTelegramServer) -> list[float]:
    """When each flood-counted call the fake accepted arrived, in order."""
    return [c.at for c in telegram.calls if c.status == 200 and c.method in FLOODED_METHODS]


def busiest_second(times: list[float]) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def verdicts(samples: list[Sample], provider: float, refusals: int, busiest: int) -> list[str]:
    first = [s.first_visible for s in samples]
    extra = [s.whole - provider for s in samples]
    checks: list[tuple[str, float, float, str]] = [
        ("first visible p50", median(first), 0.5, "{:.2f} s"),
        ("first visible p99", pct(first, 99), 1.5, "{:.2f} s"),
        ("whole - provider p50", median(extra), 1.5, "{:+.2f} s"),
        ("whole - provider p99", pct(extra, 99), 5.0, "{:+.2f} s"),
        ("429s", refusals, 0, "{:.0f}"),
        ("most messages in one group in 60 s", busiest, 20, "{:.0f}"),
    ]
    return [
        f"  {name}: {shown.format(value)} (target <= {shown.format(limit)}): "
        + ("met" if value <= limit else "MISSED")
        for name, value, limit, shown in checks
    ]


async def main(
    tenants: int, words: int, delay: float, group_share: float, database: str, sc: Scenario
) -> None:
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
                await turn(telegram, alone, "warmup-alone", words)
                alone_sent: list[Sent] = []
                for i in range(3):
                    # Apart, so no reply waits for the previous one's room in the chat.
                    await asyncio.sleep(QUIET)
                    alone_sent.append(await turn(telegram, alone, f"alone{i}", words))
                base = [sample(telegram, s, asked) for s in alone_sent]
                cpu_before, turns_before = cpu_seconds(bot.pid), TURNS[0]
                if sc.arrivals == "burst":
                    await burst(telegram, people, "warmup", words)
                    concurrency = tenants
                    await asyncio.sleep(QUIET)
                    measured = await burst(telegram, people, "measured", words)
                    opened = min(telegram.served[s.update_id] for s in measured)
                else:
                    measured, opened = await steady(telegram, people, words, sc)
                cpu = cpu_seconds(bot.pid) - cpu_before
                turns = TURNS[0] - turns_before
                samples = [sample(telegram, s, asked) for s in measured]
                closed = max(
                    telegram.served[s.update_id] + x.whole
                    for s, x in zip(measured, samples, strict=True)
                )
                # The provider's own time at the scenario's concurrency: all at once for the
                # burst; for steady arrivals, the streams in flight on average in the window.
                if sc.arrivals == "steady":
                    concurrency = max(
                        1, math.ceil(len(samples) * baseline_provider / (closed - opened))
                    )
                loaded_provider = median(await provider_time(llm, concurrency))
                rss = rss_mib(bot.pid)
                uss = uss_mib(bot.children())
                refusals = len(telegram.flood_refusals())
                group_ids = sorted({p.chat_id for p in people if p.in_group})
                busiest = max((telegram.most_in_window(g, 60.0) for g in group_ids), default=0)
                calls = [t for t in platform_calls(telegram) if opened <= t <= closed]
                await bot.terminate()
            except Stuck as exc:
                raise SystemExit(f"error: {exc}") from None
            finally:
                await ws.close()
                await telegram.stop()
                if pg_name:
                    await drop_postgres(pg_name)

    load = os.getloadavg()
    print(f"machine: {machine()} | load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if sc.arrivals == "burst":
        how = f"{tenants} tenants writing in the same instant (--arrivals burst)"
    else:
        how = (
            f"{tenants} tenants chatting (--arrivals steady: think "
            f"{sc.think[0]:g}-{sc.think[1]:g} s between a whole reply and the next message, "
            f"{sc.group_think[0]:g}-{sc.group_think[1]:g} s in a group; "
            f"{closed - opened:.0f} s measured,"
            f" at least {sc.turns} turns each; seed {sc.seed})"
        )
    print(
        f"{how}; {len(people) - groups * GROUP_SIZE} in private chats, "
        f"{groups * GROUP_SIZE} in {groups} groups of {GROUP_SIZE}; replies of {words} chunks "
        f"x {delay * 1000:.0f} ms; {'PostgreSQL' if pg_name else 'SQLite'}; "
        "fake Telegram enforcing its flood limits\n"
    )
    print(
        f"provider time for one reply: {baseline_provider:.2f} s alone, "
        f"{loaded_provider:.2f} s with {concurrency} streams at once (subtracted below)\n"
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
    per_reply = sum(s.calls for s in samples) / len(samples)
    span = max(closed - opened, 1e-9)
    print(
        f"\nfirst visible p50, loaded / alone: x{first_all / first_base:.1f}; "
        f"429s from the fake Telegram (whole run): {refusals}; "
        f"most messages in one group in 60 s: {busiest}"
    )
    print(
        f"measured: {len(samples)} replies in {span:.1f} s ({len(samples) / span:.1f}/s); "
        f"platform calls {len(calls) / span:.1f}/s on average, {busiest_second(calls)} in the "
        "busiest second (the bot's limit: 30/s)"
    )
    print(f"bot RSS {rss:.0f} MiB; agents' USS {uss:.0f} MiB in total")
    # Robust to a shared machine's noise, unlike the latencies: the bot's own CPU per reply.
    print(
        f"bot process CPU: {cpu:.1f} s for {turns} replies (warm-ups included) = "
        f"{cpu / max(turns, 1) * 1000:.1f} ms per reply"
    )
    if sc.arrivals == "steady":
        # What the arrivals ask of Telegram's limits, before any queueing: each person's turn
        # lasts a think plus a reply as fast as when alone.
        alone_whole = median([s.whole for s in base])
        cycle = sum(sc.think) / 2 + alone_whole
        group_cycle = sum(sc.group_think) / 2 + alone_whole
        in_groups = groups * GROUP_SIZE
        rate = (tenants - in_groups) / cycle + in_groups / group_cycle
        group_rate = GROUP_SIZE * 60 / group_cycle
        print(
            f"offered load: {tenants - in_groups} tenants / {cycle:.1f} s a turn + {in_groups} / "
            f"{group_cycle:.1f} s = {rate:.1f} replies/s; at {per_reply:.1f} calls/reply that is "
            f"{rate * per_reply:.1f} calls/s of the bot's 30/s; a group of {GROUP_SIZE} asks for "
            f"{group_rate:.1f} replies/min of its 20 messages/min"
        )
    if sc.arrivals == "burst":
        print(
            f"arithmetic floor of a burst under 30 calls/s for the whole bot: {tenants} x "
            f"{per_reply:.1f} calls/reply / 30 = {tenants * per_reply / 30:.1f} s for all of it "
            f"to go out ({tenants} / 30 = {tenants / 30:.1f} s for the first texts alone)"
        )
        print(
            "targets (checked on --arrivals steady): first visible p50 <= 0.5 s, p99 <= 1.5 s;"
            " whole reply p50 <= provider + 1.5 s, p99 <= provider + 5 s; 0 429s;"
            " <= 20 messages/min per group"
        )
    else:
        print("targets (issue 13):")
        print("\n".join(verdicts(samples, loaded_provider, refusals, busiest)))
    if refusals:
        raise SystemExit(f"error: the fake Telegram answered {refusals} request(s) with 429")


def think_range(text: str) -> tuple[float, float]:
    """``"5-15"`` (uniform) or ``"10"`` (fixed), in seconds."""
    lo, sep, hi = text.partition("-")
    try:
        low = float(lo)
        high = float(hi) if sep else low
    except ValueError:
        raise argparse.ArgumentTypeError(f"not seconds: {text!r} (e.g. 5-15 or 10)") from None
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError(f"not a range of seconds: {text!r} (e.g. 5-15)")
    return low, high


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="20 tenants; steady: a 10 s window, 1 turn each at least, think 5-10 s "
        "(in a group 20-40 s) (CI)",
    )
    parser.add_argument("--tenants", type=int, default=200, help="tenants chatting")
    parser.add_argument(
        "--arrivals",
        choices=("steady", "burst"),
        default="steady",
        help="steady: people chatting (the default, checked against the targets); "
        "burst: everyone in the same instant",
    )
    parser.add_argument(
        "--think",
        type=think_range,
        default=None,
        help="steady: seconds between a whole reply and the next message, uniform "
        "(default 10-30; --quick 5-10)",
    )
    parser.add_argument(
        "--group-think",
        type=think_range,
        default=None,
        help="steady: the same for a person in a group (default 4 x --think's)",
    )
    parser.add_argument(
        "--window", type=float, default=None, help="steady: seconds measured (default 60)"
    )
    parser.add_argument(
        "--turns", type=int, default=None, help="steady: measured turns per tenant at least (1)"
    )
    parser.add_argument("--seed", type=int, default=13, help="steady: the arrivals' random seed")
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
    think = args.think or ((5.0, 10.0) if args.quick else (10.0, 30.0))
    scenario = Scenario(
        arrivals=args.arrivals,
        think=think,
        group_think=args.group_think or (think[0] * 4, think[1] * 4),
        window=args.window if args.window is not None else 10.0 if args.quick else 60.0,
        turns=args.turns if args.turns is not None else 1,
        seed=args.seed,
    )
    if n < 1 or scenario.turns < 1 or scenario.window < 0:
        parser.error("--tenants and --turns must be at least 1, --window not negative")
    asyncio.run(main(n, args.chunks, args.chunk_ms / 1000, args.in_groups, args.database, scenario))
