"""MCP servers through ``byokbot run`` on Telegram (issue 14 item 3).

A fake MCP server (the official SDK, streamable HTTP, on 127.0.0.3) checks the bearer token;
the fake provider scripts the model's tool calls. Asserted on the Telegram, provider and MCP
fakes only. The token is a canary: it may cross the wire only in the MCP fake's Authorization
header, never in a file (the database, logs), process output, a chat message or a provider
request.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeCall, FakeLLMServer, ToolStep, tool_results, tool_rounds
from tests.fakes.mcp_server import FakeMcpServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import sign_up_with_key, start_bot


def mcp_token() -> str:
    """A GitHub-style personal access token (``ghp_`` + 36 alphanumerics)."""
    return "ghp_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(36))


@pytest.fixture
async def shop(canaries: CanaryScan) -> AsyncIterator[FakeMcpServer]:
    token = mcp_token()
    canaries.add(token)
    async with FakeMcpServer(token=token) as server:
        yield server


def _last_user(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return str(m["content"])
    return ""


async def test_mcp_server_added_used_with_confirmation_and_removed(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    shop: FakeMcpServer,
    canaries: CanaryScan,
) -> None:
    tg_ws.configure(
        {
            "tools.web_fetch": {"allow_networks": ["127.0.0.3/32"]},
            "mcp": {"confirm_timeout_seconds": 20},
        }
    )

    # What the model was sent (messages, tool results, tool specs) and what the MCP server's
    # tools were called with. Not the provider's key header: the API key belongs there.
    def requests() -> Iterable[tuple[str, bytes]]:
        for r in llm.requests:
            yield f"provider request {r.path}", json.dumps(r.body).encode()
        yield "MCP tool calls", repr(shop.calls).encode()

    canaries.watch(requests)

    def script(kind: str, messages: list[dict[str, Any]]) -> ToolStep | None:
        said = _last_user(messages)
        if tool_rounds(messages):
            return None
        if "status" in said:
            return ToolStep([FakeCall("shop__lookup_order", {"number": "42"})])
        if "cancel" in said:
            return ToolStep([FakeCall("shop__cancel_order", {"number": "42"})])
        return None

    def answer(messages: list[dict[str, Any]]) -> str:
        results = [b for m in messages if isinstance(m.get("content"), list) for b in m["content"]]
        seen = str(results)
        if "shipped" in seen:
            return "Your order ships Friday."
        if "is cancelled" in seen:
            return "Done: order 42 is cancelled."
        if "did not allow" in seen:
            return "OK, I left the order alone."
        return "plain answer"

    llm.tool_script, llm.reply = script, answer
    key = anthropic_key()
    canaries.add(key)
    await start_bot(tg_ws)
    await sign_up_with_key(ada, key)

    # Bad input gets a clear answer.
    ada.send("/mcp add shop ftp://nowhere")
    await ada.wait_text("isn't a URL I can use")

    ada.send("/mcp add Shop! https://example.com/mcp")
    await ada.wait_text("can't be a server name")
    ada.send("/mcp rotate shop")
    await ada.wait_text("You have no MCP server named shop")

    ada.send(f"/mcp add shop {shop.url}")
    await ada.wait_text("MCP server shop added")
    token_message = ada.reply_to_prompt(shop.token)
    await ada.wait_text("I deleted your message with the token")
    await ada.wait_text("Token saved for MCP server shop: …")
    assert any(int(c["message_id"]) == token_message for c in telegram.calls_to("deleteMessage"))
    ada.send("/mcp")
    await ada.wait_text(r"• shop — http://127\.0\.0\.3:\d+/mcp — token …")

    # The read-only tool runs without a question.
    ada.send("what is the status of order 42?")
    await ada.wait_text("Your order ships Friday.", within=30)
    assert shop.calls == [("lookup_order", {"number": "42"})]
    assert not any(label == "Allow" for _, label, _ in ada.buttons())
    first = next(r for r in llm.requests if r.body.get("tools"))
    names = [t["name"] for t in first.body["tools"]]
    assert "shop__lookup_order" in names and "shop__cancel_order" in names

    # The write tool waits for Allow.
    ada.send("please cancel order 42")
    await ada.wait_text("wants to run cancel_order on MCP server shop", within=30)
    assert [c[0] for c in shop.calls] == ["lookup_order"]
    ada.press("Allow")
    await ada.wait_text("Done: order 42 is cancelled.", within=30)
    await ada.wait_text("✅ Allowed.")
    assert [c[0] for c in shop.calls] == ["lookup_order", "cancel_order"]

    # Deny: the tool does not run and the model is told so.
    ada.send("cancel order 42 again")
    await eventually(
        lambda: sum(1 for _, label, _ in ada.buttons() if label == "Deny") >= 2, within=30
    )
    ada.press("Deny")
    await ada.wait_text("OK, I left the order alone.", within=30)
    assert [c[0] for c in shop.calls] == ["lookup_order", "cancel_order"]
    ((_, text, is_error),) = tool_results(llm.requests[-1].body)
    assert is_error or text.startswith("Error:")
    assert "did not allow" in text

    # Rotation: the server now takes only the new token, and the agent uses it.
    old_token, new_token = shop.token, mcp_token()
    canaries.add(new_token)

    def prompts() -> int:
        return sum(1 for t in ada.texts() if "Paste the access token for MCP server shop" in t)

    ada.send("/mcp rotate shop")
    await eventually(lambda: prompts() == 2)
    shop.token = new_token
    ada.reply_to_prompt(new_token)
    rotated = await ada.wait_text("Token rotated for MCP server shop: …")
    assert new_token[-4:] in rotated and old_token[-4:] not in rotated
    before = shop.authorized
    ada.send("what is the status of order 42 now?")
    await eventually(
        lambda: sum(1 for t in ada.texts() if "Your order ships Friday." in t) >= 2, within=30
    )
    assert shop.authorized > before and shop.refused == 0
    assert [c[0] for c in shop.calls] == ["lookup_order", "cancel_order", "lookup_order"]

    # Removed: its tools are no longer offered.
    ada.send("/mcp remove shop")
    await ada.wait_text("MCP server shop removed")
    ada.send("hello there")
    await ada.wait_text("plain answer", within=30)
    names = [t["name"] for t in llm.requests[-1].body.get("tools", [])]
    assert not any(n.startswith("shop__") for n in names)
    assert shop.refused == 0
    # The provider only ever saw the person's API key, never the MCP token, as its key.
    assert {r.key for r in llm.requests} == {key}
    ada.send("/mcp")
    await ada.wait_text("No MCP servers yet")
