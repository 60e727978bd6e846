"""Media on the managed plan, through ``byokbot run`` with the in-process metering proxy.

A photo goes through the proxy to the curated model's upstream with the platform's key and
counts against the plan's allowance (its image tokens are in the upstream's usage); a model
the catalog marks ``images = false`` gets no photo, a clear answer instead, and nothing reaches
the upstream (nor does a voice note where the operator turned transcription off). A voice note
is transcribed through the proxy's ``/v1/audio/transcriptions`` with
the platform's OpenAI key, shown, answered and counted in ``/usage``; over the cap it is refused
in words before the upstream hears it.
"""

from __future__ import annotations

import re

from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.media_files import OGG_VOICE, png
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace
from tests.system.managed_support import enable_proxy, sign_up_managed, start_bot
from tests.system.people import TelegramPerson
from tests.system.test_media import media_message
from tests.system.test_media_read import _file, provider_saw_no_platform_secret


def _spent(text: str) -> int:
    m = re.search(r"Plan allowance this month: ([\d,]+) of", text)
    assert m is not None, text
    return int(m.group(1).replace(",", ""))


async def test_a_managed_photo_is_metered_and_a_model_without_images_says_so(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    keys = enable_proxy(tg_ws, llm, canaries)
    tg_ws.configure(
        {
            'proxy.models."model-small"': {"images": False},
            # The operator may turn managed voice notes off: they get a line asking to type.
            "proxy.transcription": {"enabled": False},
        }
    )
    await start_bot(tg_ws, telegram)
    await sign_up_managed(ada)
    ada.send("/usage")
    before = _spent(await ada.wait_text("Plan allowance this month"))

    image = png(3, 2)
    telegram.add_file("AgADbig", image)
    photo = {"photo": [_file("AgADbig", len(image), width=1280, height=960)]}
    ada.send_update(media_message(ada, photo, caption="what is this?"))
    await ada.wait_text(r"echo: what is this\? \(saw 1 image\)", within=30)
    assert llm.images() == [("anthropic", "image/png", image)]
    assert llm.keys() == [keys.anthropic]  # through the proxy, on the platform's key
    ada.send("/usage")
    await ada.wait_text("Plan allowance this month: (?!0 of)")
    assert _spent(ada.texts()[-1]) > before

    # The curated catalog says model-small reads no images: the photo is refused in words.
    ada.send("/model")
    await ada.wait_text("(?i)choose one")
    ada.press("model-small")
    await ada.wait_text("Model set to model-small")
    asked = len(llm.requests)
    ada.send_update(media_message(ada, photo, caption="and this one?"))
    await ada.wait_text("The model model-small can't look at images", within=30)
    ada.send_update(media_message(ada, _voice(telegram)))
    await ada.wait_text("Voice messages aren't available on the managed plan", within=30)
    assert len(llm.requests) == asked, "a refused photo or voice note reached the upstream"
    provider_saw_no_platform_secret(llm, telegram)


def _voice(telegram: FakeTelegramServer, seconds: int = 2) -> dict[str, object]:
    telegram.add_file("AwADvoice", OGG_VOICE)
    return {
        "voice": {
            **_file("AwADvoice", len(OGG_VOICE)),
            "duration": seconds,
            "mime_type": "audio/ogg",
        }
    }


async def test_a_managed_voice_note_is_transcribed_through_the_proxy_and_metered(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    keys = enable_proxy(tg_ws, llm, canaries)
    # The defaults, spelled out: what the /usage line below is priced at.
    tg_ws.configure({"proxy.transcription": {"usd_per_minute": 0.006, "tokens_per_minute": 600}})
    llm.transcript_seconds = 2.4  # billed as 3 s: 30 tokens, $0.0003
    await start_bot(tg_ws, telegram)
    await sign_up_managed(ada)

    ada.send_update(media_message(ada, _voice(telegram)))
    await ada.wait_text("I heard: “remind me to water the plants”", within=30)
    await ada.wait_text("^echo: remind me to water the plants$", within=30)
    assert llm.transcriptions == [OGG_VOICE]
    heard = [r for r in llm.requests if r.kind == "transcription"]
    # Through the proxy, on the PLATFORM's OpenAI key, the catalog's model, verbose_json
    # (the duration it bills by); the tenant has no key of its own.
    assert [r.key for r in heard] == [keys.openai]
    assert heard[0].body["model"] == "whisper-1"
    assert heard[0].body["response_format"] == "verbose_json"
    assert llm.keys("anthropic") == [keys.anthropic]
    ada.send("/usage")
    usage = await ada.wait_text("Voice notes this month")
    assert "Voice notes this month: 1 (3 s of audio, $0.0003)" in usage
    assert _spent(usage) > 30  # the voice note's 30 tokens and the agent's reply
    provider_saw_no_platform_secret(llm, telegram)


async def test_a_managed_voice_note_over_the_cap_is_refused_before_the_upstream(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    # The 2 kB file alone bounds the note at 5 s (500 B/s, 50 tokens), within a 100 cap; but
    # Telegram says it lasts 30 s: 300 tokens are reserved, and that does not fit.
    enable_proxy(tg_ws, llm, canaries, token_cap=100)
    await start_bot(tg_ws, telegram)
    await sign_up_managed(ada)
    ada.send_update(media_message(ada, _voice(telegram, seconds=30)))
    refusal = await ada.wait_text("(?i)you've used this month's allowance", within=30)
    assert "provider" not in refusal.lower()
    assert not [r for r in llm.requests if r.kind == "transcription"], "reached the upstream"
    assert llm.transcriptions == []
    assert "I heard" not in ada.everything()
