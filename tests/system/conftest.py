"""Fixtures of the system suite: a work dir for ``byokbot``, loopback fakes, the canary scan.

Every test ends with the canary scan: no secret the test fed in may appear in a platform call,
a file under the work dir, or the program's output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace, calls_text
from tests.system.people import TelegramPerson

TELEGRAM_TOKEN_ENV = "TELEGRAM_BOT_TOKEN"


@pytest.fixture(autouse=True)
def canaries() -> Iterator[CanaryScan]:
    scan = CanaryScan()
    yield scan
    found = scan.findings()
    assert not found, "secrets leaked:\n" + "\n".join(found)


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLMServer]:
    """A fake Anthropic + OpenAI-compatible provider streaming at a realistic pace."""
    async with FakeLLMServer(chunk_delay=0.02) as fake:
        yield fake


def base_tables(root: Path, llm: FakeLLMServer) -> dict[str, dict[str, object]]:
    """A configuration as an operator writes it, with every provider on the fake."""
    return {
        "core": {
            "database_url": f"sqlite+aiosqlite:///{root / 'data' / 'byokbot.db'}",
            "master_key_file": "data/master.key",
            "admins": ["telegram:900", "console:local"],
            "verify_keys_live": True,
            "log_level": "INFO",
        },
        "providers.anthropic": {
            "name": "Anthropic",
            "kind": "anthropic",
            "base_url": llm.anthropic_url,
            "key_shape": "anthropic",
            "default_model": "model-large",
        },
        "providers.openai": {
            "name": "OpenAI",
            "kind": "openai-compatible",
            "base_url": llm.openai_url,
            "key_shape": "openai",
            "default_model": "model-large",
        },
        "agent": {"idle_timeout_seconds": 600, "request_timeout_seconds": 30},
    }


@pytest.fixture
async def ws(tmp_path: Path, llm: FakeLLMServer, canaries: CanaryScan) -> AsyncIterator[Workspace]:
    """A fresh byokbot work dir; every process started from it is killed at the end."""
    root = tmp_path / "work"
    root.mkdir()
    workspace = Workspace(root)
    workspace.configure(base_tables(root, llm))
    canaries.watch_workspace(workspace)
    try:
        yield workspace
    finally:
        await workspace.close()


@pytest.fixture
async def telegram(canaries: CanaryScan) -> AsyncIterator[FakeTelegramServer]:
    from tests.canaries import telegram_token

    token = telegram_token()
    fake = FakeTelegramServer(token=token, exclusive_polling=True, max_hold=0.5)
    await fake.start()
    canaries.add(token)

    def calls() -> Iterable[tuple[str, bytes]]:
        yield "telegram calls", calls_text(fake.calls)

    canaries.watch(calls)
    try:
        yield fake
    finally:
        await fake.stop()


def telegram_tables(fake: FakeTelegramServer) -> dict[str, dict[str, object]]:
    return {
        "telegram": {
            "enabled": True,
            "api_base_url": fake.base_url,
            "file_base_url": fake.file_base_url,
            "poll_timeout": 1,
            "edit_interval": 0.2,
            "group_edit_interval": 0.5,
            # Faster than Telegram's own pace in a chat (3 in 3.3 s), which would make every
            # test a test of the pacing; the pacing tests use TELEGRAMS_PACE.
            "chat_burst": 20,
            "chat_seconds": 1.0,
        }
    }


# Telegram's documented pace in a chat, as the bot keeps it by default.
TELEGRAMS_PACE: dict[str, object] = {"chat_burst": 3, "chat_seconds": 3.3}


@pytest.fixture
def tg_ws(ws: Workspace, telegram: FakeTelegramServer) -> Workspace:
    """A work dir whose config serves the fake Telegram, with the token in the environment."""
    ws.configure(telegram_tables(telegram))
    ws.env[TELEGRAM_TOKEN_ENV] = telegram.token
    return ws


@pytest.fixture
def ada(telegram: FakeTelegramServer) -> TelegramPerson:
    return TelegramPerson(telegram, 4242, "Ada", "ada")
