"""Helpers for tests that judge ``byokbot`` by its exit code and the one line it prints."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Mapping

from tests.system.harness import Result, Workspace

# A routine log record (what ``byokbot run`` prints at log_level INFO); anything else on
# stderr is something the operator has to read.
# Routine records, and the agent template's sandbox status as it loads (a start that got as
# far as serving before it failed may have begun loading it).
_ROUTINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO) |agent sandbox: )")
ERROR_LINE = re.compile(r"^byokbot: error: \S.*$")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def run_to_exit(
    ws: Workspace, *args: str, within: float = 30.0, env: Mapping[str, str] | None = None
) -> tuple[Result, float]:
    """``byokbot <args>`` with stdin closed (as under a service manager); result and seconds."""
    began = time.monotonic()
    bot = await ws.start(*args, env=env, name=args[0] if args else "run")
    code = await bot.wait(within)
    return Result(code, bot.stdout(), bot.stderr()), time.monotonic() - began


def problem_lines(result: Result) -> list[str]:
    """stderr without routine INFO records: what the operator sees as the outcome."""
    return [ln for ln in result.stderr.splitlines() if ln.strip() and not _ROUTINE.match(ln)]


def assert_one_error(result: Result, pattern: str, *, code: int | None = None) -> str:
    """Non-zero exit (or ``code``), no traceback, and one ``byokbot: error:`` line matching."""
    shown = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.output, shown
    if code is None:
        assert result.returncode != 0, shown
    else:
        assert result.returncode == code, shown
    lines = problem_lines(result)
    assert len(lines) == 1, shown
    assert ERROR_LINE.match(lines[0]), shown
    assert re.search(pattern, lines[0]), shown
    return lines[0]
