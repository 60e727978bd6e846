"""Canary tokens and keys through every Slack path, with DEBUG logging on: they appear nowhere."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import MappingProxyType

import aiohttp
import pytest

from adapters.slack import SlackAdapter, build
from core.config import PlatformSettings
from core.logs import install_filter
from tests import canaries
from tests.fakes.slack_server import (
    PROXY_VARS,
    SIGNING_SECRET,
    FakeSlack,
    ScriptedBot,
    event_callback,
    form_body,
    message,
    payload_body,
    signed_headers,
    slash,
    view_submission,
)

LOUD = ("slack_bolt", "slack_sdk", "aiohttp", "asyncio", "adapters", "")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


class Canaries:
    def __init__(self) -> None:
        self.bot = canaries.slack_bot_token()
        self.app = canaries.slack_app_token()
        self.user = "xoxp-" + canaries.slack_bot_token().removeprefix("xoxb-")
        self.anthropic = canaries.anthropic_key()
        self.openai = canaries.openai_key()

    def all(self) -> dict[str, str]:
        return {
            "bot token": self.bot,
            "app token": self.app,
            "user token": self.user,
            "anthropic key": self.anthropic,
            "openai key": self.openai,
        }


@pytest.fixture
def secrets() -> Canaries:
    return Canaries()


@pytest.fixture
async def fake(secrets: Canaries) -> AsyncIterator[FakeSlack]:
    server = FakeSlack(valid_tokens={secrets.bot, secrets.app, secrets.user})
    await server.start()
    yield server
    await server.stop()


async def run_every_path(fake: FakeSlack, secrets: Canaries) -> None:
    """Start-up, commands, modal errors and success, a leak, a refused call, a failed handler."""
    env = {
        "SLACK_BOT_TOKEN": secrets.bot,
        "SLACK_APP_TOKEN": secrets.app,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_USER_TOKEN": secrets.user,
    }
    options = {"api_base_url": fake.base_url, "user_token_env": "SLACK_USER_TOKEN"}
    settings = PlatformSettings(name="slack", enabled=True, options=MappingProxyType(options))
    adapter = build(settings, env)
    assert isinstance(adapter, SlackAdapter)
    bot = ScriptedBot()
    bot.messenger = adapter
    await adapter.start(bot)
    try:
        await fake.envelope("slash_commands", slash("key add anthropic"))
        await adapter.drain()
        view = fake.calls_to("views.open")[0]["view"]
        await fake.envelope("interactive", view_submission(view, secrets.openai))
        await fake.envelope("interactive", view_submission(view, secrets.anthropic))
        await adapter.drain()
        fake.fail("chat.delete", "cant_delete_message", times=2)
        leak = message(f"oops {secrets.anthropic}", channel="C0GENERAL", channel_type="channel")
        await fake.envelope("events_api", event_callback(leak))
        await adapter.drain()
        fake.fail("chat.postMessage", "channel_not_found")  # the handler's reply fails: logged
        await fake.envelope("slash_commands", slash(f"start {secrets.openai}", channel="DUALICE"))
        await adapter.drain()
    finally:
        await adapter.stop()
    assert [e.kind.value for e in bot.events] == [
        "command",
        "secret",
        "secret",
        "message",
        "command",
    ]
    assert bot.deleted == [False]


async def test_nothing_secret_reaches_logs_or_messages(
    fake: FakeSlack, secrets: Canaries, caplog: pytest.LogCaptureFixture
) -> None:
    for name in LOUD:
        caplog.set_level(logging.DEBUG, logger=name or None)
    caplog.set_level(logging.INFO, logger="httpx")
    await run_every_path(fake, secrets)
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert "Slack event handling failed: SlackDeliveryError" in logged  # the failure is visible
    sent = fake.outgoing_text()
    for label, value in secrets.all().items():
        assert value not in logged, label
        assert value not in sent, label


async def test_with_sdk_payload_logging_forced_on_the_filter_redacts(
    fake: FakeSlack, secrets: Canaries, caplog: pytest.LogCaptureFixture
) -> None:
    # An operator who turns the SDK's own DEBUG on gets payload dumps; core.logs' filter
    # (on every handler, here caplog's) must still hide keys and the registered tokens.
    install_filter(caplog.handler)
    for name in (*LOUD, "adapters.slack.sdk"):
        caplog.set_level(logging.DEBUG, logger=name or None)
    await run_every_path(fake, secrets)
    assert "REDACTED" in caplog.text
    for label, value in secrets.all().items():
        assert value not in caplog.text, label


async def test_http_mode_keeps_the_signing_secret_and_keys_out_of_the_logs(
    fake: FakeSlack, secrets: Canaries, caplog: pytest.LogCaptureFixture
) -> None:
    for name in LOUD:
        caplog.set_level(logging.DEBUG, logger=name or None)
    caplog.set_level(logging.INFO, logger="httpx")
    signing = canaries.slack_bot_token().removeprefix("xoxb-")
    env = {"SLACK_BOT_TOKEN": secrets.bot, "SLACK_SIGNING_SECRET": signing}
    options = {"api_base_url": fake.base_url, "mode": "http", "listen_port": 0}
    settings = PlatformSettings(name="slack", enabled=True, options=MappingProxyType(options))
    adapter = build(settings, env)
    assert isinstance(adapter, SlackAdapter)
    bot = ScriptedBot()
    bot.messenger = adapter
    await adapter.start(bot)
    url = f"http://127.0.0.1:{adapter.http_port}/slack/events"

    async def post(body: str, content_type: str, secret: str = signing) -> int:
        headers = signed_headers(secret, body, content_type=content_type)
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.post(url, data=body.encode(), headers=headers) as response,
        ):
            return response.status

    form = "application/x-www-form-urlencoded"
    try:
        assert await post(form_body(slash("key add anthropic")), form) == 200
        await adapter.drain()
        view = fake.calls_to("views.open")[0]["view"]
        assert await post(payload_body(view_submission(view, secrets.anthropic)), form) == 200
        assert (
            await post(payload_body(view_submission(view, secrets.openai)), form, "x" * 32) == 401
        )
        await adapter.drain()
    finally:
        await adapter.stop()
    assert bot.fingerprint == f"sk-ant-…{secrets.anthropic[-6:-2]}"
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for label, value in {**secrets.all(), "signing secret": signing}.items():
        assert value not in logged, label
        assert value not in fake.outgoing_text(), label
