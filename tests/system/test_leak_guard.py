"""The leak guard through ``byokbot run`` on Telegram: hidden, split and linked keys.

Each variant must be deleted and answered with the rotate warning, and no part of the key may
reach the provider, in the request itself or later through the conversation's memory.
"""

from __future__ import annotations

import json

import pytest

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer, message
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import deleted, sign_up_with_key, start_bot

WARNING = "rotate"


def _pieces(key: str) -> list[str]:
    secret = key.removeprefix("sk-ant-api03-")
    return [secret[i : i + 12] for i in range(0, len(secret) - 11, 6)]


def _provider_saw_any(llm: FakeLLMServer, key: str) -> list[str]:
    bodies = [json.dumps(r.body) for r in llm.requests]
    return [p for p in _pieces(key) if any(p in b for b in bodies)]


def _warnings(person: TelegramPerson) -> int:
    return sum(WARNING in t.lower() and "key" in t.lower() for t in person.texts())


def _hidden(key: str, char: str, at: int) -> str:
    return f"my key is {key[:at]}{char}{key[at:]} thanks"


VARIANTS = {
    "zero-width space": lambda k: [_hidden(k, "\u200b", 2)],
    "soft hyphen": lambda k: [_hidden(k, "\u00ad", 3)],
    "word joiner U+2060": lambda k: [_hidden(k, "\u2060", 6)],
    "fullwidth letters": lambda k: ["".join(chr(ord(c) + 0xFEE0) for c in "sk-ant-") + k[7:]],
    "split in the middle": lambda k: [k[:54], k[54:]],
    "split after the prefix": lambda k: [k[:13], k[13:]],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_a_disguised_key_is_deleted_and_never_reaches_the_provider(
    variant: str,
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    own, pasted = anthropic_key(), anthropic_key()
    canaries.add(own, pasted)
    await start_bot(tg_ws)
    await sign_up_with_key(ada, own)

    parts = VARIANTS[variant](pasted)
    for n, text in enumerate(parts, start=1):
        sent = ada.send(text)
        await telegram.wait_for(lambda sent=sent: deleted(telegram, sent), within=10)
        await eventually(lambda n=n: _warnings(ada) >= n, message=lambda: "\n".join(ada.texts()))

    ada.send("and now something ordinary")
    await ada.wait_text("echo: and now something ordinary", within=30)
    # That request carries the conversation's memory: none of the key is in it either.
    assert not _provider_saw_any(llm, pasted), f"the provider saw parts of the key ({variant})"


async def test_a_key_behind_a_text_link_is_deleted(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    own, pasted = anthropic_key(), anthropic_key()
    canaries.add(own, pasted)
    await start_bot(tg_ws)
    await sign_up_with_key(ada, own)

    text = "here is the doc"
    body = message(ada.user_id, ada.user, text, message_id=telegram.next_message_id())
    body["message"]["entities"] = [
        {"type": "text_link", "offset": 8, "length": 7, "url": f"https://ex.test/?k={pasted}"}
    ]
    ada.send_update(body)
    mid = body["message"]["message_id"]
    await telegram.wait_for(lambda: deleted(telegram, mid), within=10)
    await eventually(lambda: _warnings(ada) >= 1, message=lambda: "\n".join(ada.texts()))
    ada.send("anything else")
    await ada.wait_text("echo: anything else", within=30)
    assert not _provider_saw_any(llm, pasted)
    assert not any(text in json.dumps(r.body) for r in llm.requests)
