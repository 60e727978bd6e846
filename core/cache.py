"""A small bounded, time-limited cache for hot per-message lookups (tenant, flow state).

Writes in this process invalidate their entries at once; the time limit bounds how long a
change made by *another* replica can go unseen (see ARCHITECTURE's scale-out).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Generic, TypeVar

LISTENING_SECONDS = 60.0
"""How long the per-process caches of what the change feed announces (tenants, flows, agent
profiles) keep an entry while that feed is listening: every change is heard then, and every
reconnection drops everything. Without it they keep the short TTL they were made with."""

K = TypeVar("K")
V = TypeVar("V")

_MISSING = object()


class TTLCache(Generic[K, V]):
    """LRU-bounded mapping whose entries expire ``ttl`` seconds after they were stored."""

    def __init__(self, *, ttl: float, max_items: int = 100_000) -> None:
        self._ttl = ttl
        self._max = max_items
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        # Bumped by every invalidation: a value read before one is not stored after it
        # (another replica's change announced while this process was reading).
        self.generation = 0

    def get(self, key: K, *, ttl: float | None = None) -> tuple[bool, V | None]:
        """(hit, value); a miss, or an entry older than ``ttl`` (the cache's own by default).

        A miss gives (False, None).
        """
        item = self._data.get(key)
        if item is None:
            return False, None
        at, value = item
        if time.monotonic() - at > (self._ttl if ttl is None else ttl):
            del self._data[key]
            return False, None
        self._data.move_to_end(key)
        return True, value

    def put(self, key: K, value: V, *, since: int | None = None) -> None:
        """Store ``value``; skipped when ``since`` (a ``generation``) is no longer current."""
        if since is not None and since != self.generation:
            return
        self._data[key] = (time.monotonic(), value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def invalidate(self, key: K) -> None:
        self.generation += 1
        self._data.pop(key, None)

    def clear(self) -> None:
        self.generation += 1
        self._data.clear()
