"""The agent reads what people send on Telegram, through ``byokbot run`` (issue 14, media).

A photo reaches the provider as image input (Anthropic base64 blocks, OpenAI data URLs), a
voice note is transcribed with the tenant's OpenAI key and the transcript shown, a PDF's text
reaches the model as context, and a file over the limit is refused before it is downloaded.
The bot fetches every file through the Bot API with its token; neither the token nor a
platform file URL may reach the agent or the provider.
"""

from __future__ import annotations

import json
from typing import Any

from tests.canaries import anthropic_key, openai_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.media_files import OGG_VOICE, pdf, png
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import llm_saw, sign_up_with_key, start_bot, wait_prompts
from tests.system.telegram_steps import prompts as prompt_count
from tests.system.test_media import STICKER, media_message


def _file(file_id: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"file_id": file_id, "file_unique_id": f"u-{file_id}", "file_size": size, **extra}


def provider_saw_no_platform_secret(llm: FakeLLMServer, telegram: FakeTelegramServer) -> None:
    """Nothing the agent sent upstream names the bot token or a Bot API file URL."""
    sent = json.dumps([r.body for r in llm.requests])
    assert telegram.token not in sent
    assert "/file/bot" not in sent and f"127.0.0.1:{telegram.port}" not in sent


async def sign_up_openai(person: TelegramPerson, key: str) -> None:
    """Sign up on BYOK with an OpenAI key (the key that can also transcribe)."""
    before = prompt_count(person)
    person.send("/start")
    await person.wait_text("Pick a plan")
    person.press("BYOK")
    await person.wait_text("Which provider")
    person.press("OpenAI")
    await wait_prompts(person, before + 1)
    person.reply_to_prompt(key)
    await person.wait_text("Key saved")


