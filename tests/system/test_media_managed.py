"""Media on the managed plan, through ``byokbot run`` with the in-process metering proxy.

A photo goes through the proxy to the curated model's upstream with the platform's key and
counts against the plan's allowance (its image tokens are in the upstream's usage); a model
the catalog marks ``images = false`` gets no photo, a clear answer instead; a voice note gets
the managed plan's answer (no transcription route), and none of it reaches the upstream.
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
    tg_ws.configure({'proxy.models."model-small"': {"images": False}})
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
    telegram.add_file("AwADvoice", OGG_VOICE)
    voice = {
        "voice": {**_file("AwADvoice", len(OGG_VOICE)), "duration": 2, "mime_type": "audio/ogg"}
    }
    ada.send_update(media_message(ada, voice))
    await ada.wait_text("Voice messages aren't supported on the managed plan", within=30)
    assert len(llm.requests) == asked, "a refused photo or voice note reached the upstream"
    provider_saw_no_platform_secret(llm, telegram)
