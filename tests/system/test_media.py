"""Media on Telegram through ``byokbot run``: photos, voice notes, files, stickers (2.10).

The agent reads only text, so a message without text gets a line saying so, and a caption goes
to the agent with a note that the attachment was not passed on.
"""

from __future__ import annotations

import itertools
from typing import Any

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
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
    expected = [
        (PHOTO, "photos"),
        (VOICE, "voice messages"),
        (DOCUMENT, "files"),
        (STICKER, "stickers"),
    ]
    for i, (media, name) in enumerate(expected, start=1):
        ada.send_update(media_message(ada, media))
        await eventually(
            within=30,
            predicate=lambda i=i: sum("only text" in t for t in ada.texts()) >= i,
            message=lambda: "\n---\n".join(ada.texts()) + tg_ws.processes[0].output(),
        )
        answer = [t for t in ada.texts() if "only text" in t][-1]
        assert f"can't read {name} yet" in answer, answer
        assert "type your message" in answer, answer
    assert llm.requests == []
    assert "Traceback" not in tg_ws.processes[0].output()


async def test_photo_caption_reaches_the_agent_with_a_note(
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
    # A photo while the key is awaited is neither the key nor a failed attempt.
    ada.send_update(media_message(ada, PHOTO))
    await ada.wait_text("can't read photos yet, only text")
    ada.reply_to_prompt(key)
    await ada.wait_text("sk-ant-…")

    ada.send_update(media_message(ada, PHOTO, caption="what is in this picture?"))
    await ada.wait_text(r"echo: what is in this picture\?", within=30)
    note = await ada.wait_text("can't read photos yet")
    assert "only the text" in note, note
    last = llm.requests[-1]
    assert last.key == key
    assert last.body["messages"][-1]["content"] == "what is in this picture?"


def _has_prompt(person: TelegramPerson) -> bool:
    return any(
        c.method == "sendMessage"
        and isinstance(c.params.get("reply_markup"), dict)
        and c.params["reply_markup"].get("force_reply")
        for c in person.server.calls
    )
