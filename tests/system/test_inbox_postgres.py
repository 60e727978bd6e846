"""``byokbot run`` on PostgreSQL under concurrency (issue 13, item 5).

Ten people signing up at the same moment on a fresh database, and four bots (four Telegram
bots sharing one database) started at once on an empty one. Needs ``BYOKBOT_TEST_PG_URL`` (``.ci/run`` starts a throwaway PostgreSQL).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.canaries import anthropic_key, telegram_token
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.conftest import TELEGRAM_TOKEN_ENV, base_tables, telegram_tables
from tests.system.harness import CanaryScan, Workspace, calls_text
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import SERVING, start_bot, wait_prompts

PG_ENV = "BYOKBOT_TEST_PG_URL"


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for this test."""
    admin = os.environ.get(PG_ENV)
    if not admin:
        pytest.skip(f"{PG_ENV} is not set (.ci/run starts a throwaway PostgreSQL and sets it)")
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:16]}"
    plain = admin.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(plain)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = admin.rpartition("/")
    yield f"{base}/{name}"
    conn = await asyncpg.connect(plain)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def test_ten_first_sign_ups_at_once_on_postgresql_all_succeed(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    pg_url: str,
    canaries: CanaryScan,
) -> None:
    tg_ws.configure({"core": {"database_url": pg_url}})
    people = [TelegramPerson(telegram, 6000 + i, f"P{i}", f"p{i}") for i in range(10)]
    keys = [anthropic_key() for _ in people]
    canaries.add(*keys)
    await start_bot(tg_ws)

    for p in people:
        p.send("/start")
    await asyncio.gather(*(p.wait_text("Pick a plan", within=60) for p in people))
    # Every tenant (and its data key) is created by these presses, all in one batch.
    for p in people:
        p.press("BYOK")
    await asyncio.gather(*(p.wait_text("Which provider", within=60) for p in people))
    for p in people:
        p.press("Anthropic")
    await asyncio.gather(*(wait_prompts(p, 1) for p in people))
    for p, key in zip(people, keys, strict=True):
        p.reply_to_prompt(key)
    await asyncio.gather(*(p.wait_text("Key saved", within=60) for p in people))
    for p in people:
        assert not any("went wrong" in t for t in p.texts()), p.texts()


async def test_bots_starting_at_once_on_an_empty_postgresql_all_come_up(
    tmp_path: Path, llm: FakeLLMServer, pg_url: str, canaries: CanaryScan
) -> None:
    master = base64.b64encode(secrets.token_bytes(32)).decode()
    canaries.add(master)
    fakes: list[FakeTelegramServer] = []
    spaces: list[Workspace] = []
    try:
        # Four at once: with two the migration race shows only now and then.
        for i in range(4):
            token = telegram_token()
            fake = FakeTelegramServer(
                token=token, bot_id=777000111 + i, exclusive_polling=True, max_hold=0.5
            )
            await fake.start()
            canaries.add(token)
            canaries.watch(lambda f=fake: [("telegram calls", calls_text(f.calls))])  # type: ignore[misc]
            fakes.append(fake)
            root = tmp_path / f"work{i}"
            root.mkdir()
            ws = Workspace(root)
            ws.configure(base_tables(root, llm))
            ws.configure(telegram_tables(fake))
            ws.configure({"core": {"database_url": pg_url}})
            ws.env[TELEGRAM_TOKEN_ENV] = token
            ws.env["BYOKBOT_MASTER_KEY"] = master
            canaries.watch_workspace(ws)
            spaces.append(ws)
        bots = await asyncio.gather(*(ws.start("run") for ws in spaces))
        await asyncio.gather(*(b.wait_output(SERVING, within=60) for b in bots))
        for bot in bots:
            assert bot.returncode is None, bot.output()
            assert "Traceback" not in bot.stderr()
        # All serve: each answers its own person.
        for fake in fakes:
            person = TelegramPerson(fake, 4242)
            person.send("/help")
            await person.wait_text("/start", within=30)
    finally:
        for ws in spaces:
            await ws.close()
        for fake in fakes:
            await fake.stop()
