"""Scenario transcripts: account commands, admin gate, bad input everywhere."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot import texts
from bot.flows import account
from core.chat import Platform
from core.db.models import AuditRow, DataKeyRow, ProviderKeyRow, TenantRow
from core.errors import DecryptionError, TenantDeleted
from tests.canaries import anthropic_key
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


async def test_status_pause_resume(world: World) -> None:
    ada = world.person()
    await ada.command("/status")
    assert ada.last == texts.NEED_ACCOUNT
    await ada.command("/plan managed")
    await ada.command("/status")
    assert ada.last == texts.STATUS.format(
        plan="Managed",
        price="no price set",  # no payment provider configured: no price is promised
        status="active",
        paused="",
        model="claude-sonnet-4-5 (the plan's default)",
        keys="none",
    )
    await ada.command("/resume")
    assert ada.last == texts.NOT_PAUSED
    await ada.command("/pause")
    assert ada.last == texts.PAUSED
    await ada.command("/pause")
    assert ada.last == texts.ALREADY_PAUSED
    await ada.say("hello")
    assert ada.last == texts.PAUSED
    await ada.command("/resume")
    assert ada.last == texts.RESUMED


async def test_status_in_a_group_goes_to_dm(world: World) -> None:
    ada = world.person()
    await ada.command("/plan managed")
    await ada.command("/status", chat=ada.group())
    assert ada.sent[-2].chat == ada.dm
    assert ada.sent[-2].reply.text.startswith("Plan: Managed")
    assert ada.sent[-1].chat.id == "group-1"
    assert ada.last == texts.SENT_TO_DM
    # Discord and Slack answer privately in place (ephemeral) instead.
    bob = world.person(Platform.DISCORD, "7", "Bob")
    await bob.command("/plan managed")
    await bob.command("/status", chat=bob.group("chan"))
    assert bob.sent[-1].chat.id == "chan"
    assert bob.sent[-1].reply.sensitive is True


async def test_delete_with_confirmation_shreds_everything(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/key add anthropic")
    await ada.say(anthropic_key())
    tenant = await world.app.services.tenants.find(ada.user.identity)
    assert tenant is not None
    async with world.app.db.session() as s:
        stolen_ciphertext = await s.scalar(select(ProviderKeyRow.ciphertext))
        stolen_wrapped = await s.scalar(select(DataKeyRow.wrapped))
    assert stolen_ciphertext is not None and stolen_wrapped is not None

    await ada.command("/delete")
    assert ada.last == texts.DELETE_CONFIRM
    await ada.press(texts.DELETE_NO)
    assert ada.last == texts.DELETE_CANCELLED
    await ada.press(texts.DELETE_YES)  # the old button is stale now
    assert ada.last == texts.STALE_BUTTON

    await ada.command("/delete")
    await ada.press(texts.DELETE_YES)
    assert ada.last == texts.DELETED
    async with world.app.db.session() as s:
        assert await s.scalar(select(func.count()).select_from(DataKeyRow)) == 0
        assert await s.scalar(select(func.count()).select_from(ProviderKeyRow)) == 0
        row = await s.get(TenantRow, tenant.id)
        assert row is not None and row.status == "deleted"
    # Crypto-shredding: even a backup copy of the rows is unreadable without the data key.
    with pytest.raises(TenantDeleted):
        async with world.app.db.session() as s:
            await world.app.services.credentials.data_key(s, tenant.id)
    other_vault_copy = world.app.vault
    with pytest.raises(DecryptionError):
        other_vault_copy.unwrap("someone-else", stolen_wrapped)
    assert await world.app.services.tenants.find(ada.user.identity) is None
    await ada.command("/start")
    assert ada.last.startswith(texts.WELCOME)


async def test_buttons_belong_to_their_owner(world: World) -> None:
    ada = world.person()
    eve = world.person(uid="66", name="Eve")
    await ada.command("/start")
    payload = dict(ada.buttons())["BYOK"]
    outcome = await eve.press_payload(payload)
    assert outcome.refused
    assert eve.last == texts.NOT_YOUR_BUTTON
    assert await world.app.services.tenants.find(eve.user.identity) is None
    await ada.press_payload("garbage-without-tag")
    assert ada.last == texts.STALE_BUTTON


async def test_non_admin_cannot_use_admin(world: World) -> None:
    eve = world.person(uid="66", name="Eve")
    outcome = await eve.command("/admin stats")
    assert outcome.refused
    assert eve.last == texts.NOT_ADMIN
    async with world.app.db.session() as s:
        actions = (await s.scalars(select(AuditRow.action))).all()
    assert "admin.denied" in actions


async def test_admin_commands(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    op = world.person(uid="900", name="Op")  # telegram:900 is an admin in the test config
    await op.command("/admin stats")
    assert op.last == texts.ADMIN_STATS.format(
        total=1, by_status="trial 1", by_plan="byok 1", keys=0
    )
    await op.command("/admin tenants")
    assert "telegram:1" in op.last
    await op.command("/admin tenant telegram:1")
    assert op.last.startswith("Tenant ")
    await op.command("/admin tenant nobody:1")
    assert op.last == texts.ADMIN_NO_TENANT.format(ref="nobody:1")
    await op.command("/admin suspend")
    assert op.last == texts.ADMIN_USAGE.format(sub="suspend", args="<tenant> [reason]")

    await ada.say("hi")  # records a DM chat for notices
    await op.command("/admin suspend telegram:1 unpaid invoice")
    assert ada.last == texts.TENANT_SUSPENDED_NOTICE.format(reason=" (unpaid invoice)")
    await ada.say("hello?")
    assert ada.last == texts.AGENT_UNAVAILABLE["suspended"]
    await ada.command("/key add anthropic")
    assert ada.last == texts.SUSPENDED.format(reason=" (unpaid invoice)")
    await op.command("/admin resume telegram:1")
    assert ada.last == texts.TENANT_RESUMED_NOTICE

    await op.command("/admin setplan telegram:1 managed")
    tenant = await world.app.services.tenants.find("telegram:1")
    assert tenant is not None and tenant.plan == "managed"
    await op.command("/admin setplan telegram:1 platinum")
    assert op.last == texts.PLAN_UNKNOWN.format(plan="platinum", plans="byok, managed")

    await op.command("/admin broadcast Maintenance at 02:00 UTC")
    assert ada.last == texts.ADMIN_BROADCAST.format(text="Maintenance at 02:00 UTC")
    assert op.last == texts.ADMIN_BROADCAST_DONE.format(sent=1, total=1)
    await op.command("/admin audit telegram:1")
    assert "tenant.suspended" in op.last and "tenant.plan_changed" in op.last
    await op.command("/admin frobnicate")
    assert op.last == texts.ADMIN_UNKNOWN.format(sub="frobnicate")


async def test_bad_input_gets_clear_answers(world: World) -> None:
    ada = world.person()
    outcome = await ada.command("/frobnicate now")
    assert outcome.refused
    assert ada.last == texts.UNKNOWN_COMMAND.format(command="frobnicate")
    await ada.command("/plan managed")
    long = "x" * (world.config.core.max_message_chars + 1)
    await ada.say(long)
    assert ada.last == texts.TOO_LONG.format(
        length=len(long), limit=world.config.core.max_message_chars
    )
    await ada.say("   ")
    assert ada.last == texts.EMPTY_MESSAGE
    await ada.say("こんにちは 👋 — ünïcödé")
    assert ada.last == texts.AGENT_UNAVAILABLE["not_configured"]
    await ada.command("/persona " + "y" * 2001)
    assert ada.last == texts.PERSONA_TOO_LONG.format(limit=2000, length=2001)
    await ada.command("/persona Ты краткий помощник 🤖")
    assert ada.last == texts.PERSONA_SET
    await ada.command("/persona")
    assert "Ты краткий помощник 🤖" in ada.last


async def test_group_chatter_is_ignored(world: World) -> None:
    ada = world.person()
    outcome = await ada.say("just chatting", chat=ada.group(), addressed=False)
    assert outcome.handled is False
    assert ada.sent == []


async def test_rate_limit_answers_once(
    db_url: str, tmp_path: Path, master_key_env: dict[str, str]
) -> None:
    world = await World.create(db_url, tmp_path, master_key_env, messages_per_minute=3)
    try:
        ada = world.person()
        for _ in range(3):
            await ada.command("/help")
        assert (await ada.command("/help")).refused
        assert ada.last == texts.SLOW_DOWN
        await ada.command("/help")
        assert ada.transcript().count(texts.SLOW_DOWN) == 1
    finally:
        await world.close()


async def test_catch_all_answers_and_logs_redacted(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = anthropic_key()

    async def broken(turn: object) -> None:
        raise RuntimeError(f"upstream said: bad key {key}")

    from bot import router

    monkeypatch.setitem(router.COMMANDS, "help", broken)
    from core.logs import install_filter

    install_filter(caplog.handler)
    ada = world.person()
    with caplog.at_level(logging.DEBUG):
        outcome = await ada.command("/help")
    assert outcome.refused
    assert ada.last == texts.OOPS
    assert "turn failed" in caplog.text
    assert key not in caplog.text
    assert account.handle_help is not broken


async def test_link_one_account_across_platforms(world: World) -> None:
    ada = world.person()
    await ada.command("/plan byok")
    await ada.command("/key add anthropic")
    await ada.say(anthropic_key())
    await ada.command("/link")
    code = ada.last.splitlines()[1].removeprefix("/link ")
    assert ada.sent[-1].reply.sensitive is True
    ada_on_slack = world.person(Platform.SLACK, "U9", "Ada")
    await ada_on_slack.command(f"/link {code.lower()}")
    assert ada_on_slack.last == texts.LINKED
    await ada_on_slack.command("/key list")
    assert "anthropic" in ada_on_slack.last
    await ada_on_slack.command(f"/link {code}")  # single use
    assert ada_on_slack.last == texts.LINK_BAD_CODE
    eve = world.person(Platform.DISCORD, "5", "Eve")
    await eve.command("/plan managed")
    await ada.command("/link")
    fresh = ada.last.splitlines()[1].removeprefix("/link ")
    await eve.command(f"/link {fresh}")
    assert eve.last == texts.LINK_HAS_OWN
    bob = world.person(uid="77", name="Bob")
    await bob.command(f"/link {fresh}", chat=bob.group())
    assert bob.last == texts.LINK_PRIVATE_ONLY
    await eve.command("/link NOPE-NOPE")
    assert eve.last == texts.LINK_BAD_CODE
    tenant = await world.app.services.tenants.find("slack:U9")
    assert tenant is not None
    assert sorted(await world.app.services.tenants.identities(tenant.id)) == [
        "slack:U9",
        "telegram:1",
    ]
