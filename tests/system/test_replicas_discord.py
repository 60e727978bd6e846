"""Two ``byokbot run`` replicas on Discord, one gateway shard each, on one PostgreSQL (issue 16).

``[discord] shard_ids`` / ``shard_count`` split the gateway between replicas as Discord
requires of a bot in many servers: a server's events go to shard ``(guild_id >> 22) %
shard_count``, DMs to shard 0. The fake gateway routes them so; the test's server lands on
shard 1. Needs ``BYOKBOT_TEST_PG_URL`` (``.ci/run`` starts a throwaway PostgreSQL).
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

from tests.canaries import anthropic_key
from tests.fakes.discord_server import GUILD_CHANNEL_ID, GUILD_ID, FakeDiscord
from tests.fakes.llm_server import FakeLLMServer
from tests.system.conftest import base_tables
from tests.system.discord_fixtures import (
    DISCORD_TOKEN_ENV,
    DiscordPerson,
    ada_dc,
    discord,
    discord_tables,
)
from tests.system.harness import BotProcess, CanaryScan, Workspace, eventually
from tests.system.replica_fixtures import pg_url

__all__ = ["ada_dc", "discord", "pg_url"]  # fixtures used below


async def test_two_replicas_split_the_gateway_shards(
    tmp_path: Path,
    llm: FakeLLMServer,
    discord: FakeDiscord,
    ada_dc: DiscordPerson,
    pg_url: str,
    canaries: CanaryScan,
) -> None:
    ada = ada_dc
    key = anthropic_key()
    master = base64.b64encode(secrets.token_bytes(32)).decode()
    canaries.add(key, master)
    spaces: list[Workspace] = []
    for shard in (0, 1):
        root = tmp_path / f"replica{shard}"
        root.mkdir()
        ws = Workspace(root)
        ws.configure(base_tables(root, llm))
        ws.configure(discord_tables(discord))
        ws.configure(
            {
                "core": {"database_url": pg_url},
                "discord": {
                    "shard_ids": [shard],
                    "shard_count": 2,
                    "agent_channels": [GUILD_CHANNEL_ID],
                },
            }
        )
        ws.env[DISCORD_TOKEN_ENV] = discord.token
        ws.env["BYOKBOT_MASTER_KEY"] = master
        canaries.watch_workspace(ws)
        spaces.append(ws)
    bots: list[BotProcess] = []
    try:
        # One after the other: the first migrates the empty database.
        for ws in spaces:
            bot = await ws.start("run")
            await bot.wait_output(r"discord adapter started", within=60)
            bots.append(bot)
        assert sorted(discord.identifies) == [(0, 2), (1, 2)]
        assert discord.shard_of(GUILD_ID) == 1
        # Only the replica with shard 0 registers the slash commands.
        assert "discord: slash commands synced" in bots[0].stderr()
        assert "slash commands" not in bots[1].stderr()

        # Sign-up in the DM: shard 0, the first replica.
        await ada.slash("start")
        await ada.wait_text("Pick a plan", within=30)
        await ada.press("BYOK")
        await ada.wait_text("Which provider")
        await ada.press("Anthropic")
        await ada.wait_modal()
        await ada.submit_modal(key)
        await ada.wait_text(r"Key saved: sk-ant-…", within=30)
        await ada.send_dm("hello in the dm")
        await ada.wait_text("echo: hello in the dm", within=30)

        # In the server: shard 1, the other replica, which knows her from the database.
        await ada.say("hello in the server")
        await ada.wait_text("echo: hello in the server", channel=GUILD_CHANNEL_ID, within=30)
        assert set(llm.keys("anthropic")) == {key}
        await eventually(lambda: "agent for" in bots[1].stderr())
        assert "agent for" in bots[0].stderr()  # each replica ran her agent for its shard
        for bot in bots:
            assert bot.returncode is None
            assert "Traceback" not in bot.stderr(), bot.stderr()
    finally:
        for ws in spaces:
            await ws.close()
