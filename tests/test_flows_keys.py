"""Scenario transcripts: onboarding, the key exchange, rotation, removal, leaks, restarts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot import texts
from core.chat import OPEN_DM_PAYLOAD, Platform
from core.db.models import IntakeSessionRow, ProviderKeyRow
from core.keys import fingerprint
from core.ports import ManualClock
from core.secret import Secret
from tests.canaries import anthropic_key, openai_key
from tests.conftest import make_config
from tests.harness import World


@pytest.fixture
async def world(
    db_url: str, tmp_path: Path, master_key_env: dict[str, str]
) -> AsyncIterator[World]:
    # The metering proxy is switched on (not started), so the managed plan is offered.
    config = make_config(db_url, tmp_path, proxy={"enabled": True})
    w = await World.create(db_url, tmp_path, master_key_env, config=config)
    yield w
    await w.close()


async def _stored_keys(world: World) -> int:
    async with world.app.db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(ProviderKeyRow)) or 0)


async def test_onboarding_to_byok_with_a_key(world: World) -> None:
    ada = world.person()
    await ada.command("/start")
    assert ada.last.startswith(texts.WELCOME)
    assert [label for label, _ in ada.buttons()] == ["BYOK", "Managed"]

    await ada.press("BYOK")
    assert ada.transcript()[-2:] == [
        texts.SIGNED_UP.format(plan="BYOK"),
        texts.BYOK_NEEDS_KEY.format(plan="BYOK"),
    ]
    await ada.press("Anthropic")
    _event, request = ada.messenger.secret_requests[-1]
    assert request.provider == "anthropic"
    assert "10 minutes" in request.prompt

    key = anthropic_key()
    # Telegram: the key arrives as the person's DM reply; it must be deleted at once.
    outcome = await ada.say(key)
    assert outcome.refused is False
    assert len(ada.messenger.deleted) == 1
    fp = fingerprint(Secret(key))
    assert ada.last == (
        texts.KEY_MESSAGE_DELETED
        + "\n"
        + texts.KEY_STORED.format(fingerprint=fp, provider="Anthropic")
    )
    assert key not in ada.messenger.all_text()
    tenant = await world.app.services.tenants.find(ada.user.identity)
    assert tenant is not None and tenant.status.value == "active"
    revealed = await world.app.services.credentials.reveal(tenant.id, "anthropic")
    assert revealed is not None and revealed[1].reveal() == key

    # The next plain message goes to the agent port: no runtime configured -> a clear answer.
    await ada.say("hello agent")
    assert ada.last == texts.AGENT_UNAVAILABLE["not_configured"]


async def test_modal_submission_and_in_form_errors(world: World) -> None:
    bob = world.person(Platform.SLACK, "U1", "Bob")
    await bob.command("/start")
    await bob.press("BYOK")
    await bob.command("/key add openai", chat=bob.group("C1"))
    event, _request = bob.messenger.secret_requests[-1]
    assert event.chat.id == "C1"  # modal opened from the channel: private by itself
    assert texts.KEY_MOVED_TO_DM not in bob.transcript()

    before = len(bob.sent)
    bad = await bob.submit_secret("not-a-key", via_modal=True)
    assert bad.refused and bad.secret_error is not None
    assert bad.secret_error.startswith("That doesn't look like a valid OpenAI key")
    assert len(bob.sent) == before  # the error is shown in the modal, not as a message

    key = openai_key()
    ok = await bob.submit_secret(key, via_modal=True)
    assert ok.secret_error is None
    assert bob.last == texts.KEY_STORED.format(
        fingerprint=fingerprint(Secret(key)), provider="OpenAI"
    )
    assert bob.sent[-1].reply.sensitive is True
    again = await bob.submit_secret(openai_key(), via_modal=True)
    assert again.secret_error == texts.INTAKE_USED


async def test_switching_plans_keeps_keys(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/key add anthropic")
    await ada.say(anthropic_key())
    await ada.command("/plan managed")
    assert ada.last == texts.MANAGED_READY
    assert texts.PLAN_CHANGED.format(plan="Managed") in ada.transcript()
    await ada.command("/plan managed")
    assert ada.last == texts.PLAN_SAME.format(plan="Managed")
    await ada.command("/plan byok")
    assert ada.last == texts.ALL_SET  # the key was kept: no new key needed
    assert await _stored_keys(world) == 1
    await ada.command("/plan gold")
    assert ada.last == texts.PLAN_UNKNOWN.format(plan="gold", plans="byok, managed")


async def test_rotate_and_remove_keys(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/key add anthropic")
    first = anthropic_key()
    await ada.say(first)
    await ada.command("/key rotate anthropic")
    second = anthropic_key()
    await ada.say(second)
    assert ada.last.endswith(
        texts.KEY_ROTATED.format(fingerprint=fingerprint(Secret(second)), provider="Anthropic")
    )
    tenant = await world.app.services.tenants.find(ada.user.identity)
    assert tenant is not None
    revealed = await world.app.services.credentials.reveal(tenant.id, "anthropic")
    assert revealed is not None and revealed[1].reveal() == second
    assert await _stored_keys(world) == 1

    await ada.command("/key rotate anthropic")
    await ada.say(second)
    assert ada.last.endswith(texts.KEY_SAME_AS_BEFORE)

    await ada.command("/key list")
    assert fingerprint(Secret(second)) in ada.last
    await ada.command("/key remove anthropic")
    assert ada.last == texts.KEY_REMOVED.format(
        provider="Anthropic", fingerprint=fingerprint(Secret(second))
    )
    assert await _stored_keys(world) == 0
    await ada.command("/key remove anthropic")
    assert ada.last == texts.KEY_NONE_FOR.format(provider="Anthropic")
    await ada.command("/key list")
    assert ada.last == texts.KEY_LIST_EMPTY


async def test_key_pasted_in_a_group_is_deleted_and_never_stored(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    key = anthropic_key()
    group = ada.group()
    outcome = await ada.say(f"here is my key {key} can someone check", chat=group, addressed=False)
    assert outcome.refused
    assert ada.messenger.deleted[-1][0] == group.id
    assert ada.last == texts.LEAK_WARNING.format(deleted=texts.LEAK_DELETED)
    assert await _stored_keys(world) == 0
    assert key not in ada.messenger.all_text()

    # Where deletion is refused, the person is told to delete it themselves.
    ada.messenger.can_delete = False
    await ada.say(key, chat=group)
    assert ada.last == texts.LEAK_WARNING.format(deleted=texts.LEAK_NOT_DELETED)
    # A key inside a command is caught too (and never reaches the command's flow).
    await ada.command(f"/persona {key}")
    assert ada.last == texts.LEAK_WARNING.format(deleted=texts.LEAK_NOT_DELETED)
    tenant = await world.app.services.tenants.find(ada.user.identity)
    assert tenant is not None and tenant.persona == ""


async def test_key_in_a_normal_dm_message_is_not_forwarded(world: World) -> None:
    ada = world.person()
    await ada.command("/plan managed")
    key = openai_key()
    await ada.say(f"my key is `{key}`")
    assert ada.last == texts.LEAK_WARNING.format(deleted=texts.LEAK_DELETED)
    assert texts.AGENT_UNAVAILABLE["not_configured"] not in ada.transcript()


async def test_intake_requested_in_a_group_moves_to_dm(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/key add anthropic", chat=ada.group())
    assert ada.last == texts.KEY_MOVED_TO_DM
    assert ada.sent[-1].chat.id == "group-1"
    assert len(ada.messenger.secret_requests) == 1

    # Someone who never opened a DM with the bot gets a button to do so instead.
    eve = world.person(uid="2", name="Eve")
    await eve.command("/plan byok")
    eve.messenger.can_dm = False
    before = len(eve.messenger.secret_requests)
    await eve.command("/key add anthropic", chat=eve.group())
    assert eve.last == texts.KEY_DM_NEEDED.format(provider="anthropic")
    assert [p for _, p in eve.buttons()] == [f"{OPEN_DM_PAYLOAD}:key"]
    assert len(eve.messenger.secret_requests) == before
    async with world.app.db.session() as s:
        open_rows = await s.scalar(
            select(func.count())
            .select_from(IntakeSessionRow)
            .where(
                IntakeSessionRow.identity == eve.user.identity, IntakeSessionRow.status == "open"
            )
        )
    assert open_rows == 0


async def test_restart_in_the_middle_of_adding_a_key(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/key add anthropic")
    await world.restart()
    ada = world.person()
    key = anthropic_key()
    await ada.say(key)  # the reply still completes the exchange after the restart
    assert ada.last.endswith(
        texts.KEY_STORED.format(fingerprint=fingerprint(Secret(key)), provider="Anthropic")
    )

    # And a new intake can be started after a restart; it replaces the open one.
    await ada.command("/key rotate anthropic")
    old_token = ada.last_secret_token()
    await world.restart()
    ada = world.person()
    await ada.command("/key rotate anthropic")
    assert ada.last_secret_token() != old_token
    refused = await ada.submit_secret(anthropic_key(), token=old_token)
    assert refused.refused and ada.last == texts.INTAKE_EXPIRED_GENERIC
    newest = anthropic_key()
    await ada.say(newest)
    assert ada.last.endswith(
        texts.KEY_ROTATED.format(fingerprint=fingerprint(Secret(newest)), provider="Anthropic")
    )


async def test_malformed_key_attempts_then_lock(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/key add anthropic")
    await ada.say("sk-ant-short")
    assert "That doesn't look like a valid Anthropic key" in ada.last
    assert texts.ATTEMPTS_LEFT.format(n=2) in ada.last
    # Not a reply to the prompt and nothing like a key: the agent gets it, with a note.
    await ada.say("hello")
    assert ada.last == texts.AGENT_UNAVAILABLE["not_configured"]
    assert ada.transcript()[-2] == texts.KEY_STILL_OPEN_REPLY.format(provider="Anthropic")
    assert len(ada.messenger.deleted) == 1
    # A reply to the prompt is the key, whatever it looks like.
    await ada.reply_to_prompt("hello")
    assert texts.ATTEMPTS_LEFT.format(n=1) in ada.last
    await ada.say(openai_key())
    assert texts.ATTEMPTS_NONE.format(provider="anthropic") in ada.last
    assert await _stored_keys(world) == 0
    # After the lock, ordinary messages go to the agent again.
    await ada.say("hello")
    assert ada.last == texts.AGENT_UNAVAILABLE["not_configured"]


async def test_expired_intake(db_url: str, tmp_path: Path, master_key_env: dict[str, str]) -> None:
    clock = ManualClock()
    world = await World.create(db_url, tmp_path, master_key_env, clock=clock)
    try:
        ada = world.person()
        await ada.command("/plan byok")
        await ada.command("/key add anthropic")
        token = ada.last_secret_token()
        clock.advance(601)
        key = anthropic_key()
        outcome = await ada.submit_secret(key, token=token)
        assert outcome.refused
        assert ada.last == texts.INTAKE_EXPIRED_GENERIC
        assert await _stored_keys(world) == 0
        # The persisted "awaiting a key" state expired with it: a DM is an agent message again.
        await ada.say("hi")
        assert ada.last == texts.AGENT_UNAVAILABLE["not_configured"]
    finally:
        await world.close()


async def test_unknown_provider_and_missing_arguments(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/key add acme")
    assert ada.last == texts.KEY_UNKNOWN_PROVIDER.format(
        provider="acme", providers="anthropic, openai, moonshot"
    )
    await ada.command("/key")
    assert ada.last == texts.KEY_USAGE.format(providers="anthropic, openai, moonshot")
    await ada.command("/key remove")
    assert ada.last == texts.KEY_USAGE.format(providers="anthropic, openai, moonshot")
    await ada.command("/key add")
    assert ada.last == texts.KEY_WHICH_PROVIDER
    assert await _stored_keys(world) == 0


async def test_secret_for_someone_else_is_refused(world: World) -> None:
    ada = world.person()
    bob = world.person(uid="2", name="Bob")
    await ada.command("/plan byok")
    await bob.command("/plan byok")
    await ada.command("/key add anthropic")
    token = ada.last_secret_token()
    outcome = await bob.submit_secret(anthropic_key(), token=token)
    assert outcome.refused
    assert bob.last == texts.INTAKE_NOT_YOURS
    assert await _stored_keys(world) == 0


# ----- a key request does not capture the next messages (issue 10, defect 3) ---------------


async def test_a_question_while_a_key_is_awaited_goes_to_the_agent(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/key add anthropic")
    assert ada.last == texts.KEY_CANCEL_HINT
    assert [label for label, _ in ada.buttons()] == [texts.CANCEL_BUTTON]

    await ada.say("never mind, what is the capital of France?")
    assert ada.messenger.deleted == []
    assert ada.transcript()[-2:] == [
        texts.KEY_STILL_OPEN_REPLY.format(provider="Anthropic"),
        texts.AGENT_UNAVAILABLE["not_configured"],
    ]
    # The note is said once; a reply to some other message of the bot is no answer either.
    await ada.say("and Germany?", reply_to="not-the-prompt")
    assert ada.transcript()[-2:] == [
        texts.AGENT_UNAVAILABLE["not_configured"],
        texts.AGENT_UNAVAILABLE["not_configured"],
    ]
    assert await _stored_keys(world) == 0

    key = anthropic_key()
    await ada.reply_to_prompt(key)
    assert len(ada.messenger.deleted) == 1
    assert ada.last.endswith(
        texts.KEY_STORED.format(fingerprint=fingerprint(Secret(key)), provider="Anthropic")
    )


async def test_a_key_shaped_message_while_a_key_is_awaited_is_the_key(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/key add anthropic")
    # Cut short, it still starts like a key: taken (and deleted), refused for its shape.
    await ada.say("sk-ant-api03-tooshort")
    assert len(ada.messenger.deleted) == 1
    assert "That doesn't look like a valid Anthropic key" in ada.last
    key = anthropic_key()
    await ada.say(f"`{key}`")
    assert len(ada.messenger.deleted) == 2
    assert ada.last.endswith(
        texts.KEY_STORED.format(fingerprint=fingerprint(Secret(key)), provider="Anthropic")
    )


@pytest.mark.parametrize("platform", [Platform.SLACK, Platform.DISCORD])
async def test_on_modal_platforms_a_dm_is_never_the_key(world: World, platform: Platform) -> None:
    bob = world.person(platform, "U1", "Bob")
    await bob.command("/plan byok")
    await bob.command("/key add openai")
    assert len(bob.messenger.secret_requests) == 1

    # A key-shaped DM: the leak guard's case, never stored, deletion attempted, rotate.
    bob.messenger.can_delete = False  # neither platform lets a bot delete a person's DM
    leaked = openai_key()
    outcome = await bob.say(leaked)
    assert outcome.refused
    assert bob.last == texts.LEAK_WARNING.format(deleted=texts.LEAK_NOT_DELETED)
    assert await _stored_keys(world) == 0
    # So is a cut-short paste that only looks like the awaited key: it never reaches the agent.
    outcome = await bob.say("sk-proj-cut")
    assert outcome.refused
    assert bob.last == texts.LEAK_WARNING.format(deleted=texts.LEAK_NOT_DELETED)
    # Any other DM goes to the agent as usual, with no note: the form is where the key goes.
    await bob.say("what is the capital of France?")
    assert bob.last == texts.AGENT_UNAVAILABLE["not_configured"]
    assert texts.KEY_STILL_OPEN.format(provider="OpenAI") not in bob.transcript()

    # The form still works, and its refusals never say "send it again".
    bad = await bob.submit_secret("nope", via_modal=True)
    assert bad.secret_error is not None
    assert bad.secret_error.endswith(texts.ATTEMPTS_LEFT_FORM.format(n=2))
    assert bad.secret_retry is True  # the adapter may offer the form again, same token
    key = openai_key()
    ok = await bob.submit_secret(key, via_modal=True)
    assert ok.secret_error is None
    assert bob.last == texts.KEY_STORED.format(
        fingerprint=fingerprint(Secret(key)), provider="OpenAI"
    )


async def test_closing_the_form_ends_the_intake(world: World) -> None:
    bob = world.person(Platform.SLACK, "U1", "Bob")
    await bob.command("/plan byok")
    await bob.command("/key add openai")
    token = bob.last_secret_token()
    await bob.close_form()
    assert bob.last == texts.KEY_REQUEST_CANCELLED
    assert bob.sent[-1].reply.sensitive is True
    late = await bob.submit_secret(openai_key(), token=token, via_modal=True)
    assert late.secret_error == texts.INTAKE_EXPIRED_GENERIC
    assert late.secret_retry is False
    # Closing a form whose request already ended says nothing more.
    before = len(bob.sent)
    outcome = await bob.close_form(token=token)
    assert outcome.refused is False and len(bob.sent) == before
    await bob.command("/cancel")
    assert bob.last == texts.NOTHING_TO_CANCEL


async def test_closing_an_older_form_leaves_the_newer_request_open(world: World) -> None:
    bob = world.person(Platform.SLACK, "U1", "Bob")
    await bob.command("/plan byok")
    await bob.command("/key add openai")
    old = bob.last_secret_token()
    await bob.command("/key add openai")
    before = len(bob.sent)
    await bob.close_form(token=old)
    assert len(bob.sent) == before
    key = openai_key()
    ok = await bob.submit_secret(key, via_modal=True)
    assert ok.secret_error is None and await _stored_keys(world) == 1


async def test_console_a_visible_line_is_the_key_only_when_key_shaped(world: World) -> None:
    me = world.person(Platform.CONSOLE, "local", "Me")
    await me.command("/plan byok")
    await me.command("/key add anthropic")
    assert texts.KEY_CANCEL_HINT not in me.transcript()  # hidden input: no prompt message
    await me.say("what was I doing?")
    assert me.transcript()[-2:] == [
        texts.KEY_STILL_OPEN.format(provider="Anthropic"),
        texts.AGENT_UNAVAILABLE["not_configured"],
    ]
    key = anthropic_key()
    await me.say(key)
    assert me.last.endswith(
        texts.KEY_STORED.format(fingerprint=fingerprint(Secret(key)), provider="Anthropic")
    )


async def test_a_refused_secret_says_whether_another_try_is_open(world: World) -> None:
    me = world.person(Platform.CONSOLE, "local", "Me")
    await me.command("/plan byok")
    await me.command("/key add anthropic")
    outcomes = [await me.submit_secret("wrong") for _ in range(3)]
    assert [o.secret_retry for o in outcomes] == [True, True, False]
    assert me.last.endswith(texts.ATTEMPTS_NONE.format(provider="anthropic"))
