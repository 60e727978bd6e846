"""A canary key fed through every agent path never shows in logs, crash output or replies."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from core.runtime.errors import ReplyFailed
from tests import canaries
from tests.fakes.agents import agent_logs, rig

CANARY = canaries.anthropic_key()
OPENAI_CANARY = canaries.openai_key()


async def test_canary_never_leaks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.INFO)
    seen: list[str] = []
    async with rig(tmp_path) as r:
        r.tenant("t1", CANARY)
        r.tenant("t2", OPENAI_CANARY, kind="openai-compatible")
        for tenant in ("t1", "t2"):
            seen.append(await r.say(tenant, "hello"))
            for failure in (
                {"status": 401, "error_type": "authentication_error"},
                {"status": 429, "error_type": "rate_limit_error", "retry_after": "3"},
                {"mode": "malformed"},
                {"mode": "stream_error", "error_type": "overloaded_error"},
            ):
                r.fake.fail(**failure)  # type: ignore[arg-type]
                with pytest.raises(ReplyFailed) as info:
                    await r.say(tenant, "again")
                seen += [str(info.value), repr(info.value), info.value.reason]
        # A crash mid-stream.
        r.fake.gate = asyncio.Event()
        stream = r.sup.reply("t1", "chat", "die")
        seen.append(await anext(stream))
        [pid] = r.pids("t1")
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ReplyFailed) as crashed:
            await anext(stream)
        seen.append(str(crashed.value))
        r.fake.gate.set()
        r.fake.gate = None
        # A worker that dies with a Python traceback (an unknown provider kind).
        current = r.profiles.get("t1")
        assert current is not None
        r.profiles.set(replace(current, provider_kind="gopher", key_id="k2"))
        with pytest.raises(ReplyFailed) as broken:
            await r.say("t1", "hi")
        seen.append(str(broken.value))
        seen += [repr(s) for s in r.sup.status()]
    crash_logs = agent_logs(tmp_path)
    assert "unknown provider kind" in crash_logs  # the crash output was captured ...
    assert r.fake.keys().count(CANARY) >= 5  # ... and the canary really went through
    haystack = "\n".join(seen) + caplog.text + crash_logs
    for secret in (CANARY, OPENAI_CANARY):
        assert (secret in haystack, secret[:24] in haystack, secret[-24:] in haystack) == (
            False,
            False,
            False,
        )
    assert broken.value.reason == "start_failed"
