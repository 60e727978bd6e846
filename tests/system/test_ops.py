"""Operating byokbot (issue 16): health and metrics while people chat, /whoami, doctor, backups.

Everything goes through the console script: ``byokbot run`` with ``[health] listen`` scraped
over HTTP, ``byokbot doctor`` / ``backup`` / ``restore`` run to their exit code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from collections.abc import Callable

import aiohttp

from tests.canaries import anthropic_key
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.cli_helpers import assert_one_error, closed_port, run_to_exit
from tests.system.discord_fixtures import DISCORD_TOKEN_ENV, discord, discord_tables
from tests.system.harness import BotProcess, CanaryScan, Workspace
from tests.system.managed_support import enable_proxy, free_port, sign_up_managed
from tests.system.people import TelegramPerson
from tests.system.slack_fixtures import SlackSide, slack_fixture
from tests.system.telegram_steps import llm_saw, sign_up_with_key, start_bot

__all__ = ["discord", "slack_fixture"]  # fixtures used by the tests below


async def get(url: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(trust_env=False) as http,
        http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r,
    ):
        return r.status, await r.text()


async def scrape_until(url: str, ready: Callable[[str], bool], within: float = 15) -> str:
    """Scrape ``url`` until ``ready(text)``; fail with the last scrape."""
    deadline = time.monotonic() + within
    while True:
        status, text = await get(url)
        assert status == 200, text
        if ready(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never got there:\n{text}")
        await asyncio.sleep(0.2)


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if m is None or m.group(1) != name:
            continue
        got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
        if not want or got == want:
            total += float(m.group(3))
    return total


def with_health(ws: Workspace) -> str:
    port = free_port()
    ws.configure(
        {
            "health": {"listen": f"127.0.0.1:{port}"},
            "core": {"intake_sweep_interval_seconds": 1},
        }
    )
    return f"http://127.0.0.1:{port}"


async def test_readyz_and_metrics_while_people_chat(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    enable_proxy(tg_ws, llm, canaries)
    base = with_health(tg_ws)
    key, pasted = anthropic_key(), anthropic_key()
    canaries.add(key, pasted)
    bot = await start_bot(tg_ws)
    await bot.wait_output(r"health listener on 127\.0\.0\.1:\d+")

    assert await get(f"{base}/healthz") == (200, "ok\n")
    status, body = await get(f"{base}/readyz")
    assert status == 200, body
    assert body.splitlines()[0] == "ready"
    for check in ("database", "migrations", "adapters", "scheduler", "proxy"):
        assert f"{check}: ok" in body, body
    _, before = await get(f"{base}/metrics")

    await sign_up_with_key(ada, key)
    ada.send("hello metrics")
    await ada.wait_text("echo: hello metrics", within=30)
    bob = TelegramPerson(telegram, 4343, "Bob", "bob")
    await sign_up_managed(bob)
    bob.send("managed hello")
    await bob.wait_text("echo: managed hello", within=30)
    leak = ada.send(f"oops {pasted}")
    await telegram.wait_for(
        lambda: any(int(c["message_id"]) == leak for c in telegram.calls_to("deleteMessage"))
    )
    # Scraped while the bot serves: every family the operator alerts on moves.
    m = await scrape_until(
        f"{base}/metrics",
        lambda m: (
            sample(m, "byokbot_job_runs_total", job="expire-intake") >= 1
            and sample(m, "byokbot_proxy_spend_usd_total") > 0
            # Counted when its handler returns, after the upstream closed; the spend is
            # settled as soon as the last event went by, so it can come first.
            and sample(m, "byokbot_proxy_requests_total", api="anthropic", status="200") >= 1
        ),
    )
    msgs = dict(platform="telegram", kind="message")
    assert (
        sample(m, "byokbot_updates_total", **msgs)
        >= sample(before, "byokbot_updates_total", **msgs) + 3
    )
    assert sample(m, "byokbot_updates_total", platform="telegram", kind="command") >= 2
    assert sample(m, "byokbot_replies_total", platform="telegram", outcome="ok") >= 2
    assert sample(m, "byokbot_reply_first_visible_seconds_count", platform="telegram") >= 2
    assert sample(m, "byokbot_reply_seconds_count", platform="telegram") >= 2
    assert sample(m, "byokbot_reply_seconds_sum", platform="telegram") > 0
    assert sample(m, "byokbot_intake_sessions_total", event="opened") >= 1
    assert sample(m, "byokbot_intake_sessions_total", event="used") >= 1
    assert sample(m, "byokbot_leak_guard_hits_total", platform="telegram") >= 1
    assert sample(m, "byokbot_agents_live") >= 2
    assert sample(m, "byokbot_agents_memory_bytes") > 1_000_000
    assert sample(m, "byokbot_proxy_requests_total", api="anthropic", status="200") >= 1
    assert sample(m, "byokbot_proxy_tokens_total", model="model-large", direction="output") > 0
    assert "byokbot_budget_refusals_total" in m or "byokbot_budget_refusals" in m
    assert "byokbot_platform_rate_limited" in m and "byokbot_agent_crashes_total" in m
    assert "byokbot_job_failures" in m
    # No label names a person, a tenant, a key or what anyone wrote.
    for secret in (key, pasted, "hello metrics", "managed hello", telegram.token):
        assert secret not in m
    for user_id in ("4242", "4343"):
        # As a number of its own: a sample's value (1.7963113719424253e+09) may hold the digits.
        assert not re.search(rf"(?<![0-9.e+]){user_id}(?![0-9])", m), user_id

    # /whoami: the id as [core] admins wants it, to the person.
    ada.send("/whoami")
    await ada.wait_text(r"You are telegram:4242 here")
    assert '"telegram:4242"' in ada.texts()[-1]
    status, body = await get(f"{base}/readyz")
    assert status == 200, body
    assert await bot.terminate() == 0


async def test_readyz_names_the_failing_check(
    tg_ws: Workspace, telegram: FakeTelegramServer
) -> None:
    base = with_health(tg_ws)
    tg_ws.configure({"logging": {"format": "json"}})
    bot = await start_bot(tg_ws)
    assert (await get(f"{base}/readyz"))[0] == 200
    # A migration applied behind the bot's back: the schema is not the one it was built for.
    import sqlite3

    with sqlite3.connect(tg_ws.root / "data" / "byokbot.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffff'")
    status, body = await get(f"{base}/readyz")
    assert status == 503
    assert body.startswith("migrations: at revision ffff, expected"), body
    assert "database" not in body  # only the failing check is named
    assert (await get(f"{base}/healthz"))[0] == 200
    assert await bot.terminate() == 0
    # [logging] format = "json": every line on stderr is one JSON object.
    records = [json.loads(line) for line in bot.stderr().splitlines() if line.strip()]
    assert records and {"time", "level", "logger", "message"} <= set(records[0])
    assert any(r["message"].startswith("telegram: serving @") for r in records)


def a_master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def _doctor(ws: Workspace, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    result, _ = await run_to_exit(ws, "doctor", env=env)
    assert "Traceback" not in result.output, result.output
    return result.returncode, result.stdout.splitlines()


def _failing(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith("FAIL")]


async def test_doctor_passes_a_good_setup_and_names_each_broken_setting(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    enable_proxy(tg_ws, llm, canaries)
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(tg_ws)
    await sign_up_with_key(ada, key)  # a data key wrapped by the master key
    await bot.terminate()

    code, lines = await _doctor(tg_ws)
    assert code == 0, lines
    assert _failing(lines) == []
    checks = [ln.split(":")[0].split(None, 1)[1] for ln in lines]
    for name in (
        "config",
        "database",
        "migrations",
        "master key",
        "telegram token",
        "telegram webhook",
        "proxy upstream keys",
        "sandbox landlock",
        "sandbox seccomp",
        "sandbox user namespaces",
    ):
        assert name in checks, lines
    assert any(ln.startswith("ok    telegram token: valid for @") for ln in lines), lines
    assert any("opens all 1 stored data key(s)" in ln for ln in lines), lines

    # A token Telegram refuses: the fake answers 401 Unauthorized.
    code, lines = await _doctor(tg_ws, {"TELEGRAM_BOT_TOKEN": "123456:not-the-real-token-at-all"})
    assert code == 1
    assert _failing(lines) == ["FAIL  telegram token: Telegram answered 401 (Unauthorized)"]

    # Another master key: it does not open the stored data key.
    code, lines = await _doctor(tg_ws, {"BYOKBOT_MASTER_KEY": a_master_key()})
    assert code == 1
    (line,) = _failing(lines)
    assert line.startswith("FAIL  master key: BYOKBOT_MASTER_KEY: master key v1 does not open")

    # The proxy's upstream key missing from the environment.
    saved = tg_ws.env.pop("BYOKBOT_PROXY_OPENAI_KEY")
    code, lines = await _doctor(tg_ws)
    tg_ws.env["BYOKBOT_PROXY_OPENAI_KEY"] = saved
    assert code == 1
    (line,) = _failing(lines)
    assert line.startswith("FAIL  proxy upstream keys:") and "BYOKBOT_PROXY_OPENAI_KEY" in line

    # A database nobody serves.
    tg_ws.configure(
        {"core": {"database_url": f"postgresql+asyncpg://byok@127.0.0.1:{closed_port()}/byok"}}
    )
    code, lines = await _doctor(tg_ws)
    assert code == 1
    failing = _failing(lines)
    assert failing[0].startswith("FAIL  database: postgresql+asyncpg://byok@127.0.0.1:")
    assert "unreachable" in failing[0] and failing[1] == "FAIL  migrations: database unreachable"

    # A configuration that does not parse is a failing check too.
    tg_ws.config_path.write_text("[core]\nnot_a_setting = 1\n")
    code, lines = await _doctor(tg_ws)
    assert code == 1
    assert lines == ["FAIL  config: config.toml: [core] not_a_setting is not a known setting"]


async def _chat(person: TelegramPerson, text: str) -> None:
    person.send(text)
    await person.wait_text(f"echo: {text}", within=30)


async def test_backup_delete_restore_brings_every_tenant_back(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    keys = {ada.user_id: anthropic_key()}
    bob = TelegramPerson(telegram, 4343, "Bob", "bob")
    keys[bob.user_id] = anthropic_key()
    canaries.add(*keys.values())
    bot: BotProcess = await start_bot(tg_ws)
    for person in (ada, bob):
        await sign_up_with_key(person, keys[person.user_id])
        await _chat(person, f"before backup {person.user_id}")

    backup = tg_ws.root / "backups" / "byokbot-backup.db"
    result, _ = await run_to_exit(tg_ws, "backup", str(backup))  # beside the running bot
    assert result.returncode == 0, result.output
    assert "the master key is not in it" in result.stdout
    assert oct(backup.stat().st_mode & 0o777) == "0o600"
    master = (tg_ws.root / "data" / "master.key").read_text().split(":")[-1].strip()
    assert master.encode() not in backup.read_bytes()
    assert base64.b64decode(master) not in backup.read_bytes()
    await bot.terminate()

    data = tg_ws.root / "data"
    for f in data.glob("byokbot.db*"):
        f.unlink()

    # A master key that does not open the backup: refused, nothing written.
    result, _ = await run_to_exit(
        tg_ws, "restore", str(backup), env={"BYOKBOT_MASTER_KEY": a_master_key()}
    )
    assert_one_error(result, r"BYOKBOT_MASTER_KEY does not open its 2 data key", code=2)
    assert not (data / "byokbot.db").exists()

    result, _ = await run_to_exit(tg_ws, "restore", str(backup))
    assert result.returncode == 0, result.output
    # A second restore over the restored database needs --force.
    result, _ = await run_to_exit(tg_ws, "restore", str(backup))
    assert_one_error(result, r"exists; stop byokbot and pass --force", code=2)

    bot = await start_bot(tg_ws)
    for person in (ada, bob):
        await _chat(person, f"after restore {person.user_id}")
        assert llm_saw(llm, f"after restore {person.user_id}")
    # Each tenant's requests carried that tenant's own key, decrypted from the restored data.
    ada_keys = [
        r.key
        for r in llm.requests
        if any(
            f"after restore {ada.user_id}" in str(m.get("content"))
            for m in r.body.get("messages", [])
        )
    ]
    assert ada_keys and set(ada_keys) == {keys[ada.user_id]}
    await bot.terminate()


async def test_the_standalone_proxy_serves_health_and_metrics(
    ws: Workspace, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    enable_proxy(ws, llm, canaries)
    base = with_health(ws)
    result, _ = await run_to_exit(ws, "db", "upgrade")
    assert result.returncode == 0, result.output
    proxy = await ws.start("proxy")
    await proxy.wait_output(r"metering proxy on http://127\.0\.0\.1:\d+")

    async def ready() -> tuple[int, str]:
        deadline = time.monotonic() + 10
        while True:
            try:
                return await get(f"{base}/readyz")
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    status, body = await ready()
    assert status == 200, body
    assert body == "ready\ndatabase: ok\nmigrations: ok\nproxy: ok\n"
    # A request without a proxy token is refused, and counted by status.
    port = int(re.search(r"127\.0\.0\.1:(\d+)", proxy.stdout()).group(1))  # type: ignore[union-attr]
    async with (
        aiohttp.ClientSession(trust_env=False) as http,
        http.post(f"http://127.0.0.1:{port}/v1/messages", json={}) as r,
    ):
        assert r.status == 401
    _, metrics = await get(f"{base}/metrics")
    assert sample(metrics, "byokbot_proxy_requests_total", api="anthropic", status="401") == 1
    assert await proxy.terminate() == 0


async def test_doctor_checks_the_telegram_webhook(
    tg_ws: Workspace, telegram: FakeTelegramServer
) -> None:
    secret = "whsec_" + base64.b32encode(os.urandom(15)).decode().rstrip("=")
    # Not a canary: setWebhook hands it to Telegram, which is where it belongs.
    tg_ws.env["TELEGRAM_WEBHOOK_SECRET"] = secret
    public = "https://bot.example.test/telegram"
    tg_ws.configure(
        {
            "telegram": {
                "mode": "webhook",
                "webhook_listen": "127.0.0.1",
                "webhook_port": free_port(),
                "webhook_public_url": public,
            }
        }
    )
    result, _ = await run_to_exit(tg_ws, "db", "upgrade")
    assert result.returncode == 0, result.output
    code, lines = await _doctor(tg_ws)
    assert code == 1
    assert _failing(lines) == [
        f"FAIL  telegram webhook: set to none, not {public} (byokbot run sets it)"
    ]

    bot = await tg_ws.start("run")
    await bot.wait_output(r"telegram: serving @\w+ by webhook", within=30)
    code, lines = await _doctor(tg_ws)
    assert code == 0, lines
    assert f"ok    telegram webhook: {public} set and reached (0 pending)" in lines

    telegram.webhook_error = "Connection timed out"
    code, lines = await _doctor(tg_ws)
    assert code == 1
    assert _failing(lines) == [
        f"FAIL  telegram webhook: {public} set, but Telegram cannot reach it: Connection timed out"
    ]
    await bot.terminate()


async def test_doctor_checks_discord_and_slack_tokens(
    ws: Workspace, discord: FakeDiscord, slack: SlackSide
) -> None:
    ws.configure(discord_tables(discord))
    ws.env[DISCORD_TOKEN_ENV] = discord.token
    slack.configure(ws, "http")
    result, _ = await run_to_exit(ws, "db", "upgrade")
    assert result.returncode == 0, result.output
    code, lines = await _doctor(ws)
    assert code == 0, lines
    assert "ok    discord token: valid for byokbot" in lines
    assert "ok    slack token: valid for byokbot in Test" in lines
    assert any(ln.startswith("info  slack request url: Slack posts") for ln in lines)
    (me,) = discord.find("GET", r"^/users/@me$")
    assert me.headers["Authorization"] == f"Bot {discord.token}"

    discord.fail_next("GET", r"^/users/@me$", 401, {"message": "401: Unauthorized", "code": 0})
    code, lines = await _doctor(ws, {"SLACK_BOT_TOKEN": "xoxb-" + "9" * 40})
    assert code == 1
    assert _failing(lines) == [
        "FAIL  discord token: Discord answered 401",
        "FAIL  slack token: Slack answered 200 (invalid_auth)",
    ]
