"""A fake remote MCP server built with the official ``mcp`` SDK, on loopback (streamable HTTP).

It checks the bearer token of every request (401 otherwise, counted in ``refused``) and has
two tools: ``lookup_order`` (annotated ``readOnlyHint``) and ``cancel_order`` (not read-only:
byokbot must ask the person first). ``calls`` records each tool call that ran; assigning
``token`` rotates it (the old one is refused from the next request on). The server
runs under uvicorn in the test's event loop, on a socket bound by the fake itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass
class FakeMcpServer:
    token: str
    host: str = "127.0.0.3"
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refused: int = 0
    authorized: int = 0
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/mcp"

    def _app(self) -> ASGIApp:
        mcp = MCPServer("fake-orders")

        @mcp.tool(
            description="Look up an order's status by its number.",
            annotations=ToolAnnotations(read_only_hint=True),
        )
        def lookup_order(number: str) -> str:
            self.calls.append(("lookup_order", {"number": number}))
            return f"Order {number}: shipped on Tuesday, arriving Friday."

        @mcp.tool(
            description="Cancel an order by its number.",
            annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True),
        )
        def cancel_order(number: str) -> str:
            self.calls.append(("cancel_order", {"number": number}))
            return f"Order {number} is cancelled; the refund takes 3 days."

        inner = mcp.streamable_http_app(host=self.host)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                # Read per request: a test rotates the token by assigning ``token``.
                expected = f"Bearer {self.token}".encode()
                got = dict(scope["headers"]).get(b"authorization", b"")
                if not hmac.compare_digest(got, expected):
                    self.refused += 1
                    await send({"type": "http.response.start", "status": 401, "headers": []})
                    await send({"type": "http.response.body", "body": b"unauthorized"})
                    return
                self.authorized += 1
            await inner(scope, receive, send)

        return app

    async def __aenter__(self) -> FakeMcpServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._app(), log_level="warning", lifespan="on", access_log=False)
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, 10)
