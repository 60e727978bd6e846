"""The real ``byokbot`` command: console chat end to end, admin, migrations, key rotation."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import texts
from bot.cli import main
from core.keys import fingerprint
from core.secret import Secret
from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer

ROOT = Path(__file__).resolve().parent.parent


def _byokbot() -> list[str]:
    script = Path(sys.executable).with_name("byokbot")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bot"]


def _config(tmp_path: Path, fake: FakeLLMServer) -> Path:
    """Providers point at the loopback fake; everything else is the default."""
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[providers.anthropic]
base_url = "{fake.anthropic_url}"
[providers.openai]
base_url = "{fake.openai_url}"
"""
    )
    return path


async def _run(
    args: list[str], cwd: Path, stdin: str = "", *, config: Path | None = None
) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOKBOT_")}
    env["PYTHONPATH"] = str(ROOT)
    if config is not None:
        env["BYOKBOT_CONFIG"] = str(config)
    proc = await asyncio.create_subprocess_exec(
        *_byokbot(),
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


async def test_console_chat_end_to_end(tmp_path: Path, fake: FakeLLMServer) -> None:
    config = _config(tmp_path, fake)
    key = anthropic_key()
    script = "\n".join(["/start", "1", "1", key, "hello there", "/key list", "/usage", ""])
    code, out, err = await _run(["chat"], tmp_path, script, config=config)
    assert code == 0, err
    assert texts.WELCOME.splitlines()[0] in out
    assert "[1] BYOK" in out
    assert texts.SIGNED_UP.format(plan="BYOK") in out
    assert (
        texts.KEY_STORED.format(fingerprint=fingerprint(Secret(key)), provider="Anthropic") in out
    )
    assert "echo: hello there" in out  # streamed by the tenant's own agent process
    assert "tokens (1 requests)" in out
    assert key not in out
    assert key not in err
    # The live check and the agent's request both carried the tenant's key, and only it.
    assert set(fake.keys()) == {key}
    assert [r.path for r in fake.requests] == ["/v1/models", "/v1/messages"]
    key_file = tmp_path / "data" / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    db = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("byokbot.db*"))
    assert key.encode() not in db

    # State survives a restart of the whole program, memory included.
    code, out, err = await _run(["chat"], tmp_path, "/status\nand again\n", config=config)
    assert code == 0, err
    assert f"Keys: anthropic {fingerprint(Secret(key))} (active)" in out
    assert "echo: and again" in out
    sent = fake.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]


async def test_admin_on_the_command_line(tmp_path: Path, fake: FakeLLMServer) -> None:
    config = _config(tmp_path, fake)
    # BYOK: without the metering proxy the managed plan is not offered.
    await _run(["chat"], tmp_path, f"/plan byok\n1\n{anthropic_key()}\n", config=config)
    code, out, err = await _run(["admin", "stats"], tmp_path, config=config)
    assert code == 0, err
    assert out.startswith("Tenants: 1 (active 1)")
    _, listed, _ = await _run(["admin", "tenants"], tmp_path, config=config)
    assert "console:local" in listed
    code, out, _ = await _run(["admin", "tenant", "nobody:0"], tmp_path, config=config)
    assert code == 1
    assert out.strip() == texts.ADMIN_NO_TENANT.format(ref="nobody:0")


async def test_master_key_rotation_and_retire(tmp_path: Path, fake: FakeLLMServer) -> None:
    config = _config(tmp_path, fake)
    key = anthropic_key()
    await _run(["chat"], tmp_path, f"/plan byok\n1\n{key}\n", config=config)
    code, out, err = await _run(["master-key", "rotate", "--retire"], tmp_path, config=config)
    assert code == 0, err
    assert out.splitlines() == [
        "master key v2 is primary; 1 data key(s) rewrapped",
        "retired master key v1",
    ]
    assert (tmp_path / "data" / "master.key").read_text().startswith("v2:")
    _, status, _ = await _run(["master-key", "status"], tmp_path, config=config)
    assert status.splitlines() == ["primary: v2; loaded: v2", "v2: 1 data key(s)"]
    _, after, _ = await _run(["chat"], tmp_path, "/key list\n", config=config)
    assert fingerprint(Secret(key)) in after


def test_one_line_errors_and_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # main() hardens the process it runs in, here the pytest worker, for good: RLIMIT_CORE's
    # hard limit cannot be raised again without CAP_SYS_RESOURCE, which root lacks on these
    # machines, and a later test's ``prlimit --core=unlimited`` failed. The bot's processes in
    # the system tests run the real one.
    monkeypatch.setattr("bot.cli.protect_process", lambda: None)
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


async def test_standalone_proxy_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    import signal
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "proxy.toml"
    config.write_text(f"[proxy]\nenabled = true\nport = {port}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOKBOT_")}
    env.update(
        PYTHONPATH=str(ROOT),
        BYOKBOT_CONFIG=str(config),
        BYOKBOT_PROXY_ANTHROPIC_KEY=anthropic_key(),
        BYOKBOT_PROXY_OPENAI_KEY="sk-proj-" + "a" * 40 + "T3BlbkFJ" + "b" * 40,
    )
    code, _, err = await _run(["db", "upgrade"], tmp_path, config=config)
    assert code == 0, err
    proc = await asyncio.create_subprocess_exec(
        *_byokbot(),
        "proxy",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
    assert line.decode().strip() == f"metering proxy on http://127.0.0.1:{port}"
    async with httpx.AsyncClient(trust_env=False) as client:
        r = await client.post(
            f"http://127.0.0.1:{port}/v1/messages",
            headers={"x-api-key": "byok-nope"},
            json={
                "model": "claude-sonnet-4-5",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    assert r.status_code == 401
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
