"""Start-up failures, judged as an operator meets them: the exit code and the one line printed.

Exit codes: 2 for a configuration problem (the file, a variable it names, the master key),
1 for a runtime failure (a service that cannot be reached, another bot polling).
"""

from __future__ import annotations

from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.cli_helpers import assert_one_error, closed_port, run_to_exit
from tests.system.harness import Workspace
from tests.system.people import TelegramPerson


async def test_telegram_enabled_without_its_token_stops_startup(tg_ws: Workspace) -> None:
    del tg_ws.env["TELEGRAM_BOT_TOKEN"]
    result, _ = await run_to_exit(tg_ws, "run")
    # Under a service manager stdin is closed: no console fallback that exits 0.
    assert_one_error(result, r"TELEGRAM_BOT_TOKEN", code=2)
    assert "console" not in result.stdout


async def test_config_check_names_the_missing_token(tg_ws: Workspace) -> None:
    del tg_ws.env["TELEGRAM_BOT_TOKEN"]
    result, _ = await run_to_exit(tg_ws, "config", "check")
    assert_one_error(result, r"TELEGRAM_BOT_TOKEN", code=2)


async def test_discord_enabled_without_its_token_stops_startup(ws: Workspace) -> None:
    ws.configure({"discord": {"enabled": True}})
    result, _ = await run_to_exit(ws, "run")
    assert_one_error(result, r"DISCORD_BOT_TOKEN", code=2)


async def test_slack_enabled_without_its_tokens_stops_startup(ws: Workspace) -> None:
    ws.configure({"slack": {"enabled": True}})
    result, _ = await run_to_exit(ws, "run")
    assert_one_error(result, r"SLACK_BOT_TOKEN", code=2)


async def test_unreachable_telegram_stops_startup_quickly(tg_ws: Workspace) -> None:
    port = closed_port()
    tg_ws.configure(
        {
            "telegram": {
                "api_base_url": f"http://127.0.0.1:{port}/bot",
                "file_base_url": f"http://127.0.0.1:{port}/file/bot",
            }
        }
    )
    result, took = await run_to_exit(tg_ws, "run", within=40)
    assert_one_error(result, r"(?i)telegram.*reach", code=1)
    assert took < 30, took


async def test_unreachable_postgresql_stops_startup(ws: Workspace) -> None:
    port = closed_port()
    ws.configure({"core": {"database_url": f"postgresql+asyncpg://byok@127.0.0.1:{port}/byokbot"}})
    result, took = await run_to_exit(ws, "run", within=40)
    line = assert_one_error(result, r"(?i)database", code=1)
    assert f"127.0.0.1:{port}" in line
    assert took < 30, took


async def test_a_database_folder_that_cannot_be_created_is_one_clear_error(
    ws: Workspace,
) -> None:
    # A file where the database's folder should be: no permission bits help here, so the
    # case is the same whether the bot runs as root or not.
    blocker = ws.root / "not-a-folder"
    blocker.write_text("")
    database = blocker / "data" / "byokbot.db"
    ws.configure({"core": {"database_url": f"sqlite+aiosqlite:///{database}"}})
    for args in (("run",), ("db", "upgrade")):
        result, _ = await run_to_exit(ws, *args, within=40)
        assert_one_error(result, r"cannot create .*not-a-folder.*: Not a directory", code=1)


async def test_second_poller_of_the_same_bot_refuses_to_start(
    tg_ws: Workspace, telegram: FakeTelegramServer, ada: TelegramPerson
) -> None:
    first = await tg_ws.start("run", name="first")
    await first.wait_output(r"telegram: serving @\w+ by polling", within=30)

    result, _ = await run_to_exit(tg_ws, "run", within=40)
    assert_one_error(result, r"(?i)another .*poll", code=1)

    # The first one keeps serving.
    assert first.returncode is None
    ada.send("/start")
    await ada.wait_text("Pick a plan")
    assert first.returncode is None


async def test_console_opens_only_when_no_platform_is_enabled(ws: Workspace) -> None:
    result, _ = await run_to_exit(ws, "run")
    assert result.returncode == 0, result.output
    assert "byokbot console" in result.stdout
    assert "Traceback" not in result.output
