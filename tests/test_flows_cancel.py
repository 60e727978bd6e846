"""Scenario transcripts of /cancel and the Cancel button: every pending flow ends, and says so."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import texts
from core.chat import Platform
from core.keys import fingerprint
from core.secret import Secret
from tests.canaries import anthropic_key, openai_key
from tests.harness import World


@pytest.fixture
async def world(
    db_url: str, tmp_path: Path, master_key_env: dict[str, str]
) -> AsyncIterator[World]:
    w = await World.create(db_url, tmp_path, master_key_env)
    yield w
    await w.close()


async def test_cancel_with_nothing_pending_says_so(world: World) -> None:
    ada = world.person()
    outcome = await ada.command("/cancel")
    assert ada.last == texts.NOTHING_TO_CANCEL and outcome.refused is False
    await ada.command("/plan byok")
    await ada.command("/cancel")
    assert ada.last == texts.NOTHING_TO_CANCEL


async def test_cancel_ends_a_key_request(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/key add anthropic")
    await ada.command("/cancel")
    assert ada.last == texts.KEY_REQUEST_CANCELLED
    # A reply to the old prompt is an ordinary message now.
    await ada.reply_to_prompt("hello")
    assert ada.last == texts.AGENT_UNAVAILABLE["not_configured"]
    assert ada.messenger.deleted == []
    # A key sent to the old prompt is no longer awaited: the leak guard takes it.
    await ada.reply_to_prompt(anthropic_key())
    assert ada.last == texts.LEAK_WARNING.format(deleted=texts.LEAK_DELETED)
    await ada.command("/cancel")
    assert ada.last == texts.NOTHING_TO_CANCEL


async def test_the_cancel_button_under_a_key_prompt(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/key add anthropic")
    first_cancel = dict(ada.buttons())[texts.CANCEL_BUTTON]
    await ada.press(texts.CANCEL_BUTTON)
    assert ada.last == texts.KEY_REQUEST_CANCELLED
    await ada.press_payload(first_cancel)
    assert ada.last == texts.NOTHING_TO_CANCEL

    # The button of an older request does not end a newer one.
    await ada.command("/key add anthropic")
    await ada.press_payload(first_cancel)
    assert ada.last == texts.STALE_BUTTON
    key = anthropic_key()
    await ada.reply_to_prompt(key)
    assert ada.last.endswith(
        texts.KEY_STORED.format(fingerprint=fingerprint(Secret(key)), provider="Anthropic")
    )


async def test_cancel_ends_the_delete_confirmation(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/delete")
    yes = dict(ada.buttons())[texts.DELETE_YES]
    await ada.command("/cancel")
    assert ada.last == texts.DELETE_CANCELLED
    await ada.press_payload(yes)
    assert ada.last == texts.STALE_BUTTON
    assert await world.app.services.tenants.find(ada.user.identity) is not None


async def test_cancel_voids_a_link_code(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/link")
    code = ada.last.split("/link ")[1].split()[0]
    await ada.command("/cancel")
    assert ada.last == texts.LINK_CODE_CANCELLED
    bob = world.person(Platform.SLACK, "U9", "Bob")
    await bob.command(f"/link {code}")
    assert bob.last == texts.LINK_BAD_CODE


async def test_cancel_ends_a_modal_request_on_slack(world: World) -> None:
    bob = world.person(Platform.SLACK, "U1", "Bob")
    await bob.command("/plan byok")
    await bob.command("/key add openai")
    await bob.command("/cancel")
    assert bob.last == texts.KEY_REQUEST_CANCELLED
    late = await bob.submit_secret(openai_key(), via_modal=True)
    assert late.secret_error == texts.INTAKE_EXPIRED_GENERIC


async def test_a_key_request_survives_a_restart_and_can_be_cancelled_after(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/key add anthropic")
    prompt = ada.messenger.prompts[-1].id
    await world.restart()
    ada = world.person()
    await ada.say("still there?")
    assert ada.transcript()[-2] == texts.KEY_STILL_OPEN_REPLY.format(provider="Anthropic")
    await ada.say("sk-nope-not-really", reply_to="elsewhere")
    assert "That doesn't look like a valid Anthropic key" in ada.last  # key-shaped: taken
    await ada.command("/cancel")
    assert ada.last == texts.KEY_REQUEST_CANCELLED
    await ada.say("the reply to the old prompt", reply_to=prompt)
    assert ada.last == texts.AGENT_UNAVAILABLE["not_configured"]
