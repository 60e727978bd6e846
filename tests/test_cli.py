"""The real ``byokbot`` command: console chat end to end, admin, migrations, key rotation."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bot import texts
from bot.cli import main
from core.keys import fingerprint
from core.secret import Secret
from tests.canaries import anthropic_key

ROOT = Path(__file__).resolve().parent.parent


def _byokbot() -> list[str]:
    script = Path(sys.executable).with_name("byokbot")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bot"]


def _run(args: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOKBOT_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [*_byokbot(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


def test_console_chat_end_to_end(tmp_path: Path) -> None:
    key = anthropic_key()
    script = "\n".join(["/start", "1", "1", key, "hello there", "/key list", "/plan", ""])
    result = _run(["chat"], tmp_path, script)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert texts.WELCOME.splitlines()[0] in out
    assert "[1] BYOK ($15/mo)" in out
    assert texts.SIGNED_UP.format(plan="BYOK") in out
    assert (
        texts.KEY_STORED.format(fingerprint=fingerprint(Secret(key)), provider="Anthropic") in out
    )
    assert texts.AGENT_UNAVAILABLE["not_configured"] in out
    assert key not in out
    assert key not in result.stderr
    key_file = tmp_path / "data" / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    db = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("byokbot.db*"))
    assert key.encode() not in db

    # State survives a restart of the whole program.
    again = _run(["chat"], tmp_path, "/status\n")
    assert again.returncode == 0, again.stderr
    assert f"Keys: anthropic {fingerprint(Secret(key))} (active)" in again.stdout


def test_admin_on_the_command_line(tmp_path: Path) -> None:
    _run(["chat"], tmp_path, "/plan managed\n")
    ok = _run(["admin", "stats"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("Tenants: 1 (active 1)")
    listed = _run(["admin", "tenants"], tmp_path)
    assert "console:local" in listed.stdout
    bad = _run(["admin", "tenant", "nobody:0"], tmp_path)
    assert bad.returncode == 1
    assert bad.stdout.strip() == texts.ADMIN_NO_TENANT.format(ref="nobody:0")


def test_master_key_rotation_and_retire(tmp_path: Path) -> None:
    key = anthropic_key()
    _run(["chat"], tmp_path, f"/plan byok\n1\n{key}\n")
    rotated = _run(["master-key", "rotate", "--retire"], tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.splitlines() == [
        "master key v2 is primary; 1 data key(s) rewrapped",
        "retired master key v1",
    ]
    assert (tmp_path / "data" / "master.key").read_text().startswith("v2:")
    status = _run(["master-key", "status"], tmp_path)
    assert status.stdout.splitlines() == ["primary: v2; loaded: v2", "v2: 1 data key(s)"]
    after = _run(["chat"], tmp_path, "/key list\n")
    assert fingerprint(Secret(key)) in after.stdout


def test_one_line_errors_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[core]\nintake_ttl_seconds = -5\n")
    assert main(["--config", str(bad), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert err == "byokbot: error: bad.toml: [core] intake_ttl_seconds must be a positive integer\n"
    empty = tmp_path / "empty.key"
    empty.write_text("")
    os.chmod(empty, 0o600)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[core]\nmaster_key_file = "{empty}"\n')
    assert main(["--config", str(cfg), "db", "upgrade"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("byokbot: error: ") and err.count("\n") == 1
    good = tmp_path / "good.toml"
    good.write_text(
        f'[core]\ndatabase_url = "sqlite+aiosqlite:///{tmp_path}/g.db"\n'
        f'master_key_file = "{tmp_path}/g.key"\n'
    )
    assert main(["--config", str(good), "db", "upgrade"]) == 0
    assert capsys.readouterr().out == "database is up to date\n"
