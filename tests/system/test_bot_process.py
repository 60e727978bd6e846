"""The bot process itself (issue 11, layer 7): what another process of its uid can take from it.

Code running in an agent runs, today, as the bot's own uid. It must not read the bot's
environment or memory, find the bot's secrets in the environment of any helper process
(multiprocessing's resource tracker, the fork server, agents), get them from a crash dump,
read the database, or forge an operator update with a stolen webhook secret.
"""

from __future__ import annotations

import base64
import errno
import os
import re
import signal
import stat
import sys
from pathlib import Path

import pytest

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer, message, tg_user
from tests.system.bot_process_support import attack, uws
from tests.system.conftest import TELEGRAM_TOKEN_ENV, telegram_tables
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.managed_support import enable_proxy, free_port
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import sign_up_with_key, start_bot

__all__ = ["uws"]  # the fixture, imported so pytest finds it here

MASTER_KEY_ENV = "BYOKBOT_MASTER_KEY"
WEBHOOK_SECRET_ENV = "TELEGRAM_WEBHOOK_SECRET"


def _master_key(canaries: CanaryScan) -> str:
    raw = base64.b64encode(os.urandom(32)).decode()
    canaries.add(raw)
    return f"v1:{raw}"


def _environ(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read()


async def test_a_process_of_the_bots_uid_reads_neither_its_environment_nor_its_memory(
    uws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    uws.configure(telegram_tables(telegram))
    uws.env[TELEGRAM_TOKEN_ENV] = telegram.token
    master = _master_key(canaries)
    uws.env[MASTER_KEY_ENV] = master
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(uws)
    await sign_up_with_key(ada, key)
    ada.send("hello there")
    await ada.wait_text("echo: hello there", within=30)
    pids = [bot.pid, *bot.children()]
    assert len(pids) >= 3, pids  # the bot, the fork server (and its tracker), the agent

    report = await attack(
        pids,
        needles=[telegram.token, master.removeprefix("v1:"), key],
        names=[TELEGRAM_TOKEN_ENV, MASTER_KEY_ENV],
    )

    mine = report["pids"][str(bot.pid)]
    assert mine["environ"] == {"errno": errno.EACCES}, mine
    assert mine["mem"]["errno"] == errno.EACCES, mine
    for pid, seen in report["pids"].items():
        assert not seen["environ"].get("stolen"), (pid, sorted(seen["environ"]["stolen"]))
        assert not seen["mem"].get("found"), (pid, seen["mem"])
    # The bot still works after making itself private.
    ada.send("and again")
    await ada.wait_text("echo: and again", within=30)


async def test_no_process_of_the_bot_shows_a_secret_in_its_environment(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    # Read as root: /proc/<pid>/environ shows the kernel's copy, which non-dumpable alone
    # does not clear. Every secret the config names travels by environment here.
    keys = enable_proxy(tg_ws, llm, canaries)
    master = _master_key(canaries)
    tg_ws.env[MASTER_KEY_ENV] = master
    tg_ws.env["SLACK_SIGNING_SECRET"] = "slack-signing-canary-" + os.urandom(12).hex()
    canaries.add(tg_ws.env["SLACK_SIGNING_SECRET"])
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(tg_ws)
    await sign_up_with_key(ada, key)
    ada.send("who holds what")
    await ada.wait_text("echo: who holds what", within=30)

    secrets = [
        telegram.token,
        master.removeprefix("v1:"),
        keys.anthropic,
        keys.openai,
        tg_ws.env["SLACK_SIGNING_SECRET"],
        key,
    ]
    pids = [bot.pid, *bot.children()]
    assert len(pids) >= 3, pids
    for pid in pids:
        environ = _environ(pid)
        for i, secret in enumerate(secrets):
            assert secret.encode() not in environ, f"secret #{i} in /proc/{pid}/environ"
    # Non-secret variables stay: PATH is still there for the bot and its helpers.
    assert b"PATH=" in _environ(bot.pid)


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGABRT])
async def test_a_crash_of_the_bot_leaves_no_core_file(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
    sig: signal.Signals,
) -> None:
    # As `ulimit -c unlimited` would; the kernel here writes "core" into the working dir.
    tg_ws.command_prefix = ["prlimit", "--core=unlimited", "--"]
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(tg_ws)
    await sign_up_with_key(ada, key)
    ada.send("remember me")
    await ada.wait_text("echo: remember me", within=30)
    # Not a canary: master.key itself holds it; no other file may.
    master = (tg_ws.root / "data" / "master.key").read_text().split(":", 1)[1].strip()

    os.kill(bot.pid, sig)
    code = await bot.wait(60)
    assert code == -sig, code
    cores = [p for p in tg_ws.root.rglob("core*") if p.is_file()]
    assert not cores, cores
    raw = base64.b64decode(master)
    for path in tg_ws.root.rglob("*"):
        if path.is_file() and path.name != "master.key":
            assert raw not in path.read_bytes(), path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_data_dir_database_and_key_are_private_on_creation_and_on_start(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    # The operator's usual umask, which would leave a new database readable by everyone.
    tg_ws.command_prefix = ["/bin/sh", "-c", 'umask 022 && exec "$@"', "sh"]
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(tg_ws)
    await sign_up_with_key(ada, key)
    data = tg_ws.root / "data"
    db = data / "byokbot.db"
    files = [db, data / "byokbot.db-wal", data / "byokbot.db-shm", data / "master.key"]
    await eventually(lambda: all(p.exists() for p in files), message=lambda: str(files))
    assert _mode(data) == 0o700
    for path in files:
        assert _mode(path) == 0o600, (path, oct(_mode(path)))
    assert await bot.terminate() == 0

    # Loosened by hand (a restore, a copy): fixed at the next start, and the log says so.
    data.chmod(0o755)
    for path in (db, data / "byokbot.db-wal", data / "byokbot.db-shm"):
        if path.exists():
            path.chmod(0o644)
    bot = await start_bot(tg_ws)
    assert _mode(data) == 0o700
    assert _mode(db) == 0o600
    out = bot.output()
    assert f"data directory {data} was mode 0755" in out, out
    assert f"file {db} was mode 0644" in out, out
    ada.send("still mine?")
    await ada.wait_text("echo: still mine", within=30)


def _admin_update(update_id: int) -> dict[str, object]:
    # An operator (telegram:900 is an admin in base_tables) asking for a broadcast.
    body = message(900, tg_user(900, "Op", "op"), "/admin broadcast pwned", message_id=5)
    return {"update_id": update_id, **body}


async def test_a_forged_operator_update_needs_the_webhook_secret_no_process_gives_out(
    uws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    canaries: CanaryScan,
) -> None:
    # Not a canary: setWebhook hands it to Telegram, as it must; checked below everywhere else.
    secret = "webhook-canary-" + os.urandom(16).hex()
    port = free_port()
    uws.configure(telegram_tables(telegram))
    uws.configure(
        {
            "telegram": {
                "mode": "webhook",
                "webhook_listen": "127.0.0.1",
                "webhook_port": port,
                "webhook_path": "telegram",
                "webhook_public_url": "https://bot.example.org/telegram",
            }
        }
    )
    uws.env[TELEGRAM_TOKEN_ENV] = telegram.token
    uws.env[WEBHOOK_SECRET_ENV] = secret
    bot = await uws.start("run")
    await bot.wait_output(r"telegram adapter started", within=30)
    await eventually(lambda: bool(telegram.calls_to("setWebhook")))

    report = await attack(
        [bot.pid, *bot.children()],
        needles=[secret, telegram.token],
        names=[WEBHOOK_SECRET_ENV, TELEGRAM_TOKEN_ENV],
        webhook={"url": f"http://127.0.0.1:{port}/telegram", "update": _admin_update(77)},
    )

    assert not report["used_stolen_secret"], report["pids"]
    assert report["forged_status"] == 403, report
    for pid, seen in report["pids"].items():
        assert not seen["mem"].get("found"), (pid, seen["mem"])
    assert not telegram.calls_to("sendMessage"), telegram.calls_to("sendMessage")
    assert "broadcast" not in bot.output()
    assert secret not in bot.output()
    for path in uws.files():
        assert secret.encode() not in path.read_bytes(), path


FLOOD_AGENT = Path(__file__).with_name("scripts") / "flood_agent.py"


def _sends(telegram: FakeTelegramServer, chat: int) -> int:
    return sum(
        1
        for c in telegram.calls
        if c.method in ("sendMessage", "editMessageText")
        and str(c.params.get("chat_id")) == str(chat)
    )


@pytest.mark.parametrize(
    ("mode", "told"),
    [
        ("chunks", "reply was cut off here"),  # 64 MiB in 16 KiB chunks: past the reply cap
        ("line", "sent something I couldn't understand"),  # one 4 MiB line: past the line bound
    ],
)
async def test_a_flooding_agent_gives_one_capped_reply_and_few_platform_calls(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
    mode: str,
    told: str,
) -> None:
    # The flood script lives under /root, which a sandboxed agent uid cannot read.
    tg_ws.configure(
        {"agent": {"command": [sys.executable, str(FLOOD_AGENT), mode], "sandbox": "off"}}
    )
    key = anthropic_key()
    canaries.add(key)
    bot = await start_bot(tg_ws)
    await sign_up_with_key(ada, key)
    ada.send("hi")
    await ada.wait_text("echo: hi", within=30)
    before = _sends(telegram, ada.user_id)

    ada.send("flood please")
    await ada.wait_text(told, within=60)
    await bot.wait_output(r"agent (for )?\S+ (sent a reply over 32000|broke the protocol)")
    flood = sum(len(run) for run in re.findall(r"[xy]{100,}", "".join(ada.texts())))
    assert flood <= 32000, flood
    # The default cap (32k characters) is about eight Telegram messages and their edits.
    assert _sends(telegram, ada.user_id) - before <= 60, _sends(telegram, ada.user_id) - before

    # A fresh agent answers the next message. Over the cap is not a crash (no back-off); a
    # line over the bound is a broken protocol, which is (the first one restarts at once).
    ada.send("hello again")
    await ada.wait_text("echo: hello again", within=30)
    assert ("exited unexpectedly" in bot.output()) == (mode == "line"), bot.output()
