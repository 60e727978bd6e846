"""Discord defects of issue 10, through ``byokbot run`` against the strict fake.

Defect 3: a key is accepted only from the modal; a closed modal leaves DMs free; a refused
modal value offers a button that reopens the modal. Defect 8: everything personal in a server
channel is ephemeral, the modal's texts fit Discord's limits, help and hints use Discord's
slash command syntax.
"""

from __future__ import annotations

import re

from tests.canaries import anthropic_key
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.llm_server import FakeLLMServer
from tests.system.discord_fixtures import (
    SERVER_CHANNEL,
    DiscordPerson,
    ada_dc,
    another_person,
    dc_ws,
    discord,
    start_discord_bot,
)
from tests.system.harness import CanaryScan, Workspace, eventually

__all__ = ["ada_dc", "dc_ws", "discord"]  # fixtures, imported for pytest

FRANCE = "never mind, what is the capital of France?"


async def _sign_up_with_key(ada: DiscordPerson, key: str, *, channel: str | None = None) -> None:
    await ada.slash("start", channel=channel)
    await ada.press("BYOK", channel=channel)
    await ada.press("Anthropic", channel=channel)
    await ada.wait_modal()
    await ada.submit_modal(key)
    await ada.wait_text(r"Key saved: sk-ant-…", channel=channel)


def _delete_attempts(fake: FakeDiscord, message_id: str) -> int:
    return len(fake.find("DELETE", rf"/messages/{message_id}$"))


# -- defect 3 -------------------------------------------------------------------------------


async def test_closed_modal_leaves_dms_to_the_agent(
    dc_ws: Workspace,
    discord: FakeDiscord,
    llm: FakeLLMServer,
    ada_dc: DiscordPerson,
    canaries: CanaryScan,
) -> None:
    ada = ada_dc
    first, typed = anthropic_key(), anthropic_key()
    canaries.add(first, typed)
    await start_discord_bot(dc_ws, discord)
    await _sign_up_with_key(ada, first)

    await ada.slash("key", "rotate", provider="anthropic")
    await ada.wait_modal()
    ada.close_modal()  # Discord tells the bot nothing

    question = await ada.send_dm(FRANCE)
    await ada.wait_text(re.escape(f"echo: {FRANCE}"), within=30)
    assert _delete_attempts(discord, question) == 0
    assert not any("valid" in t for t in ada.texts()), ada.transcript()

    # A real key typed in the DM is the leak guard's case: not stored, the person told to
    # rotate it (the bot cannot delete a person's DM message).
    pasted = await ada.send_dm(typed)
    await eventually(lambda: _delete_attempts(discord, pasted) == 1, message=ada.transcript)
    await ada.wait_text("(?i)couldn't delete.*rotat")
    assert not any("Key rotated" in t for t in ada.texts()), ada.transcript()
    await ada.send_dm("which key now?")
    await ada.wait_text("echo: which key now", within=30)
    assert llm.keys("anthropic")[-1] == first
    assert typed not in llm.keys("anthropic")


async def test_refused_modal_value_offers_a_button_that_reopens_the_modal(
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
    await ada.press("BYOK")
    await ada.press("Anthropic")
    modal = await ada.wait_modal()

    await ada.submit_modal("not a key at all")
    refusal = await ada.wait_text("(?i)doesn't look like")
    assert "send it again" not in refusal.content.lower(), refusal.content
    assert refusal.ephemeral
    labels = [b.get("label") for b in refusal.buttons()]
    assert labels, f"no button to reopen the form under: {refusal.content}"

    await ada.press(str(labels[0]))
    again = await ada.wait_modal()
    assert again.custom_id == modal.custom_id
    await ada.submit_modal(key)
    await ada.wait_text(r"Key saved: sk-ant-…")
    await ada.send_dm("hello")
    await ada.wait_text("echo: hello", within=30)
    assert llm.keys("anthropic")[-1] == key
    assert not discord.refused(), discord.refused()


# -- defect 8 -------------------------------------------------------------------------------


async def test_personal_answers_in_a_server_channel_are_ephemeral(
    dc_ws: Workspace,
    discord: FakeDiscord,
    ada_dc: DiscordPerson,
    canaries: CanaryScan,
) -> None:
    ada, bob = ada_dc, another_person(discord, "bob")
    key = anthropic_key()
    canaries.add(key)
    await start_discord_bot(dc_ws, discord)

    await ada.slash("start", channel=SERVER_CHANNEL)
    await ada.wait_text("Pick a plan", channel=SERVER_CHANNEL)
    await ada.press("BYOK", channel=SERVER_CHANNEL)
    await ada.press("Anthropic", channel=SERVER_CHANNEL)
    await ada.wait_modal()
    await ada.submit_modal(key)
    await ada.wait_text(r"Key saved: sk-ant-…", channel=SERVER_CHANNEL)
    await ada.slash("status", channel=SERVER_CHANNEL)
    await ada.wait_text("(?i)plan:", channel=SERVER_CHANNEL)
    await ada.slash("key", "list", channel=SERVER_CHANNEL)
    await ada.wait_text("(?i)your keys", channel=SERVER_CHANNEL)
    await ada.slash("help", channel=SERVER_CHANNEL)
    await ada.wait_text("(?i)here's what I can do", channel=SERVER_CHANNEL)
    await ada.slash("delete", channel=SERVER_CHANNEL)
    await ada.wait_text("(?i)are you sure", channel=SERVER_CHANNEL)
    await ada.press("Yes, erase", channel=SERVER_CHANNEL)
    await ada.wait_text("(?i)has been erased", channel=SERVER_CHANNEL)

    public = [m.content for m in ada.visible(SERVER_CHANNEL) if not m.ephemeral]
    assert not public, f"public in the server channel: {public}"
    assert not bob.texts(SERVER_CHANNEL), bob.transcript(SERVER_CHANNEL)
    assert not discord.refused(), discord.refused()


async def test_key_modal_texts_fit_discords_limits(
    dc_ws: Workspace, discord: FakeDiscord, ada_dc: DiscordPerson
) -> None:
    await start_discord_bot(dc_ws, discord)
    await ada_dc.slash("start")
    await ada_dc.press("BYOK")
    await ada_dc.press("Anthropic")
    modal = await ada_dc.wait_modal()
    field = modal.inputs[0]
    texts = [modal.title, field.get("label") or "", field.get("placeholder") or ""]
    assert all("…" not in t for t in texts), f"cut by the adapter: {texts}"
    assert len(modal.title) <= 45 and len(texts[1]) <= 45 and len(texts[2]) <= 100
    assert "encrypted" in texts[1] + texts[2]
    assert not discord.refused(), discord.refused()


async def test_help_and_hints_use_discords_command_syntax(
    dc_ws: Workspace, discord: FakeDiscord, ada_dc: DiscordPerson
) -> None:
    await start_discord_bot(dc_ws, discord)
    await ada_dc.slash("help")
    help_text = (await ada_dc.wait_text("(?i)here's what I can do")).content
    assert "/key add provider:" in help_text, help_text
    assert "/persona text:" in help_text, help_text
    assert "<provider>" not in help_text.replace("provider:<provider>", ""), help_text

    await ada_dc.slash("start")
    await ada_dc.press("BYOK")
    # The press is acknowledged before it is handled: wait for the plan to be taken.
    await ada_dc.wait_text("(?i)which provider")
    await ada_dc.slash("key", "list")
    hint = (await ada_dc.wait_text("(?i)no keys")).content
    assert "/key add provider:" in hint, hint
