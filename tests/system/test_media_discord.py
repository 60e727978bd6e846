"""A photo and a PDF sent to the agent on Discord, through ``byokbot run`` (issue 14, media).

The bot downloads each attachment from its (signed) CDN URL and passes what it read on: the
photo as image input, the PDF's text as context. The URL never reaches the provider.
"""

from __future__ import annotations

import json

from tests.canaries import anthropic_key
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.media_files import pdf, png
from tests.system.discord_fixtures import (
    DiscordPerson,
    ada_dc,
    dc_ws,
    discord,
    start_discord_bot,
)
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.telegram_steps import llm_saw

__all__ = ["ada_dc", "dc_ws", "discord"]  # fixtures, imported for pytest


async def send_with(
    person: DiscordPerson, fake: FakeDiscord, text: str, *attachments: dict[str, object]
) -> None:
    """A DM from ``person`` with ``attachments`` (from ``FakeDiscord.add_attachment``)."""
    payload = fake.message(person.user, text, channel_id=None)
    payload["attachments"] = list(attachments)
    await fake.dispatch("MESSAGE_CREATE", payload)


async def test_photo_and_pdf_on_discord(
    dc_ws: Workspace,
    discord: FakeDiscord,
    llm: FakeLLMServer,
    ada_dc: DiscordPerson,
    canaries: CanaryScan,
) -> None:
    ada = ada_dc
    key = anthropic_key()
    canaries.add(key)
    await start_discord_bot(dc_ws, discord)
    await ada.slash("start")
    await ada.wait_text("Pick a plan")
    await ada.press("BYOK")
    await ada.wait_text("Which provider")
    await ada.press("Anthropic")
    await ada.wait_modal()
    await ada.submit_modal(key)
    await ada.wait_text(r"Key saved: sk-ant-…")

    image = png(5, 5)
    photo = discord.add_attachment(image, "cat.png", "image/png", width=5, height=5)
    await send_with(ada, discord, "what is this?", photo)
    await ada.wait_text(r"echo: what is this\? \(saw 1 image\)", within=30)
    assert llm.images() == [("anthropic", "image/png", image)]
    assert llm.requests[-1].key == key

    report = pdf("The DISCORD report is green.")
    await send_with(ada, discord, "", discord.add_attachment(report, "r.pdf", "application/pdf"))
    await eventually(lambda: llm_saw(llm, "The DISCORD report is green."), within=30)
    assert len(discord.downloads) == 2
    sent = json.dumps([r.body for r in llm.requests])
    assert "/attachments/" not in sent and f"127.0.0.1:{discord.port}" not in sent
