"""The Telegram outbound scheduler (adapters/telegram/pacing.py) on its own.

A manual clock drives the windows; ``dispatch()`` is called by hand after moving it (the
scheduler's own timer counts real time and only ever grants later, never more).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from telegram.error import BadRequest, NetworkError, RetryAfter, TimedOut

from adapters.telegram import TelegramAdapter
from adapters.telegram.config import parse
from adapters.telegram.pacing import FloodLimits, FloodScheduler, Priority, Window, granted
from core.chat import ChatRef, Platform, Reply
from core.config import PlatformSettings
from core.metrics import REGISTRY
from tests.fakes.telegram_server import (
    PROXY_VARS,
    FakeTelegramServer,
    FloodRules,
    Script,
    TickingClock,
)

SMALL = FloodLimits(
    bot=Window(4, 1.0, reserve=1), chat=Window(2, 3.0, reserve=1), group=Window(3, 60.0, reserve=1)
)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"platform": "telegram"}) or 0.0


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_request_occupies_its_windows_in_flight_and_counts_from_its_end() -> None:
    clock = TickingClock(100.0)
    sched = FloodScheduler(SMALL, clock=clock)
    first = await sched.acquire("1")
    second = await sched.acquire("1")
    third = asyncio.create_task(sched.acquire("1"))
    await settle()
    assert not third.done()  # two in flight fill the chat's window

    clock.now += 10.0  # however long they travel, they hold their room until answered
    sched.dispatch()
    await settle()
    assert not third.done()

    first.release()  # answered at 110: counted in the window until 113
    second.release()
    await settle()
    assert not third.done()
    clock.now += 2.9
    sched.dispatch()
    await settle()
    assert not third.done()
    clock.now += 0.2
    sched.dispatch()
    await settle()
    assert third.done()
    third.result().release()
    await sched.shutdown()


async def test_low_updates_leave_the_reserve_to_first_answers_which_go_first() -> None:
    clock = TickingClock(100.0)
    sched = FloodScheduler(SMALL, clock=clock)
    # The chat window holds 2; LOW ones must leave 1 of them.
    low = sched.try_acquire("1", Priority.LOW)
    assert low is not None
    low.release()
    assert sched.try_acquire("1", Priority.LOW) is None
    high = await sched.acquire("1", Priority.HIGH)  # the reserve
    high.release()

    # Across chats, the bot window (4, reserve 1): a waiting HIGH is served before older LOWs.
    clock.now += 1.01
    for chat in ("2", "3", "4"):
        slot = sched.try_acquire(chat, Priority.LOW)
        assert slot is not None
        slot.release()
    waiting_low = asyncio.create_task(sched.acquire("5", Priority.LOW))
    await settle()
    waiting_high = asyncio.create_task(sched.acquire("6", Priority.HIGH))
    await settle()
    assert not waiting_low.done()  # LOW: 3 of the bot's 4 in the last second
    assert waiting_high.done()  # the reserve
    waiting_high.result().release()
    waiting_high = asyncio.create_task(sched.acquire("6", Priority.HIGH))
    await settle()
    assert not waiting_high.done()  # now the window is full for everyone
    assert sched.try_acquire("7", Priority.LOW) is None  # nobody jumps the queue

    clock.now += 1.01
    sched.dispatch()
    await settle()
    assert waiting_high.done() and waiting_low.done()
    waiting_high.result().release()
    waiting_low.result().release()
    await sched.shutdown()


async def test_a_group_has_its_minute_window_beside_the_chat_one() -> None:
    clock = TickingClock(100.0)
    sched = FloodScheduler(SMALL, clock=clock)
    for _ in range(3):
        slot = await sched.acquire("-100")
        slot.release()
        clock.now += 3.1  # the chat window (2 in 3 s) is never the limit here
    blocked = asyncio.create_task(sched.acquire("-100"))
    await settle()
    assert not blocked.done()  # 3 in the group's minute
    other = await sched.acquire("-200")  # another group is not held back
    other.release()
    clock.now += 60.0 - 3 * 3.1 + 0.01
    sched.dispatch()
    await settle()
    assert blocked.done()
    blocked.result().release()
    await sched.shutdown()


async def test_a_granted_slot_goes_to_the_next_message_request_or_is_given_back() -> None:
    clock = TickingClock(100.0)
    sched = FloodScheduler(SMALL, clock=clock)
    calls: list[str] = []

    async def send() -> bool:
        calls.append("sent")
        return True

    slot = sched.try_acquire("1", Priority.LOW)
    assert slot is not None
    with granted(slot):
        # Not a message request: the slot stays for the next one.
        await sched.process_request(send, (), {}, "sendChatAction", {"chat_id": 1}, None)
        assert slot.open
        await sched.process_request(send, (), {}, "sendMessageDraft", {"chat_id": 1}, None)
        assert not slot.open
    # Two LOW slots were never taken: the chat's window holds one (LOW leaves one).
    assert sched.try_acquire("1", Priority.LOW) is None

    unused = sched.try_acquire("2", Priority.LOW)
    assert unused is not None
    with granted(unused):
        pass  # the stream found nothing new to show
    assert not unused.open
    assert calls == ["sent", "sent"]
    await sched.shutdown()


async def test_a_waiter_cancelled_after_its_grant_gives_the_slot_back() -> None:
    clock = TickingClock(100.0)
    sched = FloodScheduler(FloodLimits(Window(10, 1.0), Window(1, 3.0), Window(10, 60.0)))
    sched._clock = clock
    held = await sched.acquire("1")
    waiter = asyncio.create_task(sched.acquire("1"))
    await settle()
    held.release()
    clock.now += 3.1
    sched.dispatch()  # grants the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    clock.now += 3.1
    sched.dispatch()
    again = sched.try_acquire("1", Priority.HIGH)
    assert again is not None  # not leaked: the window is free again
    again.release()
    await sched.shutdown()


class Flaky:
    """A request callback that raises each of ``errors`` in turn, then answers."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return {"ok": True}


