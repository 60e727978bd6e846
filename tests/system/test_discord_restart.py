"""``byokbot run`` on Discord killed (-9) in the middle of a flow and started again: nobody is stuck."""

from __future__ import annotations

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


async def test_key_modal_and_delete_confirmation_survive_a_crash(
    dc_ws: Workspace,
    discord: FakeDiscord,
    llm: FakeLLMServer,
    ada_dc: DiscordPerson,
    canaries: CanaryScan,
) -> None:
    ada = ada_dc
    key = anthropic_key()
    canaries.add(key)
    bot = await start_discord_bot(dc_ws, discord)
    await ada.slash("start")
    await ada.press("BYOK")
    await ada.press("Anthropic")
    await ada.wait_modal()

    await bot.kill()  # the modal stays on Ada's screen
    bot = await start_discord_bot(dc_ws, discord)
    await ada.submit_modal(key)
    await ada.wait_text(r"Key saved: sk-ant-…")
    await ada.send_dm("hello after the crash")
    await ada.wait_text("echo: hello after the crash", within=30)
    assert llm.keys("anthropic")[-1] == key

    await ada.slash("delete")
    await ada.wait_text("(?i)are you sure")
    await bot.kill()
    await start_discord_bot(dc_ws, discord)
    await ada.press("Yes, erase")
    await ada.wait_text("(?i)has been erased")
    await ada.send_dm("anyone there?")
    await ada.wait_text("Pick a plan|/start")
