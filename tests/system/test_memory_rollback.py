"""Memory rollback through ``byokbot run``: an older encrypted memory copied back is refused."""

from __future__ import annotations

import sqlite3

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import sign_up_with_key, start_bot


def _user_texts(llm: FakeLLMServer) -> list[str]:
    """The user messages of the last chat request the provider got."""
    chats = [r for r in llm.requests if r.body.get("messages")]
    return [str(m.get("content")) for m in chats[-1].body["messages"] if m.get("role") == "user"]


def _blob(db: object) -> bytes | None:
    conn = sqlite3.connect(db, timeout=10)  # type: ignore[arg-type]
    try:
        row = conn.execute("SELECT blob FROM agent_memory").fetchone()
    finally:
        conn.close()
    return None if row is None else bytes(row[0])


async def test_an_old_memory_blob_copied_back_is_refused(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(tg_ws)
    await sign_up_with_key(ada, key)
    db = tg_ws.root / "data" / "byokbot.db"

    ada.send("first turn amaryllis")
    await ada.wait_text("echo: first turn amaryllis", within=30)
    # Memory is saved just after the reply, off the reply path (issue 13).
    await eventually(lambda: _blob(db) is not None)
    old = _blob(db)

    ada.send("second turn begonia")
    await ada.wait_text("echo: second turn begonia", within=30)
    assert "first turn amaryllis" in _user_texts(llm)
    await eventually(lambda: _blob(db) != old)

    # The attacker with write access to the database puts the older blob back.
    with sqlite3.connect(db, timeout=10) as conn:
        conn.execute("UPDATE agent_memory SET blob = ?", (old,))
    conn.close()

    ada.send("third turn camellia")
    await ada.wait_text("echo: third turn camellia", within=30)
    sent = _user_texts(llm)
    assert sent == ["third turn camellia"], f"the rolled-back memory was used: {sent}"
    line = await bot.wait_output(r"memory of tenant \w+ refused \([^)]*\)[^\n]*", within=5)
    assert "amaryllis" not in line.group(0)

    # The conversation goes on from a fresh memory, which is trusted again.
    ada.send("fourth turn dahlia")
    await ada.wait_text("echo: fourth turn dahlia", within=30)
    assert _user_texts(llm) == ["third turn camellia", "fourth turn dahlia"]
