"""An operator's external agent program (``[agent] command``) speaking the line protocol."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from core.config import AgentSettings
from core.runtime.errors import ReplyFailed
from core.runtime.launch import CommandLauncher
from core.runtime.ports import Turn
from tests.fakes.agents import Rig, proc_file, rig

ECHO_AGENT = str(Path(__file__).parent / "fakes" / "echo_agent.py")
KEY = "sk-external-key-0123456789"


def _settings() -> AgentSettings:
    # The protocol, not the sandbox (tests/system/test_sandbox_escapes.py): this interpreter
    # may live where an agent's own uid cannot reach it (e.g. under /root).
    return AgentSettings(
        command=(sys.executable, ECHO_AGENT), request_timeout_seconds=5, sandbox="off"
    )


def _behave(r: Rig, system: str) -> None:
    current = r.profiles.get("t1")
    assert current is not None
    r.profiles.set(replace(current, persona=system))


async def test_configured_command_is_used_and_streams(tmp_path: Path) -> None:
    async with rig(tmp_path, settings=_settings()) as r:
        r.tenant("t1", KEY)
        chunks = [c async for c in r.sup.reply("t1", "chat", "one two three")]
        assert chunks == ["three ", "two ", "one"]
        assert [(u.input_tokens, u.output_tokens) for u in r.usage.records] == [(len(KEY), 3)]
        assert r.memory.turns[("t1", "chat")] == [
            Turn("user", "one two three"),
            Turn("assistant", "three two one"),
        ]
        assert r.fake.requests == []  # the external agent talks to whatever it likes


async def test_external_agent_gets_no_parent_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123456:parent-secret")
    async with rig(tmp_path, settings=_settings()) as r:
        r.tenant("t1", KEY)
        await r.say("t1", "hi")
        [pid] = r.pids("t1")
        environ, cmdline = proc_file(pid, "environ"), proc_file(pid, "cmdline")
        assert (b"parent-secret" in environ, KEY.encode() in environ + cmdline) == (False, False)


async def test_external_agent_errors_crashes_and_garbage(tmp_path: Path) -> None:
    launcher = CommandLauncher([sys.executable, ECHO_AGENT])
    async with rig(tmp_path, launcher=lambda: launcher, settings=_settings()) as r:
        r.tenant("t1", KEY)
        _behave(r, "fail")
        with pytest.raises(ReplyFailed) as failed:
            await r.say("t1", "x")
        _behave(r, "crash")
        stream = r.sup.reply("t1", "chat", "x")
        first = await anext(stream)
        with pytest.raises(ReplyFailed) as crashed:
            await anext(stream)
        _behave(r, "")
        recovered = await r.say("t1", "a b")
        _behave(r, "garbage")
        with pytest.raises(ReplyFailed) as garbage:
            await r.say("t1", "x")
        assert (failed.value.reason, failed.value.retry_after) == ("rate_limited", 5.0)
        assert (first, crashed.value.reason, recovered) == ("partial ", "crashed", "b a")
        _behave(r, "")
        with pytest.raises(ReplyFailed) as backing_off:  # the second crash in a row
            await r.say("t1", "x")
        r.now[0] += 1.0
        assert garbage.value.reason == "protocol"
        assert (backing_off.value.reason, backing_off.value.retry_after) == ("restarting", 1.0)
        assert await r.say("t1", "c d") == "d c"


async def test_cancel_reaches_the_external_agent(tmp_path: Path) -> None:
    async with rig(tmp_path, settings=_settings()) as r:
        r.tenant("t1", KEY)
        _behave(r, "slow")
        stream = r.sup.reply("t1", "chat", "x")
        first = await anext(stream)
        cancelled = await r.sup.cancel("t1", "chat")
        rest = [c async for c in asyncio_timeout_iter(stream)]
        assert (first, cancelled, rest) == ("thinking ", True, [])


async def asyncio_timeout_iter(stream: AsyncIterator[str]) -> AsyncIterator[str]:
    async with asyncio.timeout(5):
        async for item in stream:
            yield item


async def test_a_command_that_never_says_ready_fails_to_start(tmp_path: Path) -> None:
    settings = AgentSettings(
        command=(sys.executable, "-c", "import sys; sys.stdin.readline()"), sandbox="off"
    )
    async with rig(tmp_path, settings=settings) as r:
        r.tenant("t1", KEY)
        with pytest.raises(ReplyFailed) as info:
            await r.say("t1", "hi")
        assert info.value.reason == "start_failed"


async def test_a_missing_command_fails_to_start(tmp_path: Path) -> None:
    settings = AgentSettings(command=(str(tmp_path / "no-such-agent"),))
    async with rig(tmp_path / "rt", settings=settings) as r:
        r.tenant("t1", KEY)
        with pytest.raises(ReplyFailed) as info:
            await r.say("t1", "hi")
        assert (info.value.reason, r.sup.status()) == ("start_failed", [])