async def test_a_photo_reaches_the_model_and_is_described(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    await start_bot(tg_ws)
    await sign_up_with_key(ada, key)
    image = png(3, 2)
    telegram.add_file("AgADbig", image)
    photo = {
        "photo": [
            _file("AgADthumb", 90, width=90, height=67),
            _file("AgADbig", len(image), width=1280, height=960),
        ]
    }

    ada.send_update(media_message(ada, photo, caption="what is in this picture?"))
    await ada.wait_text(r"echo: what is in this picture\? \(saw 1 image\)", within=30)
    assert llm.images() == [("anthropic", "image/png", image)]
    last = llm.requests[-1]
    assert last.key == key
    assert telegram.downloads == ["media/AgADbig"]  # the largest size, fetched once
    assert not any("can't read" in t for t in ada.texts())

    # Without a caption the photo alone is a message, and memory keeps only a marker of it.
    ada.send_update(media_message(ada, photo))
    await ada.wait_text(r"echo:\s+\(saw 1 image\)", within=30)
    ada.send("and now?")
    await ada.wait_text("echo: and now?", within=30)
    history = llm.requests[-1].body["messages"]
    assert [m["content"] for m in history if m["role"] == "user"][-2] == "[1 image(s)]"
    assert len(llm.images()) == 2  # the old images are not sent again
    provider_saw_no_platform_secret(llm, telegram)


async def test_a_photo_on_an_openai_key_goes_as_a_data_url(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = openai_key()
    canaries.add(key)
    await start_bot(tg_ws)
    await sign_up_openai(ada, key)
    image = png(1, 1)
    telegram.add_file("AgADone", image)
    ada.send_update(
        media_message(ada, {"photo": [_file("AgADone", len(image), width=1, height=1)]}, "hi")
    )
    await ada.wait_text(r"echo: hi \(saw 1 image\)", within=30)
    parts = llm.requests[-1].body["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "hi"}
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert llm.images() == [("openai-compatible", "image/png", image)]
    provider_saw_no_platform_secret(llm, telegram)


async def test_a_voice_note_is_transcribed_shown_and_answered(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = openai_key()
    canaries.add(key)
    await start_bot(tg_ws)
    await sign_up_openai(ada, key)
    telegram.add_file("AwADvoice", OGG_VOICE)
    voice = {"voice": _file("AwADvoice", len(OGG_VOICE), duration=3, mime_type="audio/ogg")}

    ada.send_update(media_message(ada, voice))
    await ada.wait_text("I heard: “remind me to water the plants”", within=30)
    await ada.wait_text("echo: remind me to water the plants", within=30)
    heard = [r for r in llm.requests if r.kind == "transcription"]
    assert len(heard) == 1
    assert heard[0].key == key
    assert heard[0].body["model"] == "whisper-1"
    assert llm.transcriptions == [OGG_VOICE]
    provider_saw_no_platform_secret(llm, telegram)


async def test_a_voice_note_without_an_openai_key_gets_a_clear_answer(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    await start_bot(tg_ws)
    await sign_up_with_key(ada, key)
    telegram.add_file("AwADvoice2", OGG_VOICE)
    before = len(llm.requests)
    ada.send_update(media_message(ada, {"voice": _file("AwADvoice2", len(OGG_VOICE), duration=2)}))
    await ada.wait_text("I need an OpenAI API key", within=30)
    assert len(llm.requests) == before
    assert telegram.downloads == []


async def test_a_pdf_is_read_and_an_oversized_file_is_refused(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    canaries.add(key)
    tg_ws.configure({"media": {"max_document_bytes": 100_000, "max_document_pages": 3}})
    await start_bot(tg_ws)
    await sign_up_with_key(ada, key)

    report = pdf("Quarterly report: revenue rose by PELICAN percent.", "Page two says hello.")
    telegram.add_file("BQADpdf", report)
    document = {
        "document": _file(
            "BQADpdf", len(report), file_name="report.pdf", mime_type="application/pdf"
        )
    }
    ada.send_update(media_message(ada, document, caption="summarise it"))
    await eventually(lambda: llm_saw(llm, "revenue rose by PELICAN percent"), within=30)
    assert llm_saw(llm, "Page two says hello.")
    assert llm_saw(llm, "summarise it")
    await ada.wait_text("echo: The person sent a file", within=30)

    # A Markdown file is text as it is.
    notes = b"# Plan\n\n- water the FERNS\n"
    telegram.add_file("BQADmd", notes)
    md = {"document": _file("BQADmd", len(notes), file_name="plan.md", mime_type="text/markdown")}
    ada.send_update(media_message(ada, md))
    await eventually(lambda: llm_saw(llm, "water the FERNS"), within=30)

    # Over the size limit: refused from the size Telegram states, never downloaded.
    big = {
        "document": _file("BQADbig", 5_000_000, file_name="huge.pdf", mime_type="application/pdf")
    }
    downloads, requests = len(telegram.downloads), len(llm.requests)
    ada.send_update(media_message(ada, big))
    answer = await ada.wait_text("too large", within=30)
    assert "4.8 MB" in answer and "0.1 MB" in answer, answer
    # Over the page limit: refused after reading the page count.
    long = pdf("one", "two", "three", "four")
    telegram.add_file("BQADlong", long)
    ada.send_update(
        media_message(ada, {"document": _file("BQADlong", len(long), file_name="long.pdf")})
    )
    await ada.wait_text("That PDF has 4 pages; I read at most 3", within=30)
    # A binary file that is no PDF, and a sticker: one clear line each.
    blob = bytes(range(256))
    telegram.add_file("BQADbin", blob)
    ada.send_update(media_message(ada, {"document": _file("BQADbin", 256, file_name="x.bin")}))
    await ada.wait_text("text, Markdown, code and PDF files only", within=30)
    ada.send_update(media_message(ada, STICKER))
    await ada.wait_text("can't read stickers", within=30)
    assert telegram.downloads[downloads:] == ["media/BQADlong", "media/BQADbin"]
    assert len(llm.requests) == requests
    provider_saw_no_platform_secret(llm, telegram)
