"""A hostile agent tries every escape of issue 11 through ``byokbot run``; each one is refused.

Two hostile agents, each run with the bot as root and with the bot as an unprivileged user:

- ``command``: an ``[agent] command`` program (``scripts/hostile_agent.py``), sandboxed by the
  documented external-agent policy (``read_paths`` names its directory);
- ``builtin``: the built-in forked worker with code injected through Python's own start-up
  hook: ``scripts/inject`` on ``PYTHONPATH`` holds a ``sitecustomize`` that, in the fork-server
  template only, replaces the worker's answer step with the escapes. byokbot has no test hook:
  the production template and worker run it, confined exactly as any agent is.

Two tenants sign up; Bob's agent tells its pid and work dir (``WHOAMI``), then Ada's agent is
aimed at the bot, the fork server, Bob's agent and directory, the master key and the database
(``ESCAPE {targets}``) and reports each attempt's errno. Nothing read is ever reported.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.conftest import TELEGRAM_TOKEN_ENV, base_tables, telegram_tables
from tests.system.harness import ROOT, BotProcess, CanaryScan, Workspace, byokbot_command
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import SERVING, sign_up_with_key

SCRIPTS = Path(__file__).parent / "scripts"
SITE_PACKAGES = next(p for p in sys.path if p.endswith("site-packages"))
USER = "byokbot-sandbox-test"

REFUSED = {
    "master_key": "EACCES",
    "database": "EACCES",
    "bot_environ": "EACCES",
    "bot_mem": "EACCES",
    "bot_fd": "EACCES",
    "other_workdir": "EACCES",
    "signal_bot": "EPERM",
    "signal_agent": "EPERM",
    "forkserver": "EPERM",
    "ptrace": "EPERM",
    "process_vm_readv": "EPERM",
    "listen": "EACCES",
    "connect_other_port": "EACCES",
    "connect_provider": "ok",  # its provider's port stays reachable
    "write_own_dir": "ok",
    "userns": "EPERM",
}


def _system_python() -> str:
    """An interpreter every uid can run (an agent's own uid cannot enter /root, say)."""
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def _test_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/bin/false", USER], check=True
        )
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


@dataclass
class SandboxWorkspace(Workspace):
    """A ``Workspace`` whose ``byokbot`` runs as ``user`` (uid, gid) when set."""

    user: tuple[int, int] | None = None

    def configure(self, tables: Mapping[str, Mapping[str, Any]]) -> None:
        super().configure(tables)
        if self.user is not None:  # readable by the bot's user whatever this process's umask
            os.chown(self.config_path, *self.user)

    def _command(self) -> tuple[list[str], dict[str, str]]:
        if self.user is None:
            return byokbot_command(), {}
        uid, gid = self.user
        drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
        # Through env: setpriv itself can start an interpreter that the bot's own children
        # (the fork server) then cannot exec again.
        venv = subprocess.run([*drop, "env", sys.executable, "-c", "pass"], check=False)
        if venv.returncode == 0:
            return [*drop, *byokbot_command()], {}
        # This interpreter is out of the user's reach (under /root): the system one, with
        # the project and its installed dependencies on the path.
        boot = "import sys; sys.argv[0] = 'byokbot'; from bot.cli import main; sys.exit(main())"
        path = os.pathsep.join([str(ROOT), SITE_PACKAGES])
        return [*drop, _system_python(), "-c", boot], {"PYTHONPATH": path}

    async def start(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        stdin: int | None = asyncio.subprocess.DEVNULL,
        name: str | None = None,
    ) -> BotProcess:
        argv = list(args or ("run",))
        out, err = self._log_files(name or argv[0])
        command, extra = self._command()
        environment = self.environment(env)
        if "PYTHONPATH" in extra:
            environment["PYTHONPATH"] = os.pathsep.join(
                p for p in (environment.get("PYTHONPATH"), extra["PYTHONPATH"]) if p
            )
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = await asyncio.create_subprocess_exec(
                *command,
                *argv,
                cwd=self.root,
                env=environment,
                stdin=stdin,
                stdout=fo,
                stderr=fe,
                start_new_session=True,
            )
        bot = BotProcess(proc, out, err)
        self.processes.append(bot)
        return bot


