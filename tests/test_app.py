"""The composition root: start with the console, serve until the input ends, stop cleanly."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter
from bot import texts
from bot.app import App
from core.config import parse_config
from core.errors import ConfigError
from tests.conftest import make_config


async def test_app_serves_the_console_until_input_ends(
    sqlite_url: str, tmp_path: Path, master_key_env: dict[str, str]
) -> None:
    out = io.StringIO()
    console = ConsoleAdapter(stdin=io.StringIO("/start\n2\n/usage\n"), stdout=out)
    app = App(make_config(sqlite_url, tmp_path), env=master_key_env, console=console)
    await app.start()
    assert [j.name for j in app.scheduler.jobs] == ["expire-intake"]
    await asyncio.wait_for(app.run_until_stopped(asyncio.Event()), timeout=10)
    await app.stop()
    await app.stop()  # idempotent
    text = out.getvalue()
    assert texts.SIGNED_UP.format(plan="Managed") in text
    assert texts.MANAGED_READY in text
    assert texts.USAGE_NONE in text


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
