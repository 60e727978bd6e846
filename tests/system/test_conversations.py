"""Conversations through ``byokbot run`` on Telegram: compaction, /compact, /new, /history.

The 200-turn conversation runs in the console (tests/system/test_conversations_console.py):
Telegram's pace of about one message a second per chat would make it a four-minute test of the
pacing, not of compaction.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.conversation_support import (
    FACT,
    small_budget,
    summaries,
    summariser,
    system_of,
    user_texts,
)
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import sign_up_with_key, start_bot

# Long turns fill the small budget in a few turns: at Telegram's pace (about a message a second
# per chat) every turn costs seconds.
FILLER = "about nothing in particular, just filling the context with words; " * 4


async def talk(person: TelegramPerson, texts: list[str], *, batch: int = 25) -> None:
    """Send ``texts`` in batches, each waited for until its last echo is in the chat."""
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        for text in chunk:
            person.send(text)
        await person.wait_text(f"^echo: {re.escape(chunk[-1])}$", within=120)


async def test_an_early_fact_survives_compaction_and_conversations_can_be_switched(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    canaries.watch(lambda: [(f"upload {u.filename}", u.content) for u in telegram.uploads])
    small_budget(tg_ws)
    llm.reply = summariser
    llm.chunk_delay = 0.0  # about compaction, not how a reply streams
    await start_bot(tg_ws)
    await sign_up_with_key(ada, key)

    ada.send(FACT)
    await ada.wait_text(f"^echo: {FACT}$", within=30)
    fillers = [f"turn {i} {FILLER}" for i in range(10)]
    await talk(ada, fillers)
    for text in fillers:
        assert f"echo: {text}" in ada.texts(), f"no answer to {text!r}"

    # The budget filled more than once; each time the model itself summarised, with the key.
    made = summaries(llm)
    assert len(made) >= 2
    assert {r.key for r in made} == {key}
    assert all("tools" not in r.body for r in made)
    ada.send("what is my cat called?")
    await ada.wait_text("^echo: what is my cat called\\?$", within=30)
    final = llm.requests[-1]
    assert "what is my cat called?" in user_texts(final)
    assert FACT not in user_texts(final), "the early turn itself should have been compacted"
    assert "Miso" in system_of(final), "the early fact did not survive compaction"
    assert len(final.body["messages"]) < 40  # bounded, not 400 turns

    # /compact on demand says what it did.
    before = len(summaries(llm))
    ada.send("/compact")
    answer = await ada.wait_text(r"(?i)summarised the \d+ earlier messages", within=30)
    assert re.search(r"about \d+ tokens\) into a summary of about \d+ tokens", answer)
    assert len(summaries(llm)) > before  # one request, or one per part that fits

    # /new starts afresh; the old conversation is listed and can be switched back to.
    ada.send("/new")
    await ada.wait_text("(?i)started a new conversation")
    ada.send("hello fresh start")
    await ada.wait_text("^echo: hello fresh start$", within=30)
    fresh = llm.requests[-1]
    assert user_texts(fresh) == ["hello fresh start"] and "Miso" not in system_of(fresh)

    ada.send("/history")
    listing = await ada.wait_text("(?i)your recent conversations")
    lines = [line for line in listing.splitlines() if re.match(r"^\d\. ", line)]
    assert len(lines) == 2, listing
    assert "hello fresh start" in lines[0] and "current" in lines[0]
    assert "Miso" in lines[1] and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", lines[1])
    ada.press("Switch to 2")
    await ada.wait_text("(?i)switched back")
    ada.send("and my cat?")
    await ada.wait_text("^echo: and my cat\\?$", within=30)
    back = llm.requests[-1]
    assert "Miso" in system_of(back) and "hello fresh start" not in str(back.body)

    # The current conversation as a file.
    ada.send("/history export")
    await ada.wait_text("(?i)as a text file")
    await eventually(lambda: any(u.method == "sendDocument" for u in telegram.uploads))
    upload = next(u for u in telegram.uploads if u.method == "sendDocument")
    assert upload.chat_id == str(ada.user_id) and upload.filename.endswith(".txt")
    text = upload.content.decode()
    assert "Miso" in text and "You: and my cat?" in text and "Agent: echo: and my cat?" in text

    # A bad argument gets an answer that says what to do.
    ada.send("/history 9")
    await ada.wait_text("(?i)no conversation number 9")
    ada.send("/history nonsense")
    await ada.wait_text(r"(?i)/history export")


def _db(ws: Workspace) -> Path:
    return ws.root / "data" / "byokbot.db"


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


async def test_conversations_are_encrypted_and_shredded_on_delete(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    llm.reply = summariser
    await start_bot(tg_ws)
    await sign_up_with_key(ada, key)
    ada.send("remember the word heliotrope")
    await ada.wait_text("^echo: remember the word heliotrope$", within=30)
    ada.send("/new")
    await ada.wait_text("(?i)started a new conversation")
    ada.send("remember the word marigold")
    await ada.wait_text("^echo: remember the word marigold$", within=30)
    ada.send("/new")
    ada.send("/new")  # an empty conversation is not left behind a second time
    await ada.wait_text("(?i)already empty")

    db = _db(tg_ws)
    await eventually(lambda: len(_rows(db, "SELECT blob FROM agent_memory")) == 2)
    blobs = [bytes(r[0]) for r in _rows(db, "SELECT blob FROM agent_memory")]
    assert _rows(db, "SELECT active, last FROM agent_threads") == [(2, 2)]
    files = [db, db.with_name(db.name + "-wal")]
    for f in files:
        if f.exists():
            data = f.read_bytes()
            assert b"heliotrope" not in data and b"marigold" not in data, f"plaintext in {f.name}"

    ada.send("/delete")
    await ada.wait_text("(?i)erase")
    ada.press("Yes, erase")
    await ada.wait_text("(?i)erased")
    assert _rows(db, "SELECT COUNT(*) FROM agent_memory") == [(0,)]
    assert _rows(db, "SELECT COUNT(*) FROM agent_threads") == [(0,)]
    for f in files:
        if f.exists():
            data = f.read_bytes()
            for blob in blobs:
                body = blob[3:]
                left = [body[i : i + 16] for i in range(0, len(body) - 15, 16)]
                assert not [p for p in left if p in data], f"memory remnants in {f.name}"


async def test_managed_compaction_goes_through_the_proxy_and_is_metered(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    from tests.system.managed_support import enable_proxy, query, sign_up_managed

    keys = enable_proxy(tg_ws, llm, canaries)
    small_budget(tg_ws)
    tg_ws.configure({"agent": {"max_reply_tokens": 40}})
    llm.reply = summariser
    llm.chunk_delay = 0.0
    await start_bot(tg_ws)
    await sign_up_managed(ada)
    ada.send(FACT)
    await ada.wait_text(f"^echo: {FACT}$", within=30)
    await talk(ada, [f"managed turn {i} {FILLER}" for i in range(8)])
    made = summaries(llm)
    assert made, "the budget never filled"
    # Upstream, the proxy's own key: the summary went through the metering proxy.
    assert {r.key for r in made} == {keys.anthropic}

    def metered() -> tuple[int, int] | None:
        budget = query(tg_ws, "SELECT tokens_spent, tokens_reserved FROM budgets")
        usage = query(
            tg_ws, "SELECT SUM(input_tokens + output_tokens), SUM(requests) FROM usage_daily"
        )
        if not budget or not usage or usage[0][1] != len(llm.requests) or budget[0][1] != 0:
            return None
        return budget[0][0], usage[0][0]

    await eventually(lambda: metered() is not None, within=30)
    spent, used = metered() or (0, 0)
    # Every request, the summaries among them, counts against the plan's cap.
    assert spent == used > 0
