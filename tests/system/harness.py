"""The system-test harness: ``byokbot`` as a subprocess, its config and work dir, a canary scan.

Tests here talk to the program only over the wire (the loopback fakes in ``tests.fakes``) and
through what crosses the process boundary: exit code, stdout, stderr and the files under its
work dir. Nothing here imports ``bot``, ``core`` or ``adapters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
# Prefixes of variables the program reads; the test's own environment must not leak into it.
_PROGRAM_VARS = ("BYOKBOT_", "TELEGRAM_", "DISCORD_", "SLACK_")


def byokbot_command() -> list[str]:
    """The installed console script beside this interpreter (what an operator runs)."""
    script = Path(sys.executable).with_name("byokbot")
    if not script.exists():
        raise RuntimeError(f"{script} is missing: install the project (pip install -e .)")
    return [str(script)]


# ----- configuration -------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML for ``{"core": {...}, "proxy.models.\\"m\\"": {...}}`` (one level of values)."""
    lines: list[str] = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(v)}" for key, v in values.items())
        lines.append("")
    return "\n".join(lines)


def merge(base: dict[str, dict[str, Any]], extra: Mapping[str, Mapping[str, Any]]) -> None:
    for table, values in extra.items():
        base.setdefault(table, {}).update(values)


# ----- the process ---------------------------------------------------------------------------


