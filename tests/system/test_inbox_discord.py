"""``byokbot run`` on Discord killed (-9) mid-reply: the person is told to send it again."""

from __future__ import annotations

import asyncio

from bot import texts
from tests.canaries import anthropic_key
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.llm_server import FakeLLMServer
from tests.system.discord_fixtures import (
    DiscordPerson,
    ada_dc,
    dc_ws,
    discord,
    start_discord_bot,
)
from tests.system.harness import CanaryScan, Workspace

__all__ = ["ada_dc", "dc_ws", "discord"]  # fixtures, imported for pytest


async def test_a_dm_cut_short_by_kill_9_gets_a_note_to_resend(
    dc_ws: Workspace,
    discord: FakeDiscord,
    llm: FakeLLMServer,
    ada_dc: DiscordPerson,
    canaries: CanaryScan,
) -> None:
    dc_ws.configure({"inbox": {"lease_seconds": 2}})
    ada = ada_dc
    key = anthropic_key()
    canaries.add(key)
    bot = await start_discord_bot(dc_ws, discord)
    await ada.slash("start")
    await ada.press("BYOK")
    await ada.press("Anthropic")
    await ada.wait_modal()
    await ada.submit_modal(key)
    await ada.wait_text(r"Key saved: sk-ant-…")

    llm.gate = asyncio.Event()
    await ada.send_dm("are you there?")
    await asyncio.wait_for(llm.mid_stream.wait(), 30)
    await bot.kill()
    llm.gate.set()

    await start_discord_bot(dc_ws, discord)
    await ada.wait_text(texts.INBOX_RESEND.split("—")[1].strip(), within=60)
    # Told once, and the bot goes on answering.
    await ada.send_dm("hello again")
    await ada.wait_text("echo: hello again", within=30)
    assert sum(texts.INBOX_RESEND in t for t in ada.texts()) == 1
