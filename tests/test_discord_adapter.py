"""Scenario tests: the real discord.py client against the loopback fake Discord."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route

from tests.fakes.discord_harness import running
from tests.fakes.discord_server import APP_ID, FakeDiscord

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    # The adapter points discord.py's class-level endpoints at the fake; restore them after.
    monkeypatch.setattr(Route, "BASE", Route.BASE)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)
    async with FakeDiscord() as server:
        yield server


async def test_login_ready_and_first_command_sync(fake: FakeDiscord) -> None:
    async with running(fake) as (adapter, _):
        assert adapter.client.is_ready()
        assert adapter.client.user is not None
        assert str(adapter.client.user.id) == "900000000000000002"
    paths = [(c.method, c.path) for c in fake.calls]
    assert paths[:4] == [
        ("GET", "/users/@me"),
        ("GET", "/oauth2/applications/@me"),
        ("GET", f"/applications/{APP_ID}/commands"),
        ("PUT", f"/applications/{APP_ID}/commands"),
    ]
    identify = [f for f in fake.gateway_frames if f["op"] == 2]
    assert len(identify) == 1
    # guilds | guild_messages | dm_messages | message_content
    assert identify[0]["d"]["intents"] == (1 << 0) | (1 << 9) | (1 << 12) | (1 << 15)
    names = sorted(c["name"] for c in fake.commands["global"])
    assert names == sorted(
        [
            "admin",
            "delete",
            "help",
            "key",
            "link",
            "model",
            "pause",
            "persona",
            "plan",
            "reset",
            "resume",
            "start",
            "status",
            "stop",
            "usage",
        ]
    )
