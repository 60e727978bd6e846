"""``byokbot run`` with ``[telegram] enabled = true`` serves Telegram: the real command, end to end.

The bot runs as a separate process against the loopback fake Bot API, exactly as an operator
starts it (token from the environment, settings from ``config.toml``), and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import texts
from tests.fakes.telegram_server import PROXY_VARS, FakeTelegramServer, message, tg_user

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "5550007777:AAH-cli-canary-token-0123456789abcdef"


@pytest.fixture
async def server() -> AsyncIterator[FakeTelegramServer]:
    fake = FakeTelegramServer(token=TOKEN)
    await fake.start()
    yield fake
    await fake.stop()


def _byokbot() -> list[str]:
    script = Path(sys.executable).with_name("byokbot")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bot"]


async def test_byokbot_run_serves_telegram(server: FakeTelegramServer, tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        f"""
[core]
database_url = "sqlite+aiosqlite:///{tmp_path / "byokbot.db"}"
master_key_file = "{tmp_path / "master.key"}"

[telegram]
enabled = true
api_base_url = "{server.base_url}"
file_base_url = "{server.file_base_url}"
poll_timeout = 1
"""
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BYOKBOT_", "TELEGRAM_")) and k not in PROXY_VARS
    }
    env |= {
        "PYTHONPATH": str(ROOT),
        "BYOKBOT_CONFIG": str(tmp_path / "config.toml"),
        "TELEGRAM_BOT_TOKEN": TOKEN,
    }
    proc = await asyncio.create_subprocess_exec(
        *_byokbot(),
        "run",
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await server.wait_calls("getUpdates", 1, within=30)
        server.push_update(message(42, tg_user(42, "Ada", "ada"), "/start", message_id=1))
        await server.wait_calls("sendMessage", 1, within=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert server.texts(42)[0].startswith(texts.WELCOME)
    log = (out + err).decode()
    assert "telegram: serving @byok_test_bot by polling" in log
    assert TOKEN not in log
    assert TOKEN.partition(":")[2] not in log
