"""The tenant's MCP servers: their tools, offered beside the built-in ones.

The MCP client runs here, in the tenant's confined agent: the server's token arrives in
``configure`` like the API key (never in a request, never in the control plane's memory past
the profile), and the agent's sandbox lets it connect only to the ports of its own servers.

A request offers a server as ``mcp:<name>``; for each, this module connects (streamable
HTTP, the official ``mcp`` SDK, bearer token), lists the tools and offers them to the model
as ``<name>__<tool>``. The session lives for the request. A tool the server does not annotate
``readOnlyHint`` asks the person first (a ``confirm`` event; ``ctx.confirm``), and a refusal
or a timeout goes back to the model as an error. The SDK is imported by the template (see
``worker._LAZY_IMPORTS``), so an agent that never uses MCP pays nothing for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from core.llm import ToolSpec
from core.runtime import protocol
from core.runtime.tools import Tool, ToolContext, ToolFailed

if TYPE_CHECKING:
    from mcp import Client
    from mcp.types import Tool as McpToolInfo

log = logging.getLogger(__name__)

PREFIX: Final = "mcp:"
MAX_TOOLS: Final = 64
"""Tools taken from one server (a model's tool list has to stay readable)."""
_SAFE: Final = re.compile(r"[^A-Za-z0-9_-]")


def model_name(server: str, tool: str) -> str:
    """The name the model sees: ``<server>__<tool>``, in the characters both APIs accept."""
    return _SAFE.sub("_", f"{server}__{tool}")[:64]


class McpTool:
    """One tool of one MCP server."""

    def __init__(self, server: str, info: McpToolInfo, client: Client) -> None:
        self.server = server
        self.tool = info.name
        self.name = model_name(server, info.name)
        self.offered_as = PREFIX + server  # the name tool events carry (what was offered)
        hints = info.annotations
        self.read_only = bool(hints is not None and hints.read_only_hint)
        schema = dict(info.input_schema) if info.input_schema else {"type": "object"}
        self.spec = ToolSpec(self.name, (info.description or info.name)[:1000], schema)
        self._client = client

    def target(self, args: Mapping[str, Any]) -> str:
        return self.tool

    def available(self, config: protocol.ToolConfig) -> bool:
        return True

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> str:
        from mcp.shared.exceptions import MCPError
        from mcp.types import TextContent

        if not self.read_only:
            shown = json.dumps(dict(args), ensure_ascii=False)[:500]
            if ctx.confirm is None or not await ctx.confirm(self.offered_as, self.tool, shown):
                raise ToolFailed(
                    "the person did not allow this call (denied, or no answer in time); "
                    "do not retry it unless they ask"
                )
        try:
            result = await self._client.call_tool(self.tool, dict(args))
        except MCPError as exc:
            raise ToolFailed(f"the MCP server refused the call: {str(exc)[:500]}") from None
        parts = [c.text for c in result.content if isinstance(c, TextContent)]
        if not parts and result.structured_content is not None:
            parts.append(json.dumps(result.structured_content, ensure_ascii=False))
        text = "\n".join(parts) or "(the tool returned no text)"
        if result.is_error:
            raise ToolFailed(text)
        return text


async def connect(
    servers: Iterable[protocol.McpServer],
    offered: Iterable[str],
    stack: contextlib.AsyncExitStack,
    *,
    allowed: tuple[str, ...] = (),
    http_timeout: float = 30.0,
) -> dict[str, Tool]:
    """Open a session to every offered server (closed with ``stack``); their tools by name.

    A server that cannot be reached (or refuses the token) is left out and logged by class;
    the model answers without its tools.
    """
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from core.runtime.tools.web import resolve_checked

    wanted = {n[len(PREFIX) :] for n in offered if n.startswith(PREFIX)}
    tools: dict[str, Tool] = {}
    for server in servers:
        if server.name not in wanted:
            continue
        url = httpx2.URL(server.url)
        try:
            # The same rule as web_fetch: no private or internal address (after DNS).
            await resolve_checked(
                url.host, url.port or (443 if url.scheme == "https" else 80), allowed
            )
            http = await stack.enter_async_context(
                httpx2.AsyncClient(
                    headers={"Authorization": f"Bearer {server.token.reveal()}"},
                    timeout=httpx2.Timeout(http_timeout),
                    trust_env=False,
                )
            )
            client = await stack.enter_async_context(
                Client(streamable_http_client(server.url, http_client=http), mode="legacy")
            )
            listed = await client.list_tools()
        except ToolFailed as exc:
            log.warning("MCP server %s refused: %s", server.name, exc)
            continue
        except Exception as exc:  # noqa: BLE001 - any failure of a remote server is logged, not fatal
            log.warning("MCP server %s unavailable (%s)", server.name, type(exc).__name__)
            continue
        for info in listed.tools[:MAX_TOOLS]:
            tool = McpTool(server.name, info, client)
            tools[tool.name] = tool
    return tools
