"""``byokbot --help`` reads as plain text, and says what the exit codes mean."""

from __future__ import annotations

import pytest

from tests.system.cli_helpers import run_to_exit
from tests.system.harness import Workspace


async def test_help_is_plain_text(ws: Workspace) -> None:
    result, _ = await run_to_exit(ws, "--help")
    assert result.returncode == 0, result.output
    assert "``" not in result.stdout  # no reStructuredText markup
    assert result.stdout.startswith("usage: byokbot")
    for command in ("run", "chat", "proxy", "db", "master-key", "config", "admin"):
        assert f"    {command} " in result.stdout
    flat = " ".join(result.stdout.split())  # argparse wraps to the terminal's width
    assert "Exit status" in flat and "2 for a configuration problem" in flat


@pytest.mark.parametrize("command", ["run", "master-key", "admin"])
async def test_command_help_is_plain_text(ws: Workspace, command: str) -> None:
    result, _ = await run_to_exit(ws, command, "--help")
    assert result.returncode == 0, result.output
    assert "``" not in result.stdout
