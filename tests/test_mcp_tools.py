"""The agent's MCP client (``core.runtime.tools.mcp``) against the fake MCP server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from core.runtime import protocol
from core.runtime.tools import ToolContext, ToolFailed
from core.runtime.tools import mcp as mcp_tools
from core.secret import Secret
from tests.fakes.mcp_server import FakeMcpServer

ALLOW = ("127.0.0.3/32",)


@pytest.fixture
async def server() -> AsyncIterator[FakeMcpServer]:
    async with FakeMcpServer(token="tok-" + "x" * 30) as s:
        yield s


def _ctx(answers: list[bool], asked: list[tuple[str, str, str]]) -> ToolContext:
    async def emit(_: protocol.FromAgent) -> None:
        return None

    async def confirm(name: str, tool: str, arguments: str) -> bool:
        asked.append((name, tool, arguments))
        return answers.pop(0)

    return ToolContext(protocol.ToolConfig(), httpx.AsyncClient(), [], emit, "r1", confirm=confirm)


async def test_tools_are_listed_and_only_the_read_only_one_runs_unasked(
    server: FakeMcpServer,
) -> None:
    servers = (protocol.McpServer("shop", server.url, Secret(server.token)),)
    asked: list[tuple[str, str, str]] = []
    async with contextlib.AsyncExitStack() as stack:
        tools = await mcp_tools.connect(servers, ["mcp:shop"], stack, allowed=ALLOW)
        assert sorted(tools) == ["shop__cancel_order", "shop__lookup_order"]
        ctx = _ctx([False, True], asked)
        text = await tools["shop__lookup_order"].run({"number": "42"}, ctx)
        assert "shipped" in text and asked == []
        with pytest.raises(ToolFailed, match="did not allow"):
            await tools["shop__cancel_order"].run({"number": "42"}, ctx)
        assert [c[0] for c in server.calls] == ["lookup_order"]
        text = await tools["shop__cancel_order"].run({"number": "42"}, ctx)
        assert "cancelled" in text
        assert asked == [("mcp:shop", "cancel_order", '{"number": "42"}')] * 2
    assert server.refused == 0


async def test_a_wrong_token_or_a_private_address_offers_no_tools(server: FakeMcpServer) -> None:
    wrong = (protocol.McpServer("shop", server.url, Secret("nope")),)
    async with contextlib.AsyncExitStack() as stack:
        assert await mcp_tools.connect(wrong, ["mcp:shop"], stack, allowed=ALLOW) == {}
    assert server.refused >= 1
    right = (protocol.McpServer("shop", server.url, Secret(server.token)),)
    before = server.authorized
    async with contextlib.AsyncExitStack() as stack:
        # 127.0.0.3 is loopback: without the test's allowance it is refused before connecting.
        assert await mcp_tools.connect(right, ["mcp:shop"], stack) == {}
    assert server.authorized == before


def test_configure_carries_the_servers_and_confirm_round_trips() -> None:
    cfg = protocol.Configure(
        "anthropic",
        "http://x",
        Secret("k"),
        ".",
        5.0,
        0,
        0,
        mcp=(protocol.McpServer("shop", "https://h/mcp", Secret("tok")),),
        confirm_timeout=7.0,
    )
    back = protocol.decode(protocol.encode(cfg))
    assert isinstance(back, protocol.Configure)
    assert back.mcp == cfg.mcp and back.confirm_timeout == 7.0
    ask = protocol.Confirm("1", "c1", "mcp:shop", "cancel_order", '{"n": 1}')
    assert protocol.decode(protocol.encode(ask)) == ask
    answer = protocol.Confirmed("1", "c1", True)
    assert protocol.decode(protocol.encode(answer)) == answer
