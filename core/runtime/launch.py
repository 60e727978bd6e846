"""How agent processes are started: forked from a pre-loaded template, or an external command.

Both hand the supervisor the same thing, a ``WorkerHandle``: a pid, a stream pair speaking the
line protocol, and ways to wait for and kill the process. Neither puts a secret in argv or the
environment: the key travels later, in the ``configure`` line over the pipe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.context import ForkServerContext, ForkServerProcess
from pathlib import Path
from typing import Final, Protocol

from core.runtime import protocol
from core.runtime.prestart import TEMPLATE_MODULES, configure_template
from core.runtime.sandbox import SandboxError, Spec

SANDBOX_TIMEOUT: Final = 10.0

log = logging.getLogger(__name__)


class WorkerHandle(Protocol):
    """A started agent process."""

    pid: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def wait(self) -> int | None:
        """Wait for the process to exit; its exit code (negative for a signal) when known."""
        ...

    def kill(self) -> None:
        """SIGKILL the process (no-op when it is gone)."""
        ...


class Launcher(Protocol):
    """Starts one agent process with ``workdir`` as its home."""

    async def warm(self) -> None:
        """Do the one-time start-up work now (at bot start), not on the first agent."""
        ...

    async def launch(self, workdir: Path, spec: Spec | None = None) -> WorkerHandle:
        """Start the agent, confined by ``spec`` (None: unconfined, for tests and benchmarks).

        Raises:
            SandboxError: a layer ``spec`` requires could not be applied; the agent is gone.
        """
        ...

    def close(self) -> None:
        """Release the launcher's own resources (threads, the template's socket)."""
        ...


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return  # already gone; the reaper has or will collect it


class _ForkedHandle:
    def __init__(
        self,
        proc: ForkServerProcess,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pool: ThreadPoolExecutor,
    ) -> None:
        if proc.pid is None:
            raise RuntimeError("the agent process has no pid after start")
        self.pid: int = proc.pid
        self.reader = reader
        self.writer = writer
        self._proc = proc
        self._pool = pool
        self._waiter: asyncio.Future[int | None] | None = None
        self.confine_seconds = 0.0  # how long the agent took to confine itself (benchmarks)

    async def wait(self) -> int | None:
        if self._waiter is None:
            self._waiter = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._waiter)

    async def _wait(self) -> int | None:
        # The fork server writes the exit status to the sentinel (then closes it), so it turns
        # readable; reading it and reaping happen on the launcher's single thread because
        # multiprocessing's bookkeeping is not thread-safe.
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        sentinel = self._proc.sentinel
        loop.add_reader(sentinel, readable)
        try:
            await exited
        finally:
            loop.remove_reader(sentinel)
        return await loop.run_in_executor(self._pool, self._reap)

    def _reap(self) -> int | None:
        self._proc.join(1.0)
        code = self._proc.exitcode
        if code is not None:
            self._proc.close()  # frees the sentinel fd
        return code

    def kill(self) -> None:
        _kill(self.pid)


class ForkserverLauncher:
    """Forks workers from ``multiprocessing``'s fork server with the worker modules preloaded.

    The template is started once, on the first launch (``warm()`` starts it early). Starting a
    process talks to the fork server synchronously, so it runs on one dedicated thread.
    """

    def __init__(self) -> None:
        self._ctx: ForkServerContext = multiprocessing.get_context("forkserver")
        configure_template()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-launch")

    async def warm(self) -> None:
        """Start the template and wait until it has loaded, so no agent pays for that.

        A throwaway child is forked with its pipe already closed: it exits at once, and its
        exit status says whether the template really preloaded the worker (the fork server
        skips a preload it cannot import, silently).
        """
        from core.runtime.worker import probe_template

        proc = self._ctx.Process(target=probe_template, daemon=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, proc.start)
        await loop.run_in_executor(self._pool, proc.join)
        code = proc.exitcode
        await loop.run_in_executor(self._pool, proc.close)
        if code != 0:
            log.warning(
                "agent template did not preload %s (exit %s): every agent start will import "
                "it, ~200 ms; check sys.path",
                TEMPLATE_MODULES,
                code,
            )

    async def launch(self, workdir: Path, spec: Spec | None = None) -> WorkerHandle:
        from core.runtime.worker import run_forked

        parent, child = socket.socketpair()
        try:
            proc = self._ctx.Process(
                target=run_forked, args=(child, spec), daemon=True, name="byokbot-agent"
            )
            await asyncio.get_running_loop().run_in_executor(self._pool, proc.start)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(
            sock=parent, limit=protocol.MAX_AGENT_LINE
        )
        handle = _ForkedHandle(proc, reader, writer, self._pool)
        if spec is not None:
            # The agent says it is confined before anything (its key above all) is sent to it.
            try:
                async with asyncio.timeout(SANDBOX_TIMEOUT):
                    line = await reader.readline()
                report = json.loads(line) if line else {"error": "exited while confining itself"}
            except (TimeoutError, ValueError):
                report = {"error": "no sandbox report"}
            if not isinstance(report, dict) or report.get("type") != "sandbox":
                report = {"error": str(report.get("error", "bad sandbox report"))}
            if "error" in report:
                writer.close()
                handle.kill()
                await handle.wait()
                raise SandboxError(str(report.get("layer", "sandbox")), str(report["error"]))
            handle.confine_seconds = float(report.get("seconds", 0.0))
        return handle

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class _CommandHandle:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        if proc.stdout is None or proc.stdin is None:
            raise RuntimeError("the agent command was started without pipes")
        self.pid: int = proc.pid
        self.reader: asyncio.StreamReader = proc.stdout
        self.writer: asyncio.StreamWriter = proc.stdin
        self._proc = proc

    async def wait(self) -> int | None:
        return await self._proc.wait()

    def kill(self) -> None:
        if self._proc.returncode is None:
            _kill(self.pid)


class CommandLauncher:
    """Runs an operator-supplied agent program (``[agent] command``) with piped stdin/stdout.

    The program starts in its working directory with a minimal environment (``PATH`` and
    whatever ``env`` adds, never the bot's), and its stderr goes to ``agent.log`` there.
    """

    def __init__(self, command: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
        if not command:
            raise ValueError("an agent command needs at least the program")
        self._command = tuple(command)
        self._env = {"PATH": os.defpath, **(env or {})}

    async def launch(self, workdir: Path, spec: Spec | None = None) -> WorkerHandle:
        os.makedirs(workdir, mode=0o700, exist_ok=True)
        log = os.open(workdir / "agent.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        command: tuple[str, ...] = self._command
        if spec is not None:
            if spec.uid is not None and spec.gid is not None:
                os.fchown(log, spec.uid, spec.gid)
            # Confined by a small launcher that then execs the program (Landlock, seccomp and
            # the uid survive exec): the bot's own process is threaded, so no preexec_fn.
            blob = json.dumps(_spec_json(spec))
            command = (sys.executable, "-I", "-c", _CONFINE, _confine_path(), blob, "--", *command)
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=workdir,
                env=self._env,
                limit=protocol.MAX_AGENT_LINE,
                start_new_session=True,
            )
        finally:
            os.close(log)
        return _CommandHandle(proc)

    async def warm(self) -> None:
        return None  # every start is a fresh exec; there is nothing to prepare

    def close(self) -> None:
        return None


# Isolated (-I: no PYTHONPATH, no user site, no current directory on the path), with only
# this program's and libseccomp's binding's directories added: whatever the bot's own
# environment put on its path, nothing of it runs before the agent is confined.
_CONFINE: Final = (
    "import sys; sys.path[:0] = sys.argv[1].split(':'); "
    "from core.runtime.confine import main; sys.exit(main(sys.argv[2:]))"
)


def _confine_path() -> str:
    import importlib.util

    dirs = [str(Path(__file__).resolve().parents[2])]
    seccomp = importlib.util.find_spec("pyseccomp")
    if seccomp is not None and seccomp.origin:
        dirs.append(str(Path(seccomp.origin).resolve().parent))
    return ":".join(dirs)


def _spec_json(spec: Spec) -> dict[str, object]:
    import dataclasses

    return dataclasses.asdict(spec)


def python_command(*args: str) -> list[str]:
    """``[sys.executable, *args]``: the running interpreter, for tests and ``-m`` commands."""
    return [sys.executable, *args]
