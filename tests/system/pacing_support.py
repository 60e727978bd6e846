"""Helpers for delivery under load (issue 13): many people signed up at once, replies per chat.

Used by tests/system/test_delivery_pacing.py and bench/load.py. Everything here reads only
what the fake Telegram saw.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

from tests.fakes.telegram_server import FLOODED_METHODS, Call, FakeTelegramServer
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import wait_prompts

WRONG = "went wrong"


async def sign_up_all(people: Sequence[TelegramPerson], keys: Sequence[str]) -> None:
    """/start, BYOK, Anthropic and the key for everyone, each step for all at once."""
    for p in people:
        p.send("/start")
    await asyncio.gather(*(p.wait_text("Pick a plan", within=120) for p in people))
    for p in people:
        p.press("BYOK")
    await asyncio.gather(*(p.wait_text("Which provider", within=120) for p in people))
    for p in people:
        p.press("Anthropic")
    await asyncio.gather(*(wait_prompts(p, 1) for p in people))
    for p, key in zip(people, keys, strict=True):
        p.reply_to_prompt(key)
    await asyncio.gather(*(p.wait_text("Key saved", within=120) for p in people))


def long_reply(words: int) -> str:
    """What the fake provider streams back: the echo, then ``words`` more chunks."""
    return " ".join(f"w{i}" for i in range(words))


@dataclass
class Delivered:
    """One reply as the chat saw it: its flood-counted calls, in order."""

    calls: list[Call]

    @property
    def first(self) -> float:
        return self.calls[0].at

    @property
    def last(self) -> float:
        return self.calls[-1].at

    @property
    def streaming(self) -> float:
        """Seconds from the first visible text to the final one."""
        return self.last - self.first

    def within_budget(self) -> bool:
        """At most one call per (started) second of streaming, plus the final one."""
        return len(self.calls) <= math.ceil(self.streaming) + 1


def direct_reply(
    telegram: FakeTelegramServer, chat_id: int, since: int, *, until: int | None = None
) -> Delivered:
    """The reply in a private chat: every flood-counted call there from ``since`` (to ``until``)."""
    return Delivered(
        [
            c
            for c in telegram.calls[since:until]
            if c.status == 200
            and c.method in FLOODED_METHODS
            and str(c.params.get("chat_id")) == str(chat_id)
        ]
    )


def group_reply(
    telegram: FakeTelegramServer,
    chat_id: int,
    quoted: int,
    *,
    since: int = 0,
    until: int | None = None,
) -> Delivered:
    """The reply in a group to the message ``quoted``: the message quoting it, and its edits.

    ``since`` and ``until`` bound the calls searched (indexes into ``telegram.calls``).
    """
    calls: list[Call] = []
    mid: int | None = None
    for c in telegram.calls[since:until]:
        if c.status != 200 or str(c.params.get("chat_id")) != str(chat_id):
            continue
        if c.method == "sendMessage" and mid is None:
            quote = c.params.get("reply_parameters")
            if isinstance(quote, dict) and int(quote.get("message_id", 0)) == quoted:
                mid = c.message_id
                calls.append(c)
        elif (
            c.method == "editMessageText"
            and mid is not None
            and int(c.params.get("message_id", 0)) == mid
        ):
            calls.append(c)
    return Delivered(calls)


def shown(telegram: FakeTelegramServer, chat_id: int, text: str) -> bool:
    """Whether a message in the chat shows exactly ``text`` now."""
    return text in telegram.texts(chat_id)
