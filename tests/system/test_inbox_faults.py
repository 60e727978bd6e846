"""Crashes, redeliveries and a locked database through ``byokbot run`` (issue 13, items 2, 4, 5).

Each test kills or starves the real program and asserts only on what crosses the wire: the
chat as the fake Telegram shows it, the provider requests, the program's output.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from bot import texts
from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import deleted, sign_up_byok, sign_up_with_key, start_bot

LEASE = {"inbox": {"lease_seconds": 2}}


def asked(llm: FakeLLMServer, text: str) -> int:
    """How many chat requests ended with ``text`` as the newest user message."""
    count = 0
    for r in llm.requests:
        users = [m for m in r.body.get("messages", []) if m.get("role") == "user"]
        if users and users[-1].get("content") == text:
            count += 1
    return count


def answered(person: TelegramPerson, text: str) -> bool:
    """The whole echo of ``text`` is in the chat, or the note asking to send it again."""
    shown = person.texts()
    return any(t == f"echo: {text}" for t in shown) or texts.INBOX_RESEND in shown


def confirmed_past(telegram: FakeTelegramServer, update_id: int) -> bool:
    """The bot asked for updates after ``update_id``: it has fetched (and confirmed) it."""
    return any(int(c.get("offset", 0) or 0) > update_id for c in telegram.calls_to("getUpdates"))


async def test_messages_in_flight_at_kill_9_are_all_answered_after_the_restart(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    tg_ws.configure(LEASE)
    bob = TelegramPerson(telegram, 5151, "Bob", "bob")
    keys = [anthropic_key(), anthropic_key()]
    canaries.add(*keys)
    bot = await start_bot(tg_ws)
    for person, key in zip((ada, bob), keys, strict=True):
        await sign_up_with_key(person, key)

    # Replies stop after their first words: two are streaming, two wait behind them.
    llm.gate = asyncio.Event()
    sent = [(ada, ["first from ada", "second from ada"]), (bob, ["first from bob", "second"])]
    for person, lines in sent:
        for line in lines:
            person.send(line)
    last = max(telegram.pushed)
    await eventually(lambda: asked(llm, "first from ada") and asked(llm, "first from bob"))
    await eventually(lambda: confirmed_past(telegram, last))
    await bot.kill()
    llm.gate.set()

    bot = await start_bot(tg_ws)
    for person, lines in sent:
        for line in lines:
            await eventually(
                lambda p=person, t=line: answered(p, t),  # type: ignore[misc]
                within=60,
                message=lambda p=person: "\n---\n".join(p.texts()),  # type: ignore[misc]
            )
    # Resumed, not just told: every one got its answer.
    for person, lines in sent:
        for line in lines:
            assert f"echo: {line}" in person.texts()
    assert bot.returncode is None


async def test_a_key_pasted_just_before_kill_9_is_deleted_and_the_person_told(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    tg_ws.configure(LEASE)
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(tg_ws)
    await sign_up_byok(ada)

    # The bot is killed while it deletes the key message: Telegram never confirms the delete.
    telegram.hold("deleteMessage")
    key_message = ada.reply_to_prompt(key)
    update_id = max(telegram.pushed)
    await eventually(lambda: telegram.calls_to("deleteMessage", ok_only=False) != [])
    await bot.kill()
    telegram.release("deleteMessage")

    bot = await start_bot(tg_ws)
    await ada.wait_text("Key saved", within=60)
    assert deleted(telegram, key_message)

    # The same update again (Telegram redelivers what it saw unconfirmed): handled once,
    # and the key is not called exposed.
    telegram.redeliver(update_id, telegram.pushed[update_id])
    await bot.wait_output(rf"update {update_id} was delivered again; ignored", within=15)
    ada.send("and then this")
    await ada.wait_text("echo: and then this", within=30)
    assert sum("Key saved" in t for t in ada.texts()) == 1
    leak = texts.LEAK_WARNING.split("{")[0].strip()
    assert not any(leak in t for t in ada.texts())


async def test_an_update_in_flight_at_kill_9_and_redelivered_is_handled_once(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    tg_ws.configure(LEASE)
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(tg_ws)
    await sign_up_with_key(ada, key)

    # Killed while showing "typing…", before the provider was asked.
    telegram.hold("sendChatAction")
    typing_before = len(telegram.calls_to("sendChatAction", ok_only=False))
    ada.send("count me once")
    update_id = max(telegram.pushed)
    await eventually(
        lambda: len(telegram.calls_to("sendChatAction", ok_only=False)) > typing_before
    )
    await bot.kill()
    telegram.release("sendChatAction")

    bot = await start_bot(tg_ws)
    telegram.redeliver(update_id, telegram.pushed[update_id])
    await ada.wait_text("^echo: count me once$", within=60)
    ada.send("and then this")
    await ada.wait_text("^echo: and then this$", within=30)
    assert asked(llm, "count me once") == 1
    assert sum(t == "echo: count me once" for t in ada.texts()) == 1


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
print("unlocked", flush=True)
"""


async def test_a_12_second_sqlite_write_lock_during_a_reply_loses_nothing(
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

    llm.gate = asyncio.Event()
    ada.send("remember the lock")
    await asyncio.wait_for(llm.mid_stream.wait(), 30)
    database = Path(str(tg_ws.tables["core"]["database_url"]).split(":///", 1)[1])
    locker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOCKER,
        str(database),
        "12",
        stdout=asyncio.subprocess.PIPE,
    )
    assert locker.stdout is not None
    assert (await asyncio.wait_for(locker.stdout.readline(), 30)).strip() == b"locked"
    try:
        llm.gate.set()
        # The reply completes while the lock is still held, with no error after it.
        await ada.wait_text("^echo: remember the lock$", within=10)
        assert locker.returncode is None
        await bot.wait_output(r"bookkeeping: usage could not be written", within=15)
    finally:
        out, _ = await asyncio.wait_for(locker.communicate(), 30)
    assert out.strip() == b"unlocked"
    await bot.wait_output(r"bookkeeping: caught up", within=30)
    assert not any(texts.OOPS in t for t in ada.texts())

    # Usage of that turn was booked, and its memory survives a restart.
    ada.send("/usage")
    await ada.wait_text(r"over 1 request", within=15)
    await bot.kill()
    bot = await start_bot(tg_ws)
    ada.send("what did I say?")
    await ada.wait_text("^echo: what did I say\\?$", within=30)
    history = [m.get("content") for m in llm.requests[-1].body.get("messages", [])]
    assert history == ["remember the lock", "echo: remember the lock", "what did I say?"]
    assert re.search(r"Traceback", bot.stderr()) is None
