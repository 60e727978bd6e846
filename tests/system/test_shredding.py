"""Crypto-shredding through ``byokbot run``: after /delete no copy of the tenant's keys is on disk."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeCall, FakeLLMServer, ToolStep, tool_rounds
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import sign_up_with_key, start_bot


def _stored(db: Path) -> list[bytes]:
    """The tenant's wrapped data key, provider-key ciphertext and memory, read with sqlite3."""
    conn = sqlite3.connect(db)
    try:
        rows = [r[0] for r in conn.execute("SELECT wrapped FROM data_keys")]
        rows += [r[0] for r in conn.execute("SELECT ciphertext FROM provider_keys")]
        rows += [r[0] for r in conn.execute("SELECT blob FROM agent_memory")]
        rows += [r[0] for r in conn.execute("SELECT blob FROM agent_notes")]
    finally:
        conn.close()
    return [bytes(r) for r in rows]


def _pieces(value: bytes, size: int = 16) -> list[bytes]:
    # Any 16 bytes of a ciphertext (past its 3-byte header) would be a recoverable remnant.
    body = value[3:]
    return [body[i : i + size] for i in range(0, len(body) - size + 1, size)]


async def test_delete_leaves_no_ciphertext_in_the_file_or_the_wal(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    # The agent also keeps a long-term note (its remember tool): shredded with the rest.
    llm.tool_script = lambda kind, messages: (
        ToolStep([FakeCall("remember", {"fact": "the word is heliotrope"})])
        if tool_rounds(messages) == 0
        else None
    )
    await start_bot(tg_ws)
    await sign_up_with_key(ada, key)
    ada.send("remember the word heliotrope")
    await ada.wait_text("echo: remember the word heliotrope", within=30)

    db = tg_ws.root / "data" / "byokbot.db"
    # Memory is saved just after the reply, off the reply path (issue 13).
    await eventually(lambda: len(_stored(db)) == 4)
    stored = _stored(db)
    assert len(stored) == 4, "expected a data key, a provider key, a memory and a notes blob"

    ada.send("/delete")
    await ada.wait_text("(?i)erase")
    ada.press("Yes, erase")
    await ada.wait_text("(?i)erased")

    files = [p for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))]
    contents = {p.name: p.read_bytes() for p in files if p.exists()}
    assert contents, "the database file is gone"
    for value in stored:
        for name, data in contents.items():
            assert value not in data, f"a shredded value is still whole in {name}"
            left = [piece for piece in _pieces(value) if piece in data]
            assert not left, f"{len(left)} pieces of a shredded value remain in {name}"
    # The person is gone for the bot too.
    ada.send("still there?")
    await ada.wait_text("Pick a plan|/start")
