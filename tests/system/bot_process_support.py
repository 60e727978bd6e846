"""Running ``byokbot`` as an unprivileged user, and an attacker process of that same uid.

"Same uid, no CAP_SYS_PTRACE" must be real for the bot-process tests: as root the test runner
could read any ``/proc/<pid>/mem``. When the suite runs as root, the bot and the attacker run
as a dedicated system user (``byokbot-test``, created if missing) through ``setpriv`` with
every capability dropped; otherwise the runner's own uid already is unprivileged. An
interpreter under a directory others cannot enter (``/root/.pyenv``) is made reachable in a
private mount namespace of that process alone (a tmpfs over the closed directory with the
interpreter's tree bound back), so the real console script still runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.system.conftest import base_tables
from tests.system.harness import CanaryScan, Workspace

USER = "byokbot-test"
SCRIPTS = Path(__file__).with_name("scripts")


def _closed_ancestor(path: Path) -> Path | None:
    """The outermost directory above ``path`` that other users cannot traverse."""
    for parent in reversed(path.parents):
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return parent
    return None


def ensure_user() -> tuple[int, int]:
    """The uid and gid the bot runs as (creating the system user when running as root)."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        useradd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        subprocess.run([*useradd, USER], check=True)
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


def unprivileged_prefix() -> list[str]:
    """Words that run the next command as the unprivileged user (see the module docstring)."""
    if os.geteuid() != 0:
        return []
    uid, gid = ensure_user()
    steps: list[str] = []
    home = Path(sys.base_prefix).resolve()
    closed = _closed_ancestor(home)
    if closed is not None:
        keep = home.relative_to(closed).parts[0]
        inner = shlex.quote(str(closed / keep))
        steps.append(
            f'T=$(mktemp -d) && mount --bind {inner} "$T" && '
            f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(closed))} && "
            f'mkdir -p {inner} && mount --move "$T" {inner} && rmdir "$T"'
        )
    setpriv = (
        f"exec setpriv --reuid={uid} --regid={gid} --clear-groups "
        '--inh-caps=-all --bounding-set=-all -- "$@"'
    )
    script = " && ".join([*steps, setpriv])
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh"]


def make_root() -> Path:
    """A work dir the unprivileged user owns, under a folder it can enter."""
    base = Path(tempfile.mkdtemp(prefix="byokbot-unpriv-"))
    base.chmod(0o711)
    root = base / "work"
    root.mkdir()
    uid, gid = ensure_user()
    os.chown(root, uid, gid)
    return root


@pytest.fixture
async def uws(llm: FakeLLMServer, canaries: CanaryScan) -> AsyncIterator[Workspace]:
    """Like ``ws``, but every process started from it runs as the unprivileged user."""
    root = make_root()
    workspace = Workspace(root, command_prefix=unprivileged_prefix())
    workspace.configure(base_tables(root, llm))
    uid, gid = ensure_user()
    os.chown(workspace.config_path, uid, gid)
    workspace.env["HOME"] = str(root)
    canaries.watch_workspace(workspace)
    try:
        yield workspace
    finally:
        await workspace.close()
        shutil.rmtree(root.parent, ignore_errors=True)


async def attack(
    pids: Sequence[int],
    *,
    needles: Sequence[str] = (),
    names: Sequence[str] = (),
    webhook: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``scripts/attacker.py`` as the bot's uid against ``pids``; its JSON report."""
    job = {"pids": list(pids), "needles": list(needles), "names": list(names), "webhook": webhook}
    proc = await asyncio.create_subprocess_exec(
        *unprivileged_prefix(),
        sys.executable,
        str(SCRIPTS / "attacker.py"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd="/",
    )
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(job).encode()), 120)
    assert proc.returncode == 0, err.decode(errors="replace")
    report: dict[str, Any] = json.loads(out)
    return report


def session_pids(bot_pid: int, children: Sequence[int]) -> list[int]:
    return [bot_pid, *children]
