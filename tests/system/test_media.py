"""Media on Telegram through ``byokbot run``: photos, voice notes, files, stickers (2.10).

Before sign-up a photo, voice note or file gets a line saying to set one up; a sticker always
gets a line saying the agent reads no stickers. While a key is awaited a photo is not taken
for the key; afterwards a captioned photo reaches the agent with its caption
(test_media_read.py covers what the agent reads).
"""

from __future__ import annotations

import itertools
from typing import Any

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.media_files import png
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson

_files = itertools.count(1)


def _file(**extra: Any) -> dict[str, Any]:
    n = next(_files)
    return {"file_id": f"AgADfile{n}", "file_unique_id": f"uniq{n}", "file_size": 2048, **extra}


# Media as the Bot API delivers them (the fields python-telegram-bot requires, and a few more).
PHOTO = {"photo": [_file(width=90, height=67), _file(width=1280, height=960)]}
VOICE = {"voice": _file(duration=3, mime_type="audio/ogg")}
DOCUMENT = {"document": _file(file_name="report.pdf", mime_type="application/pdf")}
STICKER = {
    "sticker": _file(
        type="regular",
        width=512,
        height=512,
        is_animated=False,
        is_video=False,
        emoji="👍",
        set_name="HotCherry",
    )
}


def media_message(
    person: TelegramPerson, media: dict[str, Any], caption: str | None = None
) -> dict[str, Any]:
    """A private-chat ``message`` update carrying ``media`` (and a caption)."""
    msg: dict[str, Any] = {
        "message_id": person.server.next_message_id(),
        "date": 1_780_000_000,
        "chat": {"id": person.user_id, "type": "private", "first_name": person.first_name},
        "from": person.user,
        **media,
    }
    if caption is not None:
        msg["caption"] = caption
    return {"message": msg}


async def start_bot(ws: Workspace) -> None:
    bot = await ws.start("run")
    await bot.wait_output(r"telegram: serving @\w+ by polling", within=30)


async def test_media_without_text_gets_a_clear_answer(
    tg_ws: Workspace, telegram: FakeTelegramServer, llm: FakeLLMServer, ada: TelegramPerson
) -> None:
    await start_bot(tg_ws)
    for i, media in enumerate([PHOTO, VOICE, DOCUMENT], start=1):
        ada.send_update(media_message(ada, media))
        await eventually(
            within=30,
            predicate=lambda i=i: sum("Send /start" in t for t in ada.texts()) >= i,
            message=lambda: "\n---\n".join(ada.texts()) + tg_ws.processes[0].output(),
        )
    ada.send_update(media_message(ada, STICKER))
    answer = await ada.wait_text("only text", within=30)
    assert "can't read stickers yet" in answer, answer
    assert "type your message" in answer, answer
    assert llm.requests == []
    assert telegram.downloads == []
    assert "Traceback" not in tg_ws.processes[0].output()


async def test_photo_caption_reaches_the_agent_with_the_photo(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    await start_bot(tg_ws)
    ada.send("/start")
    await ada.wait_text("Pick a plan")
    ada.press("BYOK")
    await ada.wait_text("Which provider")
    ada.press("Anthropic")
    await eventually(
        within=30, predicate=lambda: _has_prompt(ada), message=lambda: "\n".join(ada.texts())
    )
    # A photo while the key is awaited is neither the key nor a failed attempt (the agent
    # has no key yet, which the person is told).
    ada.send_update(media_message(ada, PHOTO))
    await ada.wait_text("Your agent has no API key to use", within=30)
    ada.reply_to_prompt(key)
    await ada.wait_text("sk-ant-…")

    image = png()
    telegram.add_file(PHOTO["photo"][-1]["file_id"], image)
    ada.send_update(media_message(ada, PHOTO, caption="what is in this picture?"))
    await ada.wait_text(r"echo: what is in this picture\? \(saw 1 image\)", within=30)
    last = llm.requests[-1]
    assert last.key == key
    assert last.body["messages"][-1]["content"][-1] == {
        "type": "text",
        "text": "what is in this picture?",
    }
    assert llm.images() == [("anthropic", "image/png", image)]


def _has_prompt(person: TelegramPerson) -> bool:
    return any(
        c.method == "sendMessage"
        and isinstance(c.params.get("reply_markup"), dict)
        and c.params["reply_markup"].get("force_reply")
        for c in person.server.calls
    )
