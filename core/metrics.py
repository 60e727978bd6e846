"""Prometheus metrics of one byokbot process, and the small hooks that feed them.

Every metric lives in ``REGISTRY`` (not prometheus-client's global one), so ``/metrics`` shows
byokbot's numbers only and tests can read them without other libraries' collectors.

Labels are closed sets chosen here (platform, event kind, outcome, job name, model and api from
the operator's configuration, an HTTP status): never a person's id, a tenant id, a key or
message text. Counters are per process; with several replicas Prometheus labels each by
``instance`` and ``sum()`` adds them up.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "AGENT_CRASHES",
    "BUDGET_REFUSALS",
    "INTAKE_SESSIONS",
    "JOB_FAILURES",
    "JOB_RUNS",
    "LEAK_GUARD_HITS",
    "PLATFORM_RATE_LIMITED",
    "PLATFORM_RETRIES",
    "PROXY_REQUESTS",
    "PROXY_SPEND",
    "PROXY_TOKENS",
    "REGISTRY",
    "REPLIES",
    "REPLY_FIRST_VISIBLE",
    "REPLY_WHOLE",
    "UPDATES",
    "AgentCollector",
    "counted_job",
    "watch_sdk_retries",
]

REGISTRY: Final = CollectorRegistry()

# Seconds: from the message reaching the router to the first text a person sees, and to the
# end of the reply. Agents answer in a few seconds; slow providers take up to a minute or two.
_LATENCY_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120)

UPDATES: Final = Counter(
    "byokbot_updates",
    "Events received from chat platforms",
    ["platform", "kind"],
    registry=REGISTRY,
)
REPLIES: Final = Counter(
    "byokbot_replies",
    "Agent replies by outcome (ok, unavailable, failed)",
    ["platform", "outcome"],
    registry=REGISTRY,
)
REPLY_FIRST_VISIBLE: Final = Histogram(
    "byokbot_reply_first_visible_seconds",
    "Time from a message reaching the bot to the first reply text handed to the platform",
    ["platform"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
REPLY_WHOLE: Final = Histogram(
    "byokbot_reply_seconds",
    "Time from a message reaching the bot to the end of the whole reply",
    ["platform"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
PLATFORM_RATE_LIMITED: Final = Counter(
    "byokbot_platform_rate_limited",
    "HTTP 429 answers from a chat platform",
    ["platform"],
    registry=REGISTRY,
)
PLATFORM_RETRIES: Final = Counter(
    "byokbot_platform_retries",
    "Calls to a chat platform retried after a 429 or a connection error",
    ["platform"],
    registry=REGISTRY,
)
AGENT_CRASHES: Final = Counter(
    "byokbot_agent_crashes",
    "Agent processes that exited unexpectedly or failed to start",
    registry=REGISTRY,
)
INTAKE_SESSIONS: Final = Counter(
    "byokbot_intake_sessions",
    "One-time key intake sessions by event (opened, used, expired)",
    ["event"],
    registry=REGISTRY,
)
LEAK_GUARD_HITS: Final = Counter(
    "byokbot_leak_guard_hits",
    "Messages the leak guard caught carrying an API key",
    ["platform"],
    registry=REGISTRY,
)
PROXY_REQUESTS: Final = Counter(
    "byokbot_proxy_requests",
    "Requests to the metering proxy by API and HTTP status",
    ["api", "status"],
    registry=REGISTRY,
)
PROXY_TOKENS: Final = Counter(
    "byokbot_proxy_tokens",
    "Tokens billed through the metering proxy",
    ["model", "direction"],
    registry=REGISTRY,
)
PROXY_SPEND: Final = Counter(
    "byokbot_proxy_spend_usd",
    "US dollars billed through the metering proxy",
    ["model"],
    registry=REGISTRY,
)
BUDGET_REFUSALS: Final = Counter(
    "byokbot_budget_refusals",
    "Proxy requests refused by the budget (cap, rate, not_metered)",
    ["reason"],
    registry=REGISTRY,
)
JOB_RUNS: Final = Counter("byokbot_job_runs", "Background job runs", ["job"], registry=REGISTRY)
JOB_FAILURES: Final = Counter(
    "byokbot_job_failures", "Background job runs that raised", ["job"], registry=REGISTRY
)

log = logging.getLogger("byokbot.metrics")
R = TypeVar("R")


def counted_job(
    name: str, run: Callable[[], Coroutine[Any, Any, R]]
) -> Callable[[], Coroutine[Any, Any, R]]:
    """``run`` counting its runs and failures (the failure still propagates to APScheduler)."""

    @functools.wraps(run)
    async def counted() -> R:
        JOB_RUNS.labels(name).inc()
        try:
            return await run()
        except BaseException:
            JOB_FAILURES.labels(name).inc()
            raise

    return counted


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` from /proc (0 when it is gone or /proc is not Linux's)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return 0


class AgentCollector(Collector):
    """Live agents and their resident memory, read at scrape time from ``pids()``."""

    def __init__(self, pids: Callable[[], Sequence[int]]) -> None:
        self._pids = pids

    def collect(self) -> Iterable[Metric]:
        pids = list(self._pids())
        sizes = [rss_bytes(p) for p in pids]
        live = GaugeMetricFamily("byokbot_agents_live", "Live agent processes")
        live.add_metric([], len(pids))
        memory = GaugeMetricFamily(
            "byokbot_agents_memory_bytes", "Resident memory of all live agent processes"
        )
        memory.add_metric([], sum(sizes))
        largest = GaugeMetricFamily(
            "byokbot_agent_memory_max_bytes", "Resident memory of the largest live agent"
        )
        largest.add_metric([], max(sizes, default=0))
        own = GaugeMetricFamily("byokbot_process_memory_bytes", "Resident memory of byokbot")
        own.add_metric([], rss_bytes(os.getpid()))
        return [live, memory, largest, own]

    def describe(self) -> Iterable[Metric]:
        return []  # collected anew at each scrape; nothing to check at registration


_agents: AgentCollector | None = None


def watch_agents(pids: Callable[[], Sequence[int]]) -> None:
    """Report ``pids()`` as the live agents (the last caller wins: one supervisor a process)."""
    global _agents
    if _agents is not None:
        REGISTRY.unregister(_agents)
    _agents = AgentCollector(pids)
    REGISTRY.register(_agents)


# What each SDK logs when it meets a 429 and retries; their own retry loops never reach our
# code, so their log records are the only place to see them. (Telegram's requests pass through
# our own scheduler, adapters/telegram/pacing.py, which counts its 429s itself.)
_SDK_RETRY_LINES: Final = (
    ("discord", "discord.http", ("We are being rate limited", "Global rate limit")),
)


class _RetryWatch(logging.Handler):
    def __init__(self, platform: str, markers: tuple[str, ...]) -> None:
        super().__init__(logging.DEBUG)
        self.platform, self.markers = platform, markers

    def emit(self, record: logging.LogRecord) -> None:
        text = str(record.msg)
        if any(m in text for m in self.markers):
            PLATFORM_RATE_LIMITED.labels(self.platform).inc()
            if "Retrying" in text:
                PLATFORM_RETRIES.labels(self.platform).inc()


def watch_sdk_retries() -> None:
    """Count the 429s the platform SDKs retry on their own (idempotent)."""
    for platform, name, markers in _SDK_RETRY_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _RetryWatch) for h in logger.handlers):
            logger.addHandler(_RetryWatch(platform, markers))
