"""Discord interactions the bot acknowledges too late, through ``byokbot run``.

Discord forgets an interaction that is not acknowledged within 3 s, and so does the strict
fake. Here its window is shortened below the suite's ``defer_after`` (1.0 s) and the
provider's key check slowed, so the bot's deferral comes too late and is refused: every
answer must still reach the person, privately in their DM, with no follow-up that Discord
would refuse as well.
"""

from __future__ import annotations

from tests.canaries import anthropic_key
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.llm_server import FakeLLMServer
from tests.system.discord_fixtures import (
    SERVER_CHANNEL,
    another_person,
    dc_ws,
    discord,
    start_discord_bot,
)
from tests.system.harness import CanaryScan, Workspace

__all__ = ["dc_ws", "discord"]  # fixtures, imported for pytest


async def test_answers_to_a_forgotten_interaction_reach_the_dm(
    dc_ws: Workspace, discord: FakeDiscord, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    ada, bob = another_person(discord, "ada"), another_person(discord, "bob")
    good, bad = anthropic_key(), anthropic_key()
    canaries.add(good, bad)
    llm.valid_keys = {good}
    await start_discord_bot(dc_ws, discord)
    for person in (ada, bob):
        await person.slash("start", channel=SERVER_CHANNEL)
        await person.press("BYOK", channel=SERVER_CHANNEL)
        await person.press("Anthropic", channel=SERVER_CHANNEL)
        await person.wait_modal()

    # The key check now takes 1.5 s; Discord forgets an interaction after 0.6 s.
    llm.models_delay = 1.5
    discord.interaction_window = 0.6
    since = len(discord.calls)
    await ada.submit_modal(good)
    await bob.submit_modal(bad)

    saved = await ada.wait_text(r"Key saved: sk-ant-…", within=20)
    refused = await bob.wait_text(r"Anthropic refused that key", within=20)
    assert not saved.ephemeral and not refused.ephemeral  # DM messages, not interaction answers
    assert refused.buttons(), "the refusal offers the form again"
    late = discord.calls[since:]
    # Each person's one deferral was refused as Discord would; nothing else was.
    assert sorted((c.path.split("/")[1], c.status) for c in late if c.status >= 400) == [
        ("interactions", 404),
        ("interactions", 404),
    ]
    assert [c for c in late if c.path.startswith("/webhooks/")] == []
    assert all(good not in t and bad not in t for t in (*ada.texts(), *bob.texts()))