@pytest.fixture(params=["root", "unprivileged"])
def as_user(request: pytest.FixtureRequest) -> tuple[int, int] | None:
    if request.param == "root" or os.geteuid() != 0:
        return None  # a non-root developer's own uid is the unprivileged case for both
    return _test_user()


@pytest.fixture
def scratch(as_user: tuple[int, int] | None) -> Iterator[Path]:
    """A directory the bot's user owns, outside pytest's root-only tmp dir."""
    path = Path(tempfile.mkdtemp(prefix="byokbot-sandbox-"))
    try:
        if as_user is not None:
            os.chown(path, *as_user)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def sws(
    scratch: Path,
    as_user: tuple[int, int] | None,
    llm: FakeLLMServer,
    telegram: FakeTelegramServer,
    canaries: CanaryScan,
) -> AsyncIterator[SandboxWorkspace]:
    root = scratch / "work"
    root.mkdir()
    if as_user is not None:
        os.chown(root, *as_user)
    workspace = SandboxWorkspace(root, user=as_user)
    workspace.configure(base_tables(root, llm))
    workspace.configure(telegram_tables(telegram))
    # The hostile agent is inspected after its reply: no reply-timed recycle replaces it.
    workspace.configure({"agent": {"recycle_after_idle_seconds": 0}})
    workspace.env[TELEGRAM_TOKEN_ENV] = telegram.token
    canaries.watch_workspace(workspace)
    try:
        yield workspace
    finally:
        await workspace.close()


def _agent_config(ws: Workspace, kind: str) -> None:
    if kind == "command":
        ws.configure(
            {
                "agent": {
                    "command": [_system_python(), "-I", "-S", str(SCRIPTS / "hostile_agent.py")],
                    "read_paths": [str(SCRIPTS)],
                }
            }
        )
    else:
        ws.env["PYTHONPATH"] = str(SCRIPTS / "inject")


def _template_socket(bot: BotProcess) -> str | None:
    for pid in bot.children():
        try:
            proc = psutil.Process(pid)
            if "multiprocessing.forkserver" not in " ".join(proc.cmdline()):
                continue
            for conn in proc.net_connections(kind="unix"):
                if isinstance(conn.laddr, str) and conn.laddr:
                    return conn.laddr
        except psutil.Error:
            continue
    return None


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


