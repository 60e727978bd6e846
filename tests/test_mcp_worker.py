"""MCP tools through the built-in agent worker (the line protocol), against the fake server.

Every reply ends with exactly one ``error`` or ``done``, also when an MCP session is open: the
SDK's anyio task groups wrap whatever crosses them in an ``ExceptionGroup``, which once left
the reply without an end (the supervisor waited for ever). And an MCP session imports nothing
the fork-server template has not imported already (a confined agent may not be able to read
the standard library to import it then).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from core.llm import ChatMessage
from core.runtime import protocol
from core.runtime.worker import serve
from core.secret import Secret
from tests.fakes.llm_server import FakeCall, FakeLLMServer, ToolStep, tool_results, tool_rounds
from tests.fakes.mcp_server import FakeMcpServer

ALLOW = ("127.0.0.3/32",)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def shop() -> AsyncIterator[FakeMcpServer]:
    async with FakeMcpServer(token="tok-" + "y" * 30) as s:
        yield s


def _no_hardening(_: protocol.Configure) -> None:
    return None


class Agent:
    def __init__(self, to_agent: asyncio.StreamWriter, from_agent: asyncio.StreamReader) -> None:
        self.to_agent, self.from_agent, self.ids = to_agent, from_agent, 0

    def request(self, text: str) -> str:
        self.ids += 1
        rid = f"r{self.ids}"
        msg = protocol.Request(
            rid, (ChatMessage("user", text),), "model-large", "", 256, tools=("mcp:shop",)
        )
        self.to_agent.write(protocol.encode(msg))
        return rid

    def send(self, msg: protocol.ToAgent) -> None:
        self.to_agent.write(protocol.encode(msg))

    async def next_event(self, rid: str, *, within: float = 20) -> protocol.Message:
        async with asyncio.timeout(within):
            while True:
                msg = protocol.decode(await self.from_agent.readline())
                if getattr(msg, "id", None) == rid:
                    return msg

    async def until_end(self, rid: str, *, within: float = 20) -> list[protocol.Message]:
        events: list[protocol.Message] = []
        while True:
            events.append(await self.next_event(rid, within=within))
            if isinstance(events[-1], protocol.Done | protocol.Error):
                return events


@asynccontextmanager
async def agent(llm: FakeLLMServer, shop: FakeMcpServer, **tools: Any) -> AsyncIterator[Agent]:
    ours, theirs = socket.socketpair()
    a_in, a_out = await asyncio.open_unix_connection(sock=theirs, limit=protocol.MAX_LINE)
    s_in, s_out = await asyncio.open_unix_connection(sock=ours, limit=protocol.MAX_LINE)
    task = asyncio.create_task(serve(a_in, a_out, apply=_no_hardening))
    cfg = protocol.Configure(
        "anthropic",
        llm.anthropic_url,
        Secret("sk-test"),
        ".",
        20.0,
        0,
        0,
        tools=protocol.ToolConfig(allow_networks=ALLOW, **tools),
        mcp=(protocol.McpServer("shop", shop.url, Secret(shop.token)),),
        confirm_timeout=10.0,
    )
    s_out.write(protocol.encode(cfg))
    assert isinstance(protocol.decode(await s_in.readline()), protocol.Ready)
    try:
        yield Agent(s_out, s_in)
    finally:
        s_out.write_eof()
        await asyncio.wait_for(task, 10)
        s_out.close()
        a_out.close()


def _lookup_once(kind: str, messages: list[dict[str, Any]]) -> ToolStep | None:
    if tool_rounds(messages):
        return None
    return ToolStep([FakeCall("shop__lookup_order", {"number": "42"})])


async def test_a_read_only_tool_runs_and_its_result_goes_back(shop: FakeMcpServer) -> None:
    async with FakeLLMServer() as llm:
        llm.tool_script = _lookup_once
        async with agent(llm, shop) as a:
            events = await a.until_end(a.request("status of 42?"))
    assert isinstance(events[-1], protocol.Done)
    started = [e for e in events if isinstance(e, protocol.ToolEvent)]
    assert [(e.name, e.state) for e in started] == [("mcp:shop", "start"), ("mcp:shop", "end")]
    ((_, text, is_error),) = tool_results(llm.requests[-1].body)
    assert "shipped" in text and not is_error
    assert shop.calls == [("lookup_order", {"number": "42"})]


async def test_too_many_steps_with_a_session_open_ends_with_an_error(shop: FakeMcpServer) -> None:
    async with FakeLLMServer() as llm:
        llm.tool_script = lambda k, m: ToolStep([FakeCall("shop__lookup_order", {"number": "1"})])
        async with agent(llm, shop, max_steps=1) as a:
            events = await a.until_end(a.request("loop"))
    last = events[-1]
    assert isinstance(last, protocol.Error) and last.code == "tool_steps"


async def test_a_provider_error_after_a_tool_ends_with_that_error(shop: FakeMcpServer) -> None:
    async with FakeLLMServer() as llm:
        llm.tool_script = _lookup_once
        async with agent(llm, shop) as a:
            rid = a.request("status of 42?")
            while not isinstance(ev := await a.next_event(rid), protocol.ToolEvent):
                pass
            llm.fail(401, error_type="authentication_error", message="invalid x-api-key")
            events = await a.until_end(rid)
    last = events[-1]
    assert isinstance(last, protocol.Error) and last.code == "invalid_key"
    assert ev.name == "mcp:shop"


async def test_cancel_while_a_confirmation_waits_ends_with_done(shop: FakeMcpServer) -> None:
    async with FakeLLMServer() as llm:
        llm.tool_script = lambda k, m: ToolStep([FakeCall("shop__cancel_order", {"number": "7"})])
        async with agent(llm, shop) as a:
            rid = a.request("cancel 7")
            while not isinstance(ask := await a.next_event(rid), protocol.Confirm):
                pass
            assert (ask.name, ask.tool) == ("mcp:shop", "cancel_order")
            a.send(protocol.Cancel(rid))
            events = await a.until_end(rid)
    assert isinstance(events[-1], protocol.Done)
    assert shop.calls == []


async def test_a_denied_call_is_an_error_the_model_sees(shop: FakeMcpServer) -> None:
    async with FakeLLMServer() as llm:
        llm.tool_script = lambda k, m: (
            None if tool_rounds(m) else ToolStep([FakeCall("shop__cancel_order", {"number": "7"})])
        )
        async with agent(llm, shop) as a:
            rid = a.request("cancel 7")
            while not isinstance(ask := await a.next_event(rid), protocol.Confirm):
                pass
            a.send(protocol.Confirmed(rid, ask.call, False))
            events = await a.until_end(rid)
    assert isinstance(events[-1], protocol.Done)
    ((_, text, is_error),) = tool_results(llm.requests[-1].body)
    assert is_error and "did not allow" in text
    assert shop.calls == []


_SESSION = """
import asyncio, contextlib, importlib, json, sys
from core.runtime import worker
for name in worker._LAZY_IMPORTS:
    importlib.import_module(name)
from core.runtime import protocol
from core.runtime.tools import ToolContext, mcp
from core.secret import Secret
before = set(sys.modules)

async def main():
    async def yes(*_):
        return True
    server = protocol.McpServer("shop", sys.argv[1], Secret(sys.argv[2]))
    async with contextlib.AsyncExitStack() as stack:
        tools = await mcp.connect([server], ["mcp:shop"], stack, allowed=("127.0.0.3/32",))
        ctx = ToolContext(protocol.ToolConfig(), None, [], None, "r1", confirm=yes)
        return [await t.run({"number": "42"}, ctx) for t in tools.values()]

results = asyncio.run(main())
print(json.dumps({"results": results, "new": sorted(set(sys.modules) - before)}))
"""


async def test_an_mcp_session_imports_nothing_the_template_has_not(shop: FakeMcpServer) -> None:
    # A separate interpreter: this one has imported half the world already.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SESSION,
        shop.url,
        shop.token,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    got = json.loads(out.decode().strip().splitlines()[-1])
    assert len(got["results"]) == 2 and any("shipped" in r for r in got["results"])
    assert got["new"] == [], "add these to core.runtime.worker._LAZY_IMPORTS"
