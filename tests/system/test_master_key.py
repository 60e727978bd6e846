"""Master-key mistakes stop start-up with one line; rotation never breaks a running bot's chats."""

from __future__ import annotations

import base64
import os

from tests.canaries import anthropic_key
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.cli_helpers import assert_one_error, run_to_exit
from tests.system.harness import BotProcess, CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson


def a_master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def serve(ws: Workspace, name: str = "run") -> BotProcess:
    bot = await ws.start("run", name=name)
    await bot.wait_output(r"telegram: serving @\w+ by polling", within=30)
    return bot


async def sign_up_with_key(person: TelegramPerson, key: str) -> None:
    """BYOK plan and an Anthropic key, as a new person does it; then one agent reply."""
    person.send("/start")
    await person.wait_text("Pick a plan")
    person.press("BYOK")
    await person.wait_text("Which provider")
    person.press("Anthropic")
    await eventually(lambda: _has_prompt(person), message=lambda: "\n".join(person.texts()))
    person.reply_to_prompt(key)
    await person.wait_text("sk-ant-…")
    person.send("first question")
    await person.wait_text("echo: first question", within=30)


def _has_prompt(person: TelegramPerson) -> bool:
    try:
        person.prompt_id()
    except AssertionError:
        return False
    return True


async def test_a_wrong_master_key_stops_startup(
    tg_ws: Workspace, ada: TelegramPerson, canaries: CanaryScan
) -> None:
    key = anthropic_key()
    canaries.add(key)
    bot = await serve(tg_ws)
    await sign_up_with_key(ada, key)
    assert await bot.terminate() == 0

    # Well-formed, but not the key the data keys were wrapped with.
    result, _ = await run_to_exit(tg_ws, "run", env={"BYOKBOT_MASTER_KEY": a_master_key()})
    assert_one_error(result, r"BYOKBOT_MASTER_KEY.*does not open", code=2)

    key_file = tg_ws.root / "data" / "master.key"
    key_file.write_text(f"v1:{a_master_key()}\n")
    result, _ = await run_to_exit(tg_ws, "run")
    assert_one_error(result, r"master\.key.*does not open", code=2)


async def test_a_missing_key_file_beside_stored_data_is_not_replaced(
    tg_ws: Workspace, ada: TelegramPerson, canaries: CanaryScan
) -> None:
    key = anthropic_key()
    canaries.add(key)
    bot = await serve(tg_ws)
    await sign_up_with_key(ada, key)
    assert await bot.terminate() == 0

    key_file = tg_ws.root / "data" / "master.key"
    saved = key_file.read_bytes()
    key_file.unlink()
    result, _ = await run_to_exit(tg_ws, "run")
    assert_one_error(result, r"master\.key.*not found.*backup", code=2)
    assert not key_file.exists()  # no fresh key that would open nothing
    result, _ = await run_to_exit(tg_ws, "db", "upgrade")
    assert_one_error(result, r"master\.key.*not found.*backup", code=2)
    assert not key_file.exists()

    # Restored from the backup, everything is readable again.
    key_file.write_bytes(saved)
    key_file.chmod(0o600)
    await serve(tg_ws, name="restored")
    ada.send("after restore")
    await ada.wait_text("echo: after restore", within=30)


async def test_master_key_rotation_beside_a_running_bot(
    tg_ws: Workspace, telegram: FakeTelegramServer, ada: TelegramPerson, canaries: CanaryScan
) -> None:
    key = anthropic_key()
    canaries.add(key)
    bot = await serve(tg_ws)
    await sign_up_with_key(ada, key)

    # The CLI refuses while a bot holds the database: rewrapping under its feet would leave
    # it with data keys it cannot open (and --retire could drop a key it still wraps with).
    result, _ = await run_to_exit(tg_ws, "master-key", "rotate", "--retire")
    assert_one_error(result, r"running byokbot .*/admin rotate-master-key", code=1)
    result, _ = await run_to_exit(tg_ws, "admin", "rotate-master-key")
    assert_one_error(result, r"running byokbot .*/admin rotate-master-key", code=1)

    ada.send("still there?")
    await ada.wait_text("echo: still there\\?", within=30)
    assert "Traceback" not in bot.output()

    # From the chat, the running bot rotates in place (operator 900 is an admin).
    admin = TelegramPerson(telegram, 900, "Op", "op")
    admin.send("/admin rotate-master-key")
    await admin.wait_text(r"v2", within=15)
    ada.send("after chat rotation")
    await ada.wait_text("echo: after chat rotation", within=30)

    # With the bot stopped, the CLI rotates and retires; the next start reads everything.
    assert await bot.terminate() == 0
    result, _ = await run_to_exit(tg_ws, "master-key", "rotate", "--retire")
    assert result.returncode == 0, result.output
    assert "master key v3 is primary" in result.stdout
    assert "retired master key v1" in result.stdout and "retired master key v2" in result.stdout
    assert result.stderr == "", result.stderr  # no Alembic or other log lines
    await serve(tg_ws, name="after-rotation")
    ada.send("after cli rotation")
    await ada.wait_text("echo: after cli rotation", within=30)
