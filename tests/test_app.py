"""The composition root: start with the console, serve until the input ends, stop cleanly."""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter
from bot import texts
from bot.app import App
from core.chat import Platform, UserRef
from core.config import parse_config
from core.errors import ConfigError, MasterKeyError
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
