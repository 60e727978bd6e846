"""Every background job runs inside ``byokbot run`` and does its work, on short intervals.

Intake expiry, idle agents, the proxy's reservation sweeper and its monthly roll are seen
where they cross the process boundary: the SQLite file (read with ``sqlite3``), the agent
processes (pids), the fake LLM's requests and the chat.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, date, datetime

import psutil

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import BotProcess, CanaryScan, Workspace, eventually
from tests.system.managed_support import (
    enable_proxy,
    execute,
    query,
    sign_up_byok,
    sign_up_managed,
    start_bot,
    wait_prompts,
)
from tests.system.people import TelegramPerson

NEVER_AWAITED = "was never awaited"


def _started(bot: BotProcess) -> list[int]:
    """Agent pids in start order, from the bot's log."""
    return [int(m) for m in re.findall(r"started \(pid (\d+)", bot.stderr())]


def _agent_pids(bot: BotProcess) -> set[int]:
    """Agent processes: the bot's descendants that are not its own helpers (the fork server).

    Agents are forked by the template (the fork server), so their parent is not the bot.
    """
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


def _budgets(ws: Workspace) -> list[tuple[object, ...]]:
    return query(ws, "SELECT * FROM budgets")


def _month_start(today: date) -> date:
    return today.replace(day=1)


def _previous_month(start: date) -> date:
    return date(start.year - (start.month == 1), (start.month - 2) % 12 + 1, 1)