def timed_out(cause: BaseException) -> TimedOut:
    err = TimedOut()
    err.__cause__ = cause
    return err


@pytest.mark.parametrize("endpoint", ["sendMessageDraft", "editMessageText", "deleteMessage"])
async def test_5xx_and_timeouts_are_retried_where_repeating_is_harmless(endpoint: str) -> None:
    sched = FloodScheduler(retries=3, backoff=0.001)
    retried = metric("byokbot_platform_retries_total")
    call = Flaky(NetworkError("Bad Gateway"), timed_out(httpx.ReadTimeout("read")))
    assert await sched.process_request(call, (), {}, endpoint, {"chat_id": 1}, None) == {"ok": True}
    assert call.calls == 3 and sched.retried == 2
    assert metric("byokbot_platform_retries_total") == retried + 2
    await sched.shutdown()


async def test_a_message_whose_answer_may_be_lost_is_not_sent_again() -> None:
    sched = FloodScheduler(retries=3, backoff=0.001)
    # Telegram answered 502, or the request never left: no message was made, send again.
    for error in (NetworkError("Bad Gateway"), timed_out(httpx.ConnectTimeout("connect"))):
        call = Flaky(error)
        await sched.process_request(call, (), {}, "sendMessage", {"chat_id": 1}, None)
        assert call.calls == 2
    # The request left and no answer came: the message may be in the chat already.
    call = Flaky(timed_out(httpx.ReadTimeout("read")))
    with pytest.raises(TimedOut):
        await sched.process_request(call, (), {}, "sendMessage", {"chat_id": 1}, None)
    assert call.calls == 1
    # A refusal is never retried.
    call = Flaky(BadRequest("Bad Request: chat not found"))
    with pytest.raises(BadRequest):
        await sched.process_request(call, (), {}, "editMessageText", {"chat_id": 1}, None)
    assert call.calls == 1
    await sched.shutdown()


