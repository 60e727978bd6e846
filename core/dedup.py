"""Remembering which platform deliveries were already processed, so a redelivery is a no-op."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol


class Deduplicator(Protocol):
    """Answers "is this the first time we see this delivery?" atomically."""

    async def first_time(self, key: str) -> bool:
        """True exactly once per key (within the retention window)."""
        ...


class InMemoryDeduplicator:
    """Bounded, time-limited memory of delivery ids for one process.

    Platforms redeliver within minutes (Telegram webhooks, Slack retries, Discord resumes), so a
    window of an hour and 100k ids covers them with a few MiB at most.
    """

    def __init__(self, *, max_items: int = 100_000, ttl_seconds: float = 3600.0) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max = max_items
        self._ttl = ttl_seconds

    async def first_time(self, key: str) -> bool:
        now = time.monotonic()
        while self._seen:
            oldest_key, at = next(iter(self._seen.items()))
            if now - at < self._ttl and len(self._seen) < self._max:
                break
            del self._seen[oldest_key]
        if key in self._seen:
            return False
        self._seen[key] = now
        return True