async def test_an_intake_past_its_ttl_is_closed_and_the_next_message_reaches_the_agent(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    # Six seconds: the sign-up's key prompt goes out at Telegram's pace (about one message a
    # second per chat) and must still be open when Ada answers it.
    tg_ws.configure({"core": {"intake_ttl_seconds": 6, "intake_sweep_interval_seconds": 1}})
    bot = await start_bot(tg_ws, telegram)
    await sign_up_byok(ada, key)

    ada.send("/key rotate anthropic")  # a key request opens, and is left unanswered
    await wait_prompts(ada, 2)
    assert query(tg_ws, "SELECT status FROM intake_sessions WHERE purpose = 'rotate'") == [
        ("open",)
    ]
    assert query(tg_ws, "SELECT step FROM flow_states") == [("await_secret",)]

    def closed() -> bool:
        # The expired flow row is kept a day (a late key then gets "expired", issue 13); what
        # matters is that the session is closed and the next message is not taken for a key.
        return query(tg_ws, "SELECT status FROM intake_sessions WHERE purpose = 'rotate'") == [
            ("expired",)
        ]

    await eventually(
        closed,
        within=12,
        message=lambda: f"the expired intake is still open in the database\n{bot.stderr()}",
    )
    asked = len(llm.keys())
    ada.send("are you still there?")
    await ada.wait_text("echo: are you still there", within=30)
    assert len(llm.keys()) == asked + 1
    assert llm.keys()[-1] == key
    assert NEVER_AWAITED not in bot.stderr()


async def test_idle_agents_are_stopped(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    tg_ws.configure({"agent": {"idle_timeout_seconds": 2, "idle_check_interval_seconds": 1}})
    bot = await start_bot(tg_ws, telegram)
    await sign_up_byok(ada, key)
    ada.send("wake up")
    await ada.wait_text("echo: wake up", within=30)
    agents = _agent_pids(bot)
    assert len(agents) == 1, agents

    await eventually(
        lambda: not (_agent_pids(bot) & agents),
        within=8,
        message=lambda: f"agent {agents} still running after its idle timeout\n{bot.stderr()}",
    )
    assert bot.returncode is None
    # The next message starts a fresh agent.
    ada.send("back again")
    await ada.wait_text("echo: back again", within=30)
    assert _agent_pids(bot) and not (_agent_pids(bot) & agents)
    assert NEVER_AWAITED not in bot.stderr()


async def test_an_idle_agent_is_recycled_into_a_fresh_one_that_goes_on(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    tg_ws.configure(
        {
            "agent": {
                "idle_timeout_seconds": 600,
                "idle_check_interval_seconds": 1,
                "recycle_after_idle_seconds": 2,
            }
        }
    )
    bot = await start_bot(tg_ws, telegram)
    await sign_up_byok(ada, key)
    ada.send("remember the word heron")
    await ada.wait_text("echo: remember the word heron", within=30)

    # Idle for the recycle time: a new agent process replaces it, the used one exits (read
    # from the log: the swap may come before this test first looks at the processes).
    await eventually(
        lambda: len(_started(bot)) == 2 and _agent_pids(bot) == {_started(bot)[1]},
        within=10,
        message=lambda: f"agents {_agent_pids(bot)}, started {_started(bot)}\n{bot.stderr()}",
    )
    fresh = _agent_pids(bot)
    await asyncio.sleep(3)  # more ticks: a fresh agent that answered nothing stays
    assert _agent_pids(bot) == fresh

    ada.send("what was the word")
    await ada.wait_text("echo: what was the word", within=30)
    assert _agent_pids(bot) == fresh  # the recycled agent answered, no new start
    assert llm.keys()[-1] == key
    assert "heron" in str(llm.requests[-1].body)  # the conversation went on
    assert "recycled 1 idle agents" in bot.stderr()
    assert NEVER_AWAITED not in bot.stderr()


async def test_an_agent_is_recycled_from_its_reply_not_from_the_idle_check(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    tg_ws.configure(
        {
            "agent": {
                "idle_timeout_seconds": 600,
                "idle_check_interval_seconds": 3600,  # the idle job never runs in this test
                "recycle_after_idle_seconds": 1,
            }
        }
    )
    bot = await start_bot(tg_ws, telegram)
    await sign_up_byok(ada, key)

    ada.send("remember the word egret")
    await ada.wait_text("echo: remember the word egret", within=30)
    # One second after the reply a fresh fork replaces the agent that answered it.
    await eventually(
        lambda: len(_started(bot)) == 2 and _agent_pids(bot) == {_started(bot)[1]},
        within=10,
        message=lambda: f"agents {_agent_pids(bot)}, started {_started(bot)}\n{bot.stderr()}",
    )
    ada.send("what was the word")
    await ada.wait_text("echo: what was the word", within=30)
    assert llm.keys()[-1] == key
    assert "egret" in str(llm.requests[-1].body)  # the conversation went on
    # The fresh one answered, so it is recycled in turn, again without the idle job.
    await eventually(
        lambda: len(_started(bot)) == 3 and _agent_pids(bot) == {_started(bot)[2]},
        within=10,
        message=lambda: f"agents {_agent_pids(bot)}, started {_started(bot)}\n{bot.stderr()}",
    )
    assert bot.stderr().count("recycled 1 idle agents") == 2
    assert NEVER_AWAITED not in bot.stderr()


async def test_a_reservation_orphaned_by_a_crash_is_released_after_restart(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    enable_proxy(
        tg_ws,
        llm,
        canaries,
        proxy={
            "reservation_ttl_seconds": 3,
            "upstream_timeout_seconds": 2,
            "sweep_interval_seconds": 1,
        },
    )
    bot = await start_bot(tg_ws, telegram)
    await sign_up_managed(ada)
    ada.send("first")
    await ada.wait_text("echo: first", within=30)
    # Settled in the background once the reply ended.
    await eventually(lambda: query(tg_ws, "SELECT count(*) FROM budget_reservations") == [(0,)])

    llm.gate = asyncio.Event()  # the next reply stops after its first words
    llm.mid_stream.clear()
    ada.send("second")
    await asyncio.wait_for(llm.mid_stream.wait(), 30)
    orphans = query(tg_ws, "SELECT id FROM budget_reservations")
    assert len(orphans) == 1
    await bot.kill()  # kill -9 mid-reply: nobody settles the reservation
    llm.gate.set()
    llm.gate = None
    (reserved,) = query(tg_ws, "SELECT tokens_reserved FROM budgets")[0]
    assert reserved > 0
    assert query(tg_ws, "SELECT id FROM budget_reservations") == orphans

    bot = await start_bot(tg_ws, telegram)

    def released() -> bool:
        rows = query(tg_ws, "SELECT id FROM budget_reservations")
        return not set(rows) & set(orphans)

    await eventually(
        released,
        within=10,
        message=lambda: f"the orphaned reservation is still held\n{bot.stderr()}",
    )
    await eventually(
        lambda: (
            query(tg_ws, "SELECT tokens_reserved, usd_micros_reserved FROM budgets") == [(0, 0)]
        ),
        within=10,
        message=lambda: str(_budgets(tg_ws)),
    )
    ada.send("/usage")
    await ada.wait_text("Plan allowance this month")
    ada.send("third")
    await ada.wait_text("echo: third", within=30)


async def test_last_months_budgets_are_rolled_into_this_month(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    enable_proxy(tg_ws, llm, canaries, proxy={"sweep_interval_seconds": 1})
    bot = await start_bot(tg_ws, telegram)
    await sign_up_managed(ada)
    ada.send("spend a little")
    await ada.wait_text("echo: spend a little", within=30)
    await eventually(lambda: query(tg_ws, "SELECT tokens_spent FROM budgets")[0][0] > 0)
    assert await bot.terminate() == 0

    # The bot was down over the turn of the month: its budget row is last month's.
    this_month = _month_start(datetime.now(UTC).date())
    last_month = _previous_month(this_month)
    assert (
        execute(
            tg_ws,
            "UPDATE budgets SET period_start = ?, alerted_pct = 50",
            last_month.isoformat(),
        )
        == 1
    )

    bot = await start_bot(tg_ws, telegram)
    # Nobody writes: the running job rolls the row into this month, at zero.
    await eventually(
        lambda: (
            query(
                tg_ws,
                "SELECT period_start, tokens_spent, usd_micros_spent, alerted_pct FROM budgets",
            )
            == [(this_month.isoformat(), 0, 0, 0)]
        ),
        within=10,
        message=lambda: f"{_budgets(tg_ws)}\n{bot.stderr()}",
    )
    assert NEVER_AWAITED not in bot.stderr()