async def _whoami(person: TelegramPerson, ws: Workspace, bot: BotProcess) -> tuple[int, str]:
    person.send("WHOAMI")
    try:
        text = await person.wait_text(r"WHOAMI pid=\d+ cwd=\S+", within=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{bot.output()}\n{_agent_logs(ws)}") from None
    found = re.search(r"pid=(\d+) cwd=(\S+)", text)
    assert found is not None
    return int(found.group(1)), found.group(2)


def _agent_logs(ws: Workspace) -> str:
    logs = sorted((ws.root / "data" / "agents").glob("*/agent.log"))
    return "\n".join(f"== {p}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)


def _poke(path: str, payload: bytes) -> None:
    """A bad fork request: connect, send ``payload`` (maybe nothing), hang up."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        if payload:
            s.sendall(payload)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["builtin", "command"])
async def test_hostile_agent_is_refused_every_escape(
    kind: str,
    as_user: tuple[int, int] | None,
    sws: SandboxWorkspace,
    llm: FakeLLMServer,
    telegram: FakeTelegramServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    bob = TelegramPerson(telegram, 4343, "Bob", "bob")
    ada_key, bob_key = anthropic_key(), anthropic_key()
    canaries.add(ada_key, bob_key)
    _agent_config(sws, kind)
    bot = await sws.start("run")
    line = await bot.wait_output(r"agent sandbox: strict; in force: [^\n]*", within=30)
    assert "missing: none" in line.group(0)
    await bot.wait_output(SERVING, within=30)

    await sign_up_with_key(ada, ada_key)
    ada_pid, _ = await _whoami(ada, sws, bot)
    forkserver = _template_socket(bot)
    if kind == "builtin":
        # The template survives bad requests (an empty one used to kill it): Bob still starts.
        assert forkserver is not None
        for payload in (b"", b"\0" * 3, b"garbage" * 100):
            _poke(forkserver, payload)
    await sign_up_with_key(bob, bob_key)
    bob_pid, bob_dir = await _whoami(bob, sws, bot)

    status = _status(ada_pid)
    uid = int(status["Uid"].split()[0])
    expected_uid = os.geteuid() if as_user is None else as_user[0]
    if os.geteuid() == 0 and as_user is None:
        assert uid >= 3_000_000 and uid != _status(bob_pid)["Uid"].split()[0]
    else:
        assert uid == expected_uid
    assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2")
    caps = ("CapEff", "CapPrm", "CapBnd", "CapAmb")
    assert [status[c] for c in caps] == ["0" * 16] * 4
    assert (Path(bob_dir).stat().st_mode & 0o777) == 0o700

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        targets = {
            "bot": bot.pid,
            "master_key": str(sws.root / "data" / "master.key"),
            "database": str(sws.root / "data" / "byokbot.db"),
            "other_workdir": bob_dir,
            "other_agent": bob_pid,
            "forkserver": forkserver or str(sws.root / "no-template.sock"),
            "provider_port": urlsplit(llm.anthropic_url).port,
            "other_port": listener.getsockname()[1],
        }
        ada.send("ESCAPE " + json.dumps(targets))
        try:
            text = await ada.wait_text(r"ESCAPED \{.*\}", within=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{bot.output()}\n{_agent_logs(sws)}") from None
    outcome = json.loads(text[text.index("{") :])
    assert outcome == REFUSED

    # Still a working agent under the sandbox: it answers (streamed through the provider).
    ada.send("still with me?")
    await ada.wait_text("echo: still with me", within=30)


async def test_sandbox_check_reports_the_layers_and_refuses_every_escape(ws: Workspace) -> None:
    result = await ws.cli("sandbox", "check")
    assert result.returncode == 0, result.stderr
    assert re.search(r"agent sandbox: strict; in force: .*seccomp.*; missing: none", result.stdout)
    for refusal in (
        "read a file outside its directory: EACCES",
        "read the bot's environment: EACCES",
        "signal the bot: EPERM",
        "ptrace the bot: EPERM",
        "open a unix socket: EPERM",
        "listen on a TCP port: EACCES",
    ):
        assert f"refused: {refusal}" in result.stdout


async def test_strict_without_a_layer_refuses_agents_with_a_friendly_answer(
    tg_ws: Workspace, ada: TelegramPerson, canaries: CanaryScan
) -> None:
    key = anthropic_key()
    canaries.add(key)
    # As root, an empty uid_range leaves the privileges layer missing.
    tg_ws.configure({"agent": {"uid_range": []}})
    check = await tg_ws.cli("sandbox", "check")
    bot = await tg_ws.start("run")
    await bot.wait_output(SERVING, within=30)
    line = (await bot.wait_output(r"agent sandbox: [^\n]*")).group(0)
    if os.geteuid() != 0:  # unprivileged: the user namespace needs no uid range
        assert (check.returncode, "missing: none" in line) == (0, True)
        return
    assert check.returncode == 1
    assert "byokbot: error: sandbox self-test failed: privileges" in check.stderr
    assert "missing: privileges (the bot runs as root and [agent] uid_range is empty)" in line
    assert line.endswith("agents will not start")
    await sign_up_with_key(ada, key)
    ada.send("hello?")
    await ada.wait_text("its security sandbox isn't available here", within=30)
    assert bot.returncode is None
    assert "agent for" in bot.output() and "not started" in bot.output()
