"""Delivery under Telegram's flood limits and platform faults, through ``byokbot run`` (issue 13).

The fake Telegram enforces the documented limits (about 1 message/s per chat with small
bursts, 20/min per group, 30/s per bot) and answers 429 as the real API does; the fake
provider streams long replies in small paced chunks. Assertions are on the calls the fake saw.
"""

from __future__ import annotations

import re
from typing import Any

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.conftest import TELEGRAMS_PACE
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.pacing_support import (
    WRONG,
    Delivered,
    direct_reply,
    group_reply,
    long_reply,
    sign_up_all,
)
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import start_bot

GROUP = -100424242
BOT = "@byok_test_bot"
# Telegram's own pace (the defaults): the suite's usual config edits faster than that.
DEFAULT_PACE = {"telegram": {"edit_interval": 1.0, "group_edit_interval": 3.0, **TELEGRAMS_PACE}}


def streamed(llm: FakeLLMServer, words: int, delay: float) -> None:
    """The provider answers "echo: <message> w0 … w<words-1>", one word a chunk."""

    def reply(messages: list[dict[str, Any]]) -> str:
        last = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        return f"echo: {last} {long_reply(words)}"

    llm.reply = reply
    llm.chunk_delay = delay


def expected(text: str, words: int) -> str:
    return f"echo: {text} {long_reply(words)}"


async def test_twenty_people_at_once_all_get_their_whole_reply_with_no_429(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    canaries: CanaryScan,
) -> None:
    tg_ws.configure(DEFAULT_PACE)
    telegram.enforce_flood_limits()
    people = [TelegramPerson(telegram, 7100 + i, f"P{i}", f"p{i}") for i in range(20)]
    keys = [anthropic_key() for _ in people]
    canaries.add(*keys)
    await start_bot(tg_ws)
    await sign_up_all(people, keys)

    # Six talk in one group, the others in their private chats, all at the same moment;
    # each reply streams 40 words, 50 ms apart (about 2.5 s of provider time).
    words = 40
    streamed(llm, words, 0.05)
    in_group, in_private = people[:6], people[6:]
    since = len(telegram.calls)
    quoted: dict[int, int] = {}
    for p in in_private:
        p.send(f"question from {p.first_name}")
    for p in in_group:
        quoted[p.user_id] = p.send(f"{BOT} question from {p.first_name}", chat_id=GROUP)

    def done() -> bool:
        group = telegram.texts(GROUP)
        return all(
            expected(f"question from {p.first_name}", words) in p.texts() for p in in_private
        ) and all(
            any(t.endswith(f"question from {p.first_name} {long_reply(words)}") for t in group)
            for p in in_group
        )

    await eventually(
        done,
        within=120,
        message=lambda: "\n---\n".join(
            [*(t for p in in_private for t in p.texts()[-1:]), *telegram.texts(GROUP)]
        ),
    )

    assert telegram.flood_refusals() == []
    for p in people:
        assert not any(WRONG in t for t in p.texts()), p.texts()
    assert not any(WRONG in t for t in telegram.texts(GROUP))
    assert telegram.most_in_window(GROUP, 60.0) <= 20
    replies: list[Delivered] = [direct_reply(telegram, p.user_id, since) for p in in_private]
    replies += [group_reply(telegram, GROUP, quoted[p.user_id]) for p in in_group]
    for r in replies:
        assert r.calls, "a reply made no platform call"
        assert r.within_budget(), f"{len(r.calls)} calls in {r.streaming:.2f} s: " + ", ".join(
            f"{c.method}@{c.at - r.first:.2f}" for c in r.calls
        )


async def test_a_502_on_a_draft_and_a_timeout_on_an_edit_are_retried_and_the_reply_completes(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    canaries: CanaryScan,
) -> None:
    ada = TelegramPerson(telegram, 4242, "Ada", "ada")
    bob = TelegramPerson(telegram, 4343, "Bob", "bob")
    keys = [anthropic_key(), anthropic_key()]
    canaries.add(*keys)
    await start_bot(tg_ws)
    await sign_up_all([ada, bob], keys)

    # Chunks slower than the edit pace (0.2 s, 0.5 s in groups): each one is shown as it comes,
    # so a failed update is met in the stream itself, not only in a delayed flush.
    words = 8
    streamed(llm, words, 0.6)
    # Ada's second draft answers 502 once; the first edit of Bob's group reply never gets an
    # answer (python-telegram-bot times out after 5 s).
    telegram.fail("sendMessageDraft", 502, "Bad Gateway", chat_id=ada.user_id, skip=1)
    telegram.time_out("editMessageText", chat_id=GROUP, seconds=7.0)
    ada.send("tell me a story")
    quote = bob.send(f"{BOT} tell us a story", chat_id=GROUP)

    await ada.wait_text(re.escape(expected("tell me a story", words)), within=60)
    await bob.wait_text(f"tell us a story {long_reply(words)}$", chat_id=GROUP, within=60)

    statuses = [(c.method, c.status) for c in telegram.calls]
    assert ("sendMessageDraft", 502) in statuses
    assert ("editMessageText", 504) in statuses  # the stalled one (its answer came too late)
    assert not any(WRONG in t for t in ada.texts()), ada.texts()
    assert not any(WRONG in t for t in telegram.texts(GROUP)), telegram.texts(GROUP)
    # Each reply is one message: nothing was sent twice.
    assert [t for t in ada.texts() if t.startswith("echo: tell me")] == [
        expected("tell me a story", words)
    ]
    group = group_reply(telegram, GROUP, quote)
    methods = [c.method for c in group.calls]
    assert methods.count("sendMessage") == 1 and methods.count("editMessageText") >= 2
    assert len([t for t in telegram.texts(GROUP) if "tell us a story" in t]) == 1


async def test_the_agent_is_asked_without_waiting_for_the_typing_action(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    canaries: CanaryScan,
) -> None:
    ada = TelegramPerson(telegram, 4545, "Ada", "ada")
    key = anthropic_key()
    canaries.add(key)
    await start_bot(tg_ws)
    await sign_up_all([ada], [key])
    # The agent started first: a cold start under a loaded machine is not what is measured.
    ada.send("hello")
    await ada.wait_text("^echo: hello$", within=60)

    # Telegram is slow to answer chat actions (as under load): the one for this message gets
    # no answer until the reply is in the chat. Waiting for it first would have the client
    # give up and try again before the provider is even asked.
    actions_when_asked: list[int] = []

    def reply(messages: list[dict[str, Any]]) -> str:
        actions_when_asked.append(len(telegram.calls_to("sendChatAction", ok_only=False)))
        last = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        return f"echo: {last}"

    llm.reply = reply
    before = len(telegram.calls_to("sendChatAction", ok_only=False))
    telegram.hold("sendChatAction")
    try:
        ada.send("are you there")
        await ada.wait_text("^echo: are you there$", within=60)
    finally:
        telegram.release("sendChatAction")

    # The provider got the request while the first chat action was still unanswered (no
    # retry of it yet, perhaps not even sent), and the reply came whole.
    assert len(actions_when_asked) == 1 and actions_when_asked[0] <= before + 1
    assert ada.texts()[-1] == "echo: are you there"
