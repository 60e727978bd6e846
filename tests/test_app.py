"""The composition root: start with the console, serve until the input ends, stop cleanly."""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import secrets
import socket
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter
from bot import texts
from bot.app import App
from core.chat import Platform, UserRef
from core.config import Config, parse_config
from core.errors import ConfigError, MasterKeyError
from core.scheduler import Job, Scheduler
from tests.canaries import anthropic_key, openai_key
from tests.conftest import make_config


async def test_app_serves_the_console_until_input_ends(
    sqlite_url: str, tmp_path: Path, master_key_env: dict[str, str]
) -> None:
    out = io.StringIO()
    # Without the metering proxy only BYOK is offered: choice 1 is BYOK, and there is no 2.
    console = ConsoleAdapter(stdin=io.StringIO("/start\n1\n/usage\n"), stdout=out)
    app = App(make_config(sqlite_url, tmp_path), env=master_key_env, console=console)
    await app.start()
    assert [j.name for j in app.scheduler.jobs] == [
        "expire-intake",
        "inbox-renew",
        "inbox-recover",
        "inbox-sweep",
        "billing",
        "stop-idle-agents",
        "run-tasks",
    ]
    assert app.proxy_server is None
    await asyncio.wait_for(app.run_until_stopped(asyncio.Event()), timeout=10)
    await app.stop()
    await app.stop()  # idempotent
    text = out.getvalue()
    assert "Managed" not in text
    assert texts.SIGNED_UP.format(plan="BYOK") in text
    assert texts.BYOK_NEEDS_KEY.format(plan="BYOK") in text
    assert texts.USAGE_NONE in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proxy_config(sqlite_url: str, tmp_path: Path, **proxy: object) -> Config:
    return parse_config(
        {
            "core": {"database_url": sqlite_url, "master_key_file": str(tmp_path / "mk")},
            "proxy": {"enabled": True, "port": _free_port(), **proxy},
        },
        source="test.toml",
        base_dir=tmp_path,
    )


async def test_every_scheduled_job_is_awaited_in_the_loop(
    sqlite_url: str, tmp_path: Path, master_key_env: dict[str, str]
) -> None:
    """APScheduler awaits only coroutine functions; a lambda returning a coroutine never runs."""
    env = {
        **master_key_env,
        "BYOKBOT_PROXY_ANTHROPIC_KEY": anthropic_key(),
        "BYOKBOT_PROXY_OPENAI_KEY": openai_key(),
    }
    console = ConsoleAdapter(stdin=io.StringIO(""), stdout=io.StringIO())
    app = App(_proxy_config(sqlite_url, tmp_path), env=env, console=console)
    await app.start()
    try:
        assert app.proxy_server is not None and app.proxy_server.port == app.config.proxy.port
        scheduled = app.scheduler.scheduled()
        # APScheduler lists jobs by next run time; the inbox's short intervals come first.
        assert sorted(name for name, _ in scheduled) == sorted(
            [
                "expire-intake",
                "billing",
                "inbox-renew",
                "inbox-recover",
                "inbox-sweep",
                "run-tasks",
                "stop-idle-agents",
                "sweep-reservations",
                "roll-budget-month",
            ]
        )
        for name, func in scheduled:
            assert inspect.iscoroutinefunction(func), name
    finally:
        await app.stop()
    assert app.proxy_server is None


def test_a_job_that_is_not_a_coroutine_function_is_refused() -> None:
    async def work() -> None:
        return None

    with pytest.raises(TypeError, match="async def"):
        Job("lambda", 30, lambda: work())
    with pytest.raises(ValueError, match="positive"):
        Job("never", 0, work)


