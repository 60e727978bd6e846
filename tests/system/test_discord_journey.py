"""A new person on Discord, through ``byokbot run``: plan, key, agent, rotation, leak, delete."""

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
from tests.system.harness import CanaryScan, Workspace, eventually

__all__ = ["ada_dc", "dc_ws", "discord"]  # fixtures, imported for pytest


def _deletes(fake: FakeDiscord, message_id: str) -> list[int]:
    """Statuses of the bot's attempts to delete one message."""
    return [c.status for c in fake.find("DELETE", rf"/messages/{message_id}$")]


async def test_byok_journey(
    dc_ws: Workspace,
    discord: FakeDiscord,
    llm: FakeLLMServer,
    ada_dc: DiscordPerson,
    canaries: CanaryScan,
) -> None:
    ada = ada_dc
    first, second, in_channel, in_dm = (anthropic_key() for _ in range(4))
    canaries.add(first, second, in_channel, in_dm)
    await start_discord_bot(dc_ws, discord)

    await ada.slash("start")
    await ada.wait_text("Pick a plan")
    await ada.press("BYOK")
    await ada.wait_text("Which provider")
    await ada.press("Anthropic")
    modal = await ada.wait_modal()
    assert "Anthropic" in modal.title
    await ada.submit_modal(first)
    await ada.wait_text(r"Key saved: sk-ant-…")

    await ada.send_dm("hello agent")
    reply = await ada.wait_text("echo: hello agent", within=30)
    assert llm.keys("anthropic")[-1] == first

    await ada.slash("key", "rotate", provider="anthropic")
    await eventually(lambda: len(discord.modals) >= 2 and ada.modal is not None)
    await ada.submit_modal(second)
    await ada.wait_text(r"Key rotated: sk-ant-…")
    await ada.send_dm("after rotation")
    await ada.wait_text("echo: after rotation", within=30)
    assert llm.keys("anthropic")[-1] == second

    # The leak guard: in a server channel the message is deleted and everyone is warned.
    leak = await ada.say(f"here is my other key {in_channel} ok")
    await eventually(lambda: 204 in _deletes(discord, leak), message=ada.transcript)
    # No ephemeral message answers a plain message: the warning goes to the DM.
    await ada.wait_text("(?i)deleted.*rotate")
    # In a DM the bot cannot delete a person's message: the person is told to rotate.
    dm_leak = await ada.send_dm(f"oops {in_dm}")
    await eventually(lambda: 403 in _deletes(discord, dm_leak), message=ada.transcript)
    await ada.wait_text("(?i)couldn't delete.*rotat")
    await ada.send_dm("still on the old key?")
    await ada.wait_text("echo: still on the old key", within=30)
    assert llm.keys("anthropic")[-1] == second
    assert all(k not in str(r.body) for r in llm.requests for k in (in_channel, in_dm))

    await ada.slash("delete")
    await ada.wait_text("(?i)erase")
    await ada.press("Yes, erase")
    await ada.wait_text("(?i)has been erased")
    await ada.send_dm("still there?")
    await ada.wait_text("Pick a plan|/start")
    assert reply.edits >= 1, "the reply was not streamed (shown once, never edited)"
    assert not [c for c in discord.refused() if c.status != 403], discord.refused()
