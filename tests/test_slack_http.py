"""Scenarios in HTTP mode: signed requests to the adapter's listener, the real bolt app behind."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest

from adapters.slack import SlackAdapter
from adapters.slack.config import parse
from core.chat import EventKind
from core.config import PlatformSettings
from tests.fakes.slack_server import (
    BOT_TOKEN,
    BOT_USER,
    PROXY_VARS,
    SIGNING_SECRET,
    FakeSlack,
    ManualSleep,
    ScriptedBot,
    anthropic_key,
    block_action,
    event_callback,
    form_body,
    home_opened,
    message,
    payload_body,
    signed_headers,
    slack_env,
    slash,
    view_submission,
)

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    server = FakeSlack(valid_tokens={BOT_TOKEN})
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def bot() -> ScriptedBot:
    return ScriptedBot()


@pytest.fixture
async def adapter(fake: FakeSlack, bot: ScriptedBot) -> AsyncIterator[SlackAdapter]:
    settings = PlatformSettings(
        name="slack",
        enabled=True,
        options=MappingProxyType(
            {"api_base_url": fake.base_url, "mode": "http", "listen_port": 0, "path": "/slack"}
        ),
    )
    slack = SlackAdapter(parse(settings, slack_env()), monotonic=bot.now, sleep=ManualSleep())
    bot.messenger = slack
    await slack.start(bot)
    yield slack
    await slack.stop()


class Poster:
    """Posts to the adapter's listener like Slack does: signed, form or JSON."""

    def __init__(self, adapter: SlackAdapter) -> None:
        self.url = f"http://127.0.0.1:{adapter.http_port}/slack"

    async def post(
        self,
        body: str,
        content_type: str,
        *,
        secret: str = SIGNING_SECRET,
        timestamp: int | None = None,
        extra: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        headers = signed_headers(secret, body, timestamp=timestamp, content_type=content_type)
        headers.update(extra or {})
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.post(self.url, data=body.encode(), headers=headers) as response,
        ):
            return response.status, await response.text()

    async def command(self, fields: dict[str, str], **kw: Any) -> tuple[int, str]:
        return await self.post(form_body(fields), FORM, **kw)

    async def interactive(self, payload: dict[str, Any], **kw: Any) -> tuple[int, str]:
        return await self.post(payload_body(payload), FORM, **kw)

    async def event(self, body: dict[str, Any], **kw: Any) -> tuple[int, str]:
        return await self.post(json.dumps(body), JSON, **kw)


@pytest.fixture
def slack_http(adapter: SlackAdapter) -> Poster:
    return Poster(adapter)


async def test_http_mode_starts_without_a_socket(fake: FakeSlack, adapter: SlackAdapter) -> None:
    assert fake.methods() == ["auth.test"]
    assert adapter.http_port


async def test_url_verification_is_answered(slack_http: Poster) -> None:
    status, text = await slack_http.event(
        {
            "token": "x",
            "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            "type": "url_verification",
        }
    )
    assert status == 200
    assert json.loads(text) == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}


async def test_slash_command_onboarding_over_http(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter, slack_http: Poster
) -> None:
    status, text = await slack_http.command(slash("start", channel="DUALICE"))
    await adapter.drain()
    assert (status, text) == (200, "")
    assert [(e.kind, e.command) for e in bot.events] == [(EventKind.COMMAND, "start")]
    post = fake.calls_to("chat.postMessage")[0]
    assert [b["value"] for b in post["blocks"][1]["elements"]] == ["plan:byok", "plan:managed"]
    status, _ = await slack_http.interactive(block_action("plan:managed"))
    await adapter.drain()
    assert status == 200
    assert (bot.events[-1].kind, bot.events[-1].payload) == (EventKind.BUTTON, "plan:managed")


async def test_a_bad_signature_is_refused_with_401(
    bot: ScriptedBot, adapter: SlackAdapter, slack_http: Poster
) -> None:
    status, _ = await slack_http.command(slash("start"), secret="not-the-signing-secret")
    await adapter.drain()
    assert status == 401
    assert bot.events == []


async def test_a_skewed_timestamp_is_refused_with_401(
    bot: ScriptedBot, adapter: SlackAdapter, slack_http: Poster
) -> None:
    status, _ = await slack_http.command(slash("start"), timestamp=int(time.time()) - 6 * 60)
    await adapter.drain()
    assert status == 401
    assert bot.events == []


async def test_a_retried_event_is_processed_once(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter, slack_http: Poster
) -> None:
    body = event_callback(message("hello"), event_id="Ev0RETRY")
    first = await slack_http.event(body)
    retry = await slack_http.event(
        body, extra={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    )
    await adapter.drain()
    assert (first[0], retry[0]) == (200, 200)
    assert [e.text for e in bot.events] == ["hello"]
    assert len(fake.calls_to("chat.postMessage")) == 1


async def test_key_modal_errors_travel_in_the_http_response(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter, slack_http: Poster
) -> None:
    await slack_http.command(slash("key add anthropic"))
    await adapter.drain()
    view = fake.calls_to("views.open")[0]["view"]
    status, text = await slack_http.interactive(view_submission(view, "sk-wrong"))
    assert status == 200
    assert json.loads(text) == {
        "response_action": "errors",
        "errors": {"byok_secret_block": "That is not an Anthropic key (sk-ant-…)."},
    }
    canary = anthropic_key("H")
    status, text = await slack_http.interactive(view_submission(view, canary))
    await adapter.drain()
    assert (status, text) == (200, "")
    assert fake.calls_to("chat.postMessage")[-1]["text"] == "Key saved: sk-ant-…HHHH"
    assert canary not in fake.outgoing_text()


async def test_a_mention_streams_into_a_thread_over_http(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter, slack_http: Poster
) -> None:
    ts = "1700000300.000300"
    mention = message(f"<@{BOT_USER}> hi", channel="C0GENERAL", ts=ts, kind="app_mention")
    await slack_http.event(event_callback(mention))
    await adapter.drain()
    assert [c["thread_ts"] for c in fake.calls_to("chat.postMessage")] == [ts]
    assert [u["text"] for u in fake.calls_to("chat.update")] == ["Hello", "Hello there, friend."]


async def test_home_tab_and_leak_guard_over_http(
    fake: FakeSlack, bot: ScriptedBot, adapter: SlackAdapter, slack_http: Poster
) -> None:
    await slack_http.event(event_callback(home_opened()))
    await adapter.drain()
    [published] = fake.calls_to("views.publish")
    assert published["view"]["blocks"][0]["text"]["text"] == "Plan: none\nKey: none"
    canary = anthropic_key("K")
    leak = message(f"key: {canary}", channel="C0GENERAL", channel_type="channel")
    status, _ = await slack_http.event(event_callback(leak))
    await adapter.drain()
    assert status == 200
    assert [c["ts"] for c in fake.calls_to("chat.delete")] == ["1700000100.000100"]
    [warning] = fake.calls_to("chat.postEphemeral")
    assert warning["text"] == "That was an API key: I deleted it. Rotate it now."
    assert canary not in fake.outgoing_text()
