"""SECURITY.md test 11: an agent's /proc is closed to other processes, and holds no key."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import AgentSettings
from core.runtime.launch import CommandLauncher
from tests.fakes.agents import proc_file, rig

NOBODY = 65534
KEY = "sk-ant-api03-" + "IsoL4t3d" * 11 + "xyzab" + "AA"
AS_USER = str(Path(__file__).parent / "fakes" / "as_user.py")


RUNUSER, CAT = shutil.which("runuser") or "runuser", shutil.which("cat") or "cat"


def _read_as_nobody(path: str) -> subprocess.CompletedProcess[str]:
    """``cat`` the file as nobody (a process of that uid that is not the agent)."""
    return subprocess.run(
        [RUNUSER, "-u", "nobody", "--", CAT, path],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # pytest's own temp root is 0700; the unprivileged worker must traverse this one.
    base = Path(tmp_path_factory.mktemp("open")).resolve()
    path = Path("/tmp") / f"byok-iso-{os.getpid()}-{base.name}"
    path.mkdir(mode=0o711)
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


async def test_forked_agent_holds_no_key_in_cmdline_or_environ_and_applies_limits(
    runtime_dir: Path,
) -> None:
    async with rig(runtime_dir) as r:
        r.tenant("t1", KEY)
        await r.say("t1", "hi")
        [pid] = r.pids("t1")
        cmdline = proc_file(pid, "cmdline")
        environ = proc_file(pid, "environ")  # readable here only because we are root
        limits = proc_file(pid, "limits").decode()
        cwd = os.readlink(f"/proc/{pid}/cwd")
        assert KEY.encode() not in cmdline
        assert environ.strip(b"\0") == b""  # cleared, and the kernel's copy zeroed
        assert _limit(limits, "Max core file size") == ("0", "0")
        assert _limit(limits, "Max open files") == ("256", "256")
        assert _limit(limits, "Max address space") == (str(512 * 1024 * 1024),) * 2
        assert (Path(cwd).parent, os.stat(cwd).st_mode & 0o777) == (runtime_dir, 0o700)
        assert r.fake.keys() == [KEY]


async def test_unprivileged_process_cannot_read_the_agents_environ_or_mem(
    runtime_dir: Path,
) -> None:
    command = [sys.executable, AS_USER, str(NOBODY), "worker"]
    control = _start_control()
    try:
        # The worker's own hardening, so without the sandbox (which would run the command as
        # another uid; tests/system/test_sandbox_escapes.py covers that).
        off = AgentSettings(sandbox="off")
        async with rig(runtime_dir, launcher=lambda: CommandLauncher(command), settings=off) as r:
            r.tenant("t1", KEY)
            assert await r.say("t1", "hi") == "echo: hi"
            [pid] = r.pids("t1")
            status = proc_file(pid, "status").decode()
            assert f"Uid:\t{NOBODY}\t{NOBODY}" in status  # same uid as the reader below
            agent_env = _read_as_nobody(f"/proc/{pid}/environ")
            agent_mem = _read_as_nobody(f"/proc/{pid}/mem")
            control_env = _read_as_nobody(f"/proc/{control.pid}/environ")
            control_mem = _read_as_nobody(f"/proc/{control.pid}/mem")
            cmdline = _read_as_nobody(f"/proc/{pid}/cmdline")
        # The control (same uid, not hardened) is readable, so the refusals are the agent's own.
        assert (control_env.returncode, "PATH=" in control_env.stdout) == (0, True)
        assert "Permission denied" not in control_mem.stderr
        assert (agent_env.returncode, "Permission denied" in agent_env.stderr) == (1, True)
        assert (agent_mem.returncode, "Permission denied" in agent_mem.stderr) == (1, True)
        assert (cmdline.returncode, KEY in cmdline.stdout) == (0, False)
    finally:
        control.kill()
        control.wait()


def test_harden_sets_the_flags_in_a_fresh_process(tmp_path: Path) -> None:
    code = f"""
import resource, sys
sys.path.insert(0, {str(Path(__file__).parents[1])!r})
from core.runtime import worker, protocol
from core.secret import Secret
worker.harden(protocol.Configure("anthropic", "http://127.0.0.1:9", Secret("k"),
    {str(tmp_path / "w")!r}, 5.0, 300, 64))
import os
print(worker.is_dumpable(), resource.getrlimit(resource.RLIMIT_CORE),
      resource.getrlimit(resource.RLIMIT_NOFILE), os.getcwd(), dict(os.environ))
"""
    env = {"PATH": os.defpath, "CANARY_VAR": "should-vanish"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.split("\n")[0] == f"False (0, 0) (64, 64) {tmp_path / 'w'} {{}}"


def _start_control() -> subprocess.Popen[str]:
    """A process of the same uid that did not harden itself: its /proc must be readable."""
    control = subprocess.Popen(
        [sys.executable, AS_USER, str(NOBODY), "sleep"], stdout=subprocess.PIPE, text=True
    )
    assert control.stdout is not None
    assert control.stdout.readline() == "ready\n"
    return control


def _limit(limits: str, name: str) -> tuple[str, str]:
    line = next(line for line in limits.splitlines() if line.startswith(name))
    soft, hard = line[len(name) :].split()[:2]
    return soft, hard
