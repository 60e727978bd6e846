"""SECURITY.md test 7: canary keys through every path never reach logs, rows or messages."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from core.db.models import Base
from core.logs import configure_logging, register_secret
from tests.canaries import anthropic_key, openai_key, slack_bot_token, telegram_token
from tests.harness import World


@pytest.fixture
def log_buffer(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    import sys
    import threading
    import warnings

    # configure_logging installs crash hooks; keep pytest's own for the tests after this one.
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    configure_logging("DEBUG", stream=buf)
    logging.getLogger("httpx").setLevel(logging.INFO)  # as if someone turned it up
    yield buf
    root.handlers[:] = saved[1]
    root.setLevel(saved[0])
    logging.captureWarnings(False)


async def _all_rows(world: World) -> str:
    dump: list[str] = []
    async with world.app.db.session() as s:
        for table in Base.metadata.sorted_tables:
            for row in (await s.execute(select(table))).all():
                dump.append(repr(tuple(row)))
    return "\n".join(dump)


async def test_canaries_never_leak(
    db_url: str,
    tmp_path: Path,
    master_key_env: dict[str, str],
    log_buffer: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = await World.create(db_url, tmp_path, master_key_env)
    canaries = [anthropic_key(), anthropic_key(), openai_key(), openai_key(), anthropic_key()]
    bot_token = telegram_token()
    register_secret(bot_token, label="telegram token")
    try:
        ada = world.person()
        group = ada.group()
        await ada.command("/plan byok")
        # 1. intake by DM reply
        await ada.command("/key add anthropic")
        await ada.say(canaries[0])
        # 2. intake with the wrong provider's key: refused, attempt counted
        await ada.command("/key add openai")
        await ada.say(canaries[1])
        # 3. a modal-style submission
        await ada.submit_secret(canaries[2])
        # 4. leaks in a group and inside a command
        await ada.say(f"oops {canaries[3]}", chat=group, addressed=False)
        await ada.command(f"/persona my key is {canaries[3]}")

        # 5. a crash while storing a key, with the key in the exception text
        async def exploding_store(*args: object, **kwargs: object) -> None:
            raise RuntimeError(f"database refused value {canaries[4]}")

        monkeypatch.setattr(world.app.services.credentials, "store", exploding_store)
        await ada.command("/key rotate anthropic")
        await ada.say(canaries[4])
        # 6. third-party loggers that print URLs with a bot token
        logging.getLogger("httpx").info(
            "HTTP Request: POST https://api.telegram.org/bot%s/getMe", bot_token
        )
        logging.getLogger("byokbot.test").debug("token=%s slack=%s", bot_token, slack_bot_token())

        outgoing = ada.messenger.all_text()
        rows = await _all_rows(world)
        logs = log_buffer.getvalue()
        assert "turn failed" in logs  # the crash was logged, redacted
        assert "[REDACTED" in logs
        for canary in [*canaries, bot_token]:
            assert canary not in outgoing
            assert canary not in rows
            assert canary not in logs
    finally:
        await world.close()
    if db_url.startswith("sqlite"):
        for f in tmp_path.glob("byokbot.db*"):
            data = f.read_bytes()
            for canary in canaries:
                assert canary.encode() not in data, f.name