@dataclass
class Result:
    """A finished command: exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.strip()]


@dataclass
class Workspace:
    """One byokbot installation: a work dir with ``config.toml``, its environment, its runs."""

    root: Path
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)
    processes: list[BotProcess] = field(default_factory=list)
    # Words run before the console script (``setpriv ...``, ``prlimit ...``); each execs the next,
    # so the pid is still byokbot's.
    command_prefix: list[str] = field(default_factory=list)
    _runs: int = 0

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    def configure(self, tables: Mapping[str, Mapping[str, Any]]) -> None:
        merge(self.tables, tables)
        self.config_path.write_text(to_toml(self.tables))

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_PROGRAM_VARS) and k not in PROXY_VARS
        }
        env.pop("PYTHONPATH", None)  # the installed package, as an operator has it
        env |= {"BYOKBOT_CONFIG": str(self.config_path), "PYTHONUNBUFFERED": "1"}
        env |= self.env
        if extra:
            env |= extra
        return env

    def _log_files(self, name: str) -> tuple[Path, Path]:
        self._runs += 1
        logs = self.root.parent / f"{self.root.name}-output"
        logs.mkdir(exist_ok=True)
        out = logs / f"{self._runs:02d}-{name}.stdout"
        err = logs / f"{self._runs:02d}-{name}.stderr"
        self.outputs += [out, err]
        return out, err

    async def start(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        stdin: int | None = asyncio.subprocess.DEVNULL,
        name: str | None = None,
    ) -> BotProcess:
        """Start ``byokbot <args>`` (default ``run``) in its own session; output goes to files."""
        argv = list(args or ("run",))
        out, err = self._log_files(name or argv[0])
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = await asyncio.create_subprocess_exec(
                *self.command_prefix,
                *byokbot_command(),
                *argv,
                cwd=self.root,
                env=self.environment(env),
                stdin=stdin,
                stdout=fo,
                stderr=fe,
                start_new_session=True,
            )
        bot = BotProcess(proc, out, err)
        self.processes.append(bot)
        return bot

    async def cli(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        input_text: str | None = None,
        within: float = 60,
    ) -> Result:
        """Run ``byokbot <args>`` to completion."""
        bot = await self.start(
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE if input_text is not None else None,
            name=args[0] if args else "run",
        )
        if input_text is not None:
            assert bot.proc.stdin is not None
            bot.proc.stdin.write(input_text.encode())
            await bot.proc.stdin.drain()
            bot.proc.stdin.close()
        code = await bot.wait(within)
        return Result(code, bot.stdout(), bot.stderr())

    async def close(self) -> None:
        for bot in self.processes:
            await bot.kill()

    def files(self) -> Iterable[Path]:
        """Every file the program wrote (work dir, agents' dirs, its output)."""
        for path in sorted(self.root.rglob("*")):
            if path.is_file():
                yield path
        yield from (p for p in self.outputs if p.exists())


@dataclass
class BotProcess:
    """A running ``byokbot``; its output is read from the files it writes to."""

    proc: asyncio.subprocess.Process
    out_path: Path
    err_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def output(self) -> str:
        return self.stdout() + self.stderr()

    async def wait_output(self, pattern: str, within: float = 20.0) -> re.Match[str]:
        """Wait until stdout+stderr matches ``pattern`` (a regex); fail if the process ends."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + within
        while True:
            found = rx.search(self.output())
            if found:
                return found
            if self.proc.returncode is not None:
                raise AssertionError(
                    f"byokbot exited ({self.proc.returncode}) before {pattern!r}:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {within}s:\n{self.output()}")
            await asyncio.sleep(0.05)

    async def wait(self, within: float = 30.0) -> int:
        try:
            return await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            await self.kill()
            raise AssertionError(
                f"byokbot still running after {within}s:\n{self.output()}"
            ) from None

    async def terminate(self, within: float = 30.0) -> int:
        """SIGTERM, as a service manager stops it; returns the exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait(within)

    async def kill(self) -> None:
        """SIGKILL the whole session (the bot and every agent it forked)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def children(self) -> list[int]:
        """Pids of the processes in this bot's session other than the bot itself."""
        out: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.pid:
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            # fields: state ppid pgrp session ...
            if len(fields) > 3 and int(fields[3]) == self.pid and fields[0] != "Z":
                out.append(int(entry.name))
        return out


async def eventually(
    predicate: Callable[[], bool] | Callable[[], Awaitable[bool]],
    within: float = 10.0,
    message: str | Callable[[], str] = "",
) -> None:
    """Poll ``predicate`` (plain or async) until it holds, or fail with ``message``."""
    deadline = time.monotonic() + within

    async def holds() -> bool:
        result = predicate()
        # An async predicate returns a coroutine, which is always truthy: await it.
        return bool(await result) if inspect.isawaitable(result) else bool(result)

    while not await holds():
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(text or "condition not met in time")
        await asyncio.sleep(0.05)


# ----- canaries ------------------------------------------------------------------------------


@dataclass
class CanaryScan:
    """Secrets fed to the program in one test, and the places none of them may appear."""

    canaries: list[str] = field(default_factory=list)
    sources: list[Callable[[], Iterable[tuple[str, bytes]]]] = field(default_factory=list)

    def add(self, *secrets: str) -> None:
        self.canaries.extend(s for s in secrets if s)

    def watch(self, source: Callable[[], Iterable[tuple[str, bytes]]]) -> None:
        """``source()`` yields ``(where, bytes)`` pairs to search after the test."""
        self.sources.append(source)

    def watch_workspace(self, ws: Workspace) -> None:
        def files() -> Iterable[tuple[str, bytes]]:
            for path in ws.files():
                with contextlib.suppress(OSError):
                    yield str(path), path.read_bytes()

        self.watch(files)

    def findings(self) -> list[str]:
        needles: list[tuple[str, bytes]] = []
        for canary in self.canaries:
            needles.append((canary, canary.encode()))
            # A token's secret half alone is a leak too (``<id>:<secret>`` bot tokens).
            _, sep, tail = canary.partition(":")
            if sep and len(tail) >= 20:
                needles.append((canary, tail.encode()))
        found: list[str] = []
        for source in self.sources:
            for where, data in source():
                for canary, needle in needles:
                    if needle in data:
                        found.append(f"{canary[:10]}… in {where}")
        return found


def calls_text(calls: Sequence[Any]) -> bytes:
    """Every recorded platform call, rendered once, for the canary scan."""
    return "\n".join(repr(c) for c in calls).encode()