async def test_the_scheduler_awaits_its_jobs_in_the_running_loop() -> None:
    ran: list[asyncio.AbstractEventLoop] = []
    done = asyncio.Event()

    async def work() -> None:
        ran.append(asyncio.get_running_loop())
        done.set()

    scheduler = Scheduler([Job("tick", 0.05, work)])
    scheduler.start()
    try:
        await asyncio.wait_for(done.wait(), 5)
    finally:
        scheduler.stop()
    assert ran[0] is asyncio.get_running_loop()


async def test_a_proxy_port_in_use_stops_start_up_with_one_line(
    sqlite_url: str, tmp_path: Path, master_key_env: dict[str, str]
) -> None:
    env = {
        **master_key_env,
        "BYOKBOT_PROXY_ANTHROPIC_KEY": anthropic_key(),
        "BYOKBOT_PROXY_OPENAI_KEY": openai_key(),
    }
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = _proxy_config(sqlite_url, tmp_path, port=port)
        app = App(config, env=env, console=ConsoleAdapter(stdin=io.StringIO("")))
        with pytest.raises(ConfigError, match=rf"\[proxy\] cannot listen on 127.0.0.1:{port}"):
            await app.start()
        await app.stop()


async def test_no_platform_and_no_console_is_a_clear_error(
    sqlite_url: str, tmp_path: Path, master_key_env: dict[str, str]
) -> None:
    app = App(make_config(sqlite_url, tmp_path), env=master_key_env)
    with pytest.raises(ConfigError) as exc:
        await app.start()
    await app.stop()
    assert str(exc.value) == "test.toml: no platform is enabled and configured, and no console"


async def test_enabled_platform_without_token_stops_startup(
    sqlite_url: str,
    tmp_path: Path,
    master_key_env: dict[str, str],
) -> None:
    # No console fallback: a bot that serves nothing would look like success.
    config = parse_config(
        {"core": {"database_url": sqlite_url}, "telegram": {"enabled": True}},
        source="test.toml",
        base_dir=tmp_path,
    )
    app = App(config, env=master_key_env, agent_runtime=False)
    with pytest.raises(ConfigError) as exc:
        await app.start()
    await app.stop()
    assert "TELEGRAM_BOT_TOKEN is not set" in str(exc.value)
    assert app.adapters == []


async def test_a_rotation_in_another_bot_process_is_picked_up(
    sqlite_url: str, tmp_path: Path
) -> None:
    # Two bots on one database and key file; one rotates from chat (/admin rotate-master-key).
    config = make_config(sqlite_url, tmp_path)
    one = App(config, env={}, platforms=False, agent_runtime=False)
    two = App(config, env={}, platforms=False, agent_runtime=False)
    await one.open()
    await two.open()
    try:
        user = UserRef(Platform.TELEGRAM, "42", "ada")
        tenant = await one.services.tenants.sign_up(user, "byok", dm_chat_id="42")
        assert one.services.rotate_master_key is not None
        version, count = await one.services.rotate_master_key()
        assert (version, count) == (2, 1)
        async with two.db.session() as s:
            await two.services.credentials.data_key(s, tenant.id)  # re-reads the key file
        assert two.vault.ring.versions == (1, 2)
    finally:
        await one.db.dispose()
        await two.db.dispose()


async def test_open_refuses_a_key_that_does_not_open_the_data_keys(
    sqlite_url: str, tmp_path: Path, master_key_env: dict[str, str]
) -> None:
    config = make_config(sqlite_url, tmp_path)
    app = App(config, env=master_key_env, platforms=False, agent_runtime=False)
    await app.open()
    await app.services.tenants.sign_up(
        UserRef(Platform.TELEGRAM, "42", "ada"), "byok", dm_chat_id="42"
    )
    await app.db.dispose()
    other = {"BYOKBOT_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    again = App(config, env=other, platforms=False, agent_runtime=False)
    with pytest.raises(MasterKeyError) as exc:
        await again.open()
    await again.db.dispose()
    assert str(exc.value).startswith("BYOKBOT_MASTER_KEY: master key v1 does not open the 1 ")
    assert not (tmp_path / "master.key").exists()
