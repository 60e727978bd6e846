"""``byokbot admin`` from a shell: notices reach tenants in their chats, the operator sees counts."""

from __future__ import annotations

from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.cli_helpers import assert_one_error, run_to_exit
from tests.system.harness import BotProcess, Workspace
from tests.system.people import TelegramPerson


async def serve(ws: Workspace, name: str = "run") -> BotProcess:
    bot = await ws.start("run", name=name)
    await bot.wait_output(r"telegram: serving @\w+ by polling", within=30)
    return bot


async def sign_up(person: TelegramPerson) -> None:
    person.send("/start")
    await person.wait_text("Pick a plan")
    person.press("BYOK")
    await person.wait_text("Which provider")


def received(telegram: FakeTelegramServer, person: TelegramPerson, text: str) -> list[str]:
    return [
        str(c["text"])
        for c in telegram.calls_to("sendMessage")
        if str(c.get("chat_id")) == str(person.user_id) and text in str(c.get("text", ""))
    ]


async def test_broadcast_and_suspend_reach_tenants_in_their_chats(
    tg_ws: Workspace, telegram: FakeTelegramServer, ada: TelegramPerson
) -> None:
    bob = TelegramPerson(telegram, 4343, "Bob", "bob")
    bot = await serve(tg_ws)
    await sign_up(ada)
    await sign_up(bob)
    assert await bot.terminate() == 0

    result, _ = await run_to_exit(tg_ws, "admin", "broadcast", "hello", "everyone")
    assert result.returncode == 0, result.output
    assert "sent to 2 of 2 tenants" in result.stdout
    assert result.stderr == ""  # no Alembic INFO lines, no log noise
    assert received(telegram, ada, "hello everyone")
    assert received(telegram, bob, "hello everyone")
    assert "getUpdates" not in telegram.methods()[-3:]  # sent, without polling

    result, _ = await run_to_exit(tg_ws, "admin", "suspend", "telegram:4242", "unpaid")
    assert result.returncode == 0, result.output
    assert result.stderr == ""
    assert "told in 1 of 1 chats" in result.stdout
    # The tenant's notice goes to the tenant, not to the operator's terminal.
    assert "suspended your account" not in result.stdout
    assert received(telegram, ada, "suspended your account (unpaid)")
    assert not received(telegram, bob, "suspended")

    # Beside a running bot, too: the command line sends without polling.
    bot = await serve(tg_ws, name="again")
    result, _ = await run_to_exit(tg_ws, "admin", "resume", "telegram:4242")
    assert result.returncode == 0, result.output
    assert received(telegram, ada, "resumed")
    ada.send("/status")
    await ada.wait_text("(?i)byok")
    assert bot.returncode is None


async def test_a_platform_the_command_line_cannot_send_on_is_said_plainly(
    tg_ws: Workspace, telegram: FakeTelegramServer, ada: TelegramPerson
) -> None:
    bot = await serve(tg_ws)
    await sign_up(ada)
    assert await bot.terminate() == 0
    tg_ws.configure({"telegram": {"enabled": False}})

    result, _ = await run_to_exit(tg_ws, "admin", "broadcast", "hello")
    assert "sent to 0 of 1 tenants" in result.stdout
    assert_one_error(result, r"1 notice\(s\) could not be delivered .*1 on telegram", code=1)
    assert not received(telegram, ada, "hello")


async def test_admin_commands_print_only_their_answer(tg_ws: Workspace) -> None:
    result, _ = await run_to_exit(tg_ws, "admin", "stats")
    assert result.returncode == 0, result.output
    assert result.stderr == ""
    assert "alembic" not in result.output.lower()
    result, _ = await run_to_exit(tg_ws, "db", "upgrade")
    assert (result.returncode, result.stderr) == (0, ""), result.output
