"""Component tests of the operations pieces: health server, metrics hooks, JSON logs, config."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from core.config import parse_config
from core.errors import ConfigError
from core.health import HealthServer, Readiness, run_checks
from core.metrics import (
    JOB_FAILURES,
    JOB_RUNS,
    PLATFORM_RATE_LIMITED,
    PLATFORM_RETRIES,
    REGISTRY,
    counted_job,
    rss_bytes,
    watch_agents,
    watch_sdk_retries,
)


def value(name: str, **labels: str) -> float:
    got = REGISTRY.get_sample_value(name, labels)
    return got or 0.0


async def _fetch(port: int, path: str) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession(trust_env=False) as http,
        http.get(f"http://127.0.0.1:{port}{path}") as r,
    ):
        return r.status, r.headers["Content-Type"], await r.text()


async def test_readyz_answers_503_naming_only_the_failing_checks() -> None:
    async def fine() -> str | None:
        return None

    async def broken() -> str | None:
        return "not running"

    async def raising() -> str | None:
        raise OSError("boom")

    server = HealthServer(
        "127.0.0.1",
        0,
        [Readiness("database", fine), Readiness("scheduler", broken), Readiness("x", raising)],
    )
    port = await server.start()
    try:
        status, _, body = await _fetch(port, "/readyz")
        assert status == 503
        assert body == "scheduler: not running\nx: OSError\n"
        assert (await _fetch(port, "/healthz"))[0] == 200
        server.checks = [Readiness("database", fine)]
        assert (await _fetch(port, "/readyz"))[::2] == (200, "ready\ndatabase: ok\n")
        status, ctype, text = await _fetch(port, "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert "# TYPE byokbot_updates_total counter" in text
    finally:
        await server.stop()


async def test_a_check_that_hangs_is_reported_not_awaited_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("core.health.CHECK_TIMEOUT", 0.05)

    async def hangs() -> str | None:
        await asyncio.sleep(10)
        return None

    assert await run_checks([Readiness("db", hangs)]) == [("db", "no answer within 0.05 s")]


async def test_counted_job_counts_runs_and_failures() -> None:
    async def ok() -> int:
        return 1

    async def bad() -> None:
        raise RuntimeError("no")

    runs, fails = (
        value("byokbot_job_runs_total", job="t-ok"),
        value("byokbot_job_failures_total", job="t-bad"),
    )
    assert await counted_job("t-ok", ok)() == 1
    with pytest.raises(RuntimeError):
        await counted_job("t-bad", bad)()
    assert value("byokbot_job_runs_total", job="t-ok") == runs + 1
    assert value("byokbot_job_failures_total", job="t-bad") == fails + 1
    assert JOB_RUNS and JOB_FAILURES  # the families exist under their names


def test_sdk_retry_log_lines_are_counted() -> None:
    watch_sdk_retries()
    watch_sdk_retries()  # idempotent: one handler per logger
    before = value("byokbot_platform_rate_limited_total", platform="discord")
    retried = value("byokbot_platform_retries_total", platform="discord")
    logger = logging.getLogger("discord.http")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        logger.warning(
            "We are being rate limited. %s %s responded with 429. Retrying in %.2f seconds.",
            "POST",
            "/x",
            1.0,
        )
        logger.warning("something else entirely")
    finally:
        logger.setLevel(level)
    assert value("byokbot_platform_rate_limited_total", platform="discord") == before + 1
    assert value("byokbot_platform_retries_total", platform="discord") == retried + 1
    assert PLATFORM_RATE_LIMITED and PLATFORM_RETRIES


async def test_slack_429s_and_retries_are_counted() -> None:
    from slack_sdk.http_retry import HttpRequest, HttpResponse, RetryState

    from adapters.slack.throttle import CountedRateLimitRetryHandler

    handler = CountedRateLimitRetryHandler(max_retry_count=2)
    before = value("byokbot_platform_rate_limited_total", platform="slack")
    retries = value("byokbot_platform_retries_total", platform="slack")
    request = HttpRequest(method="POST", url="http://x/api/chat.postMessage", headers={})
    limited = HttpResponse(status_code=429, headers={"retry-after": ["0"]})
    state = RetryState()
    assert await handler.can_retry_async(state=state, request=request, response=limited)
    await handler.prepare_for_next_attempt_async(state=state, request=request, response=limited)
    ok = HttpResponse(status_code=200, headers={})
    assert not await handler.can_retry_async(state=state, request=request, response=ok)
    assert value("byokbot_platform_rate_limited_total", platform="slack") == before + 1
    assert value("byokbot_platform_retries_total", platform="slack") == retries + 1


def test_agent_collector_reports_live_agents_and_memory() -> None:
    import os

    watch_agents(lambda: [os.getpid(), 2**22 + 12345])  # this process and a pid that is gone
    assert value("byokbot_agents_live") == 2
    assert value("byokbot_agents_memory_bytes") == pytest.approx(rss_bytes(os.getpid()), rel=0.5)
    assert rss_bytes(2**22 + 12345) == 0
    watch_agents(list)  # replaced, not added: one collector
    assert value("byokbot_agents_live") == 0


def _parse(tables: dict[str, object]) -> object:
    return parse_config(tables, source="c.toml", base_dir=Path("/tmp"))


def test_health_and_logging_tables() -> None:
    cfg = parse_config(
        {"health": {"listen": "[::1]:9464"}, "logging": {"format": "json"}},
        source="c.toml",
        base_dir=Path("/tmp"),
    )
    assert (cfg.health.host, cfg.health.port, cfg.health.enabled) == ("::1", 9464, True)
    assert cfg.logging.format == "json"
    off = parse_config({}, source="c.toml", base_dir=Path("/tmp"))
    assert not off.health.enabled and off.logging.format == "text"
    for bad, message in (
        ({"health": {"listen": "9464"}}, r'\[health\] listen must look like "127.0.0.1:9464"'),
        ({"health": {"listen": "host:99999"}}, r"\[health\] listen must look like"),
        ({"health": {"port": 1}}, r"\[health\] port is not a known setting"),
        ({"logging": {"format": "xml"}}, r"\[logging\] format must be one of text, json"),
    ):
        with pytest.raises(ConfigError, match=message):
            _parse(bad)


async def test_backup_and_restore_refuse_what_they_cannot_do(tmp_path: Path) -> None:
    from bot.backup import backup, restore

    pg = parse_config(
        {"core": {"database_url": "postgresql+asyncpg://u@127.0.0.1:1/x"}},
        source="c.toml",
        base_dir=tmp_path,
    )
    with pytest.raises(ConfigError, match="SQLite only; back up PostgreSQL with pg_dump"):
        await backup(pg, tmp_path / "b.db")
    lite = parse_config({}, source="c.toml", base_dir=tmp_path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError, match="not a byokbot backup"):
        await restore(lite, {}, junk, force=False)
    with pytest.raises(ConfigError, match="no such backup file"):
        await restore(lite, {}, tmp_path / "missing.db", force=False)
