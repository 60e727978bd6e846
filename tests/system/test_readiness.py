"""``/readyz`` follows each platform's connection (issue 16, item 2) through ``byokbot run``.

Each fake has an outage switch: Telegram answers ``getUpdates`` with 502, Discord closes the
gateway and refuses new connections, Slack closes the Socket Mode link and refuses new ones.
While it lasts, ``/readyz`` answers 503 naming the platform; once the platform is back and the
adapter has reconnected, 200 again, and people are answered as before.
"""

from __future__ import annotations

from tests.fakes.discord_server import FakeDiscord
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.discord_fixtures import DISCORD_TOKEN_ENV, discord, discord_tables
from tests.system.harness import Workspace, eventually
from tests.system.people import TelegramPerson
from tests.system.slack_fixtures import SlackSide, slack_fixture
from tests.system.telegram_steps import start_bot
from tests.system.test_ops import get, with_health

__all__ = ["discord", "slack_fixture"]  # fixtures used by the tests below


async def _status(base: str) -> tuple[int, str]:
    return await get(f"{base}/readyz")


async def _becomes(base: str, status: int, body: str = "", within: float = 30) -> None:
    last: list[tuple[int, str]] = []

    async def there() -> bool:
        got = await _status(base)
        last[:] = [got]
        return got[0] == status and body in got[1]

    await eventually(there, within=within, message=lambda: f"/readyz: {last}")


async def test_readyz_follows_telegram_polling(
    tg_ws: Workspace, telegram: FakeTelegramServer, ada: TelegramPerson
) -> None:
    base = with_health(tg_ws)
    bot = await start_bot(tg_ws)
    await _becomes(base, 200)
    # Three polls refused: the adapter backs off (1 s, 2 s), not ready meanwhile.
    telegram.fail("getUpdates", 502, "Bad Gateway", times=3)
    await _becomes(base, 503, "adapters: disconnected: telegram")
    assert (await get(f"{base}/healthz"))[0] == 200  # the process is up all along
    await _becomes(base, 200)
    ada.send("/help")
    await ada.wait_text("/start", within=30)
    assert await bot.terminate() == 0


async def test_readyz_follows_the_discord_gateway(ws: Workspace, discord: FakeDiscord) -> None:
    ws.configure(discord_tables(discord))
    ws.env[DISCORD_TOKEN_ENV] = discord.token
    base = with_health(ws)
    bot = await ws.start("run")
    await bot.wait_output(r"discord adapter started", within=30)
    await _becomes(base, 200)
    await discord.drop_gateway()
    await _becomes(base, 503, "adapters: disconnected: discord")
    discord.gateway_refused = False
    await eventually(discord.resumed.is_set, within=60)  # discord.py resumes the session
    await _becomes(base, 200)
    assert await bot.terminate() == 0


async def test_readyz_follows_the_slack_socket_mode_link(ws: Workspace, slack: SlackSide) -> None:
    slack.configure(ws, "socket")
    base = with_health(ws)
    bot = await slack.start(ws)
    await _becomes(base, 200)
    await slack.fake.drop_link()
    await _becomes(base, 503, "adapters: disconnected: slack")
    slack.fake.link_refused = False
    await eventually(slack.fake.connected.is_set, within=60)  # the SDK opens a new link
    await _becomes(base, 200)
    assert await bot.terminate() == 0
