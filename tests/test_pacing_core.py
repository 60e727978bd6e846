"""The platform-neutral outbound scheduler (core/pacing.py): windows, priorities, retries."""

from __future__ import annotations

import asyncio

import pytest

from core.pacing import OutboundScheduler, Priority, Window, with_retries

WINDOWS = {"global": Window(10, 1.0), "channel": Window(2, 0.2, reserve=1)}
KEYS = (("global", ""), ("channel", "c1"))


async def test_a_window_holds_requests_until_its_oldest_expires() -> None:
    s = OutboundScheduler(WINDOWS)
    loop = asyncio.get_running_loop()
    first = await s.acquire(KEYS)
    first.release()
    second = await s.acquire(KEYS)
    second.release()
    started = loop.time()
    third = await s.acquire(KEYS)  # the channel holds 2 per 0.2 s
    assert loop.time() - started >= 0.15
    third.release()
    s.close()


async def test_low_priority_leaves_the_reserve_and_high_goes_first() -> None:
    s = OutboundScheduler(WINDOWS)
    held = await s.acquire(KEYS, Priority.LOW)
    assert s.try_acquire(KEYS, Priority.LOW) is None  # the last slot is kept for HIGH
    order: list[str] = []

    async def take(name: str, priority: Priority) -> None:
        slot = await s.acquire(KEYS, priority)
        order.append(name)
        slot.release()

    low = asyncio.create_task(take("low", Priority.LOW))
    await asyncio.sleep(0)
    high = asyncio.create_task(take("high", Priority.HIGH))
    held.release()
    await asyncio.gather(low, high)
    assert order == ["high", "low"]
    s.close()


async def test_retries_stop_at_an_error_that_is_not_retryable() -> None:
    tries: list[int] = []

    async def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise TimeoutError
        return "ok"

    assert (
        await with_retries(flaky, retryable=lambda e: isinstance(e, TimeoutError), backoff=0)
        == "ok"
    )
    assert len(tries) == 3

    async def refused() -> str:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await with_retries(refused, retryable=lambda e: isinstance(e, TimeoutError), backoff=0)
