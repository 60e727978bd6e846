"""Times one agent reply for ``/metrics``: to the first visible text, and to its end."""

from __future__ import annotations

import time

from core.metrics import REPLIES, REPLY_FIRST_VISIBLE, REPLY_WHOLE


class ReplyTimer:
    """Started when the bot takes up a message; each observation is recorded once."""

    def __init__(self, platform: str) -> None:
        self.platform = platform
        self.started = time.monotonic()
        self._first = False

    def first_visible(self) -> None:
        if not self._first:
            self._first = True
            REPLY_FIRST_VISIBLE.labels(self.platform).observe(time.monotonic() - self.started)

    def done(self, outcome: str) -> None:
        """``ok``, ``unavailable`` (refused before any text) or ``failed`` (broke mid-way)."""
        REPLIES.labels(self.platform, outcome).inc()
        if outcome == "ok":
            REPLY_WHOLE.labels(self.platform).observe(time.monotonic() - self.started)