async def test_every_429_is_counted_once_retried_or_not() -> None:
    sched = FloodScheduler(retries=1)
    limited = metric("byokbot_platform_rate_limited_total")
    call = Flaky(RetryAfter(0), RetryAfter(0), RetryAfter(0))
    with pytest.raises(RetryAfter):
        await sched.process_request(call, (), {}, "sendMessage", {"chat_id": 1}, None)
    assert call.calls == 2 and sched.rate_limited == 2
    assert metric("byokbot_platform_rate_limited_total") == limited + 2
    # getUpdates keeps its own retry loop, but its 429s are counted here too.
    polled = Flaky(RetryAfter(0))
    with pytest.raises(RetryAfter):
        await sched.process_request(polled, (), {}, "getUpdates", {}, None)
    assert metric("byokbot_platform_rate_limited_total") == limited + 3
    await sched.shutdown()


# ----- against the fake Bot API with its flood limits on -------------------------------------

TOKEN = "5550001234:AAE-pacing-TOKEN-0123456789"


@pytest.fixture
async def flooded(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTelegramServer]:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    fake = FakeTelegramServer(token=TOKEN)
    await fake.start()
    # Telegram's limits, the group's minute shrunk to 2 s so the test is quick.
    fake.enforce_flood_limits(FloodRules(per_group=4, group_seconds=2.0))
    yield fake
    await fake.stop()


async def test_the_fake_refuses_what_telegram_would_with_retry_after(
    flooded: FakeTelegramServer,
) -> None:
    url = f"{flooded.base_url}{TOKEN}/sendMessage"
    async with aiohttp.ClientSession() as http:
        answers = []
        for i in range(4):
            async with http.post(url, json={"chat_id": 42, "text": f"m{i}"}) as r:
                answers.append((r.status, await r.json()))
        async with http.post(
            f"{flooded.base_url}{TOKEN}/sendChatAction", json={"chat_id": 42}
        ) as r:
            assert r.status == 200  # not a message: not limited
    assert [s for s, _ in answers] == [200, 200, 200, 429]  # bursts of 3 in a chat
    body = answers[3][1]
    assert body["ok"] is False and body["error_code"] == 429
    assert body["parameters"]["retry_after"] >= 1
    assert len(flooded.flood_refusals()) == 1
    assert flooded.texts(42) == ["m0", "m1", "m2"]


async def adapter_on(fake: FakeTelegramServer, limits: FloodLimits) -> TelegramAdapter:
    settings = PlatformSettings(
        "telegram",
        True,
        {"api_base_url": fake.base_url, "file_base_url": fake.file_base_url, "poll_timeout": 1},
    )
    adapter = TelegramAdapter(parse(settings, {"TELEGRAM_BOT_TOKEN": TOKEN}), limits=limits)
    await adapter.start(Script())
    return adapter


async def test_the_scheduler_keeps_under_the_fakes_limits_in_chats_groups_and_the_bot(
    flooded: FakeTelegramServer,
) -> None:
    limits = FloodLimits(group=Window(4, 2.05, reserve=1))
    adapter = await adapter_on(flooded, limits)
    try:
        direct = ChatRef(Platform.TELEGRAM, "42", is_direct=True)
        group = ChatRef(Platform.TELEGRAM, "-100777", is_direct=False)
        many = [ChatRef(Platform.TELEGRAM, str(1000 + i), is_direct=True) for i in range(45)]
        sends = [adapter.send(direct, Reply(f"d{i}")) for i in range(5)]
        sends += [adapter.send(group, Reply(f"g{i}")) for i in range(6)]
        sends += [adapter.send(chat, Reply("hello")) for chat in many]
        await asyncio.gather(*sends)
    finally:
        await adapter.stop()
    assert flooded.flood_refusals() == []
    assert sorted(flooded.texts(42)) == [f"d{i}" for i in range(5)]
    assert sorted(flooded.texts(-100777)) == [f"g{i}" for i in range(6)]
    assert all(flooded.texts(c.id) == ["hello"] for c in many)
    assert flooded.most_in_window(-100777, 2.0) <= 4
