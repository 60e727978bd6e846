"""The agent's tools through ``byokbot run`` on Telegram (issue 14 items 1, 2, 4).

A loopback web site on 127.0.0.2 is the only address web_fetch may reach
(``[tools.web_fetch] allow_networks``, empty in production); the fake provider scripts the
model's tool calls; everything is asserted on the Telegram and provider fakes and the files.
"""

from __future__ import annotations

import re
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.canaries import anthropic_key
from tests.fakes.llm_server import (
    FakeCall,
    FakeLLMServer,
    ToolStep,
    echo_reply,
    tool_results,
    tool_rounds,
)
from tests.fakes.telegram_server import FakeTelegramServer
from tests.fakes.web_site import FakeWebSite
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.people import TelegramPerson
from tests.system.telegram_steps import restart_bot, sign_up_with_key, start_bot

ECHO_AGENT = Path(__file__).resolve().parents[1] / "fakes" / "echo_agent.py"


@pytest.fixture
async def site() -> AsyncIterator[FakeWebSite]:
    async with FakeWebSite() as s:
        yield s


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return str(m["content"])
    return ""


def status_messages(telegram: FakeTelegramServer, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return [
        int(c.message_id)
        for c in telegram.calls
        if c.method == "sendMessage"
        and c.status == 200
        and c.message_id is not None
        and rx.search(str(c.params.get("text", "")))
    ]


def deleted(telegram: FakeTelegramServer, message_id: int) -> bool:
    return any(int(c["message_id"]) == message_id for c in telegram.calls_to("deleteMessage"))


async def signed_up(ws: Workspace, ada: TelegramPerson, canaries: CanaryScan) -> str:
    key = anthropic_key()
    canaries.add(key)
    await start_bot(ws)
    await sign_up_with_key(ada, key)
    return key


async def test_web_fetch_shows_a_status_line_replaced_by_the_answer(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    site: FakeWebSite,
    canaries: CanaryScan,
) -> None:
    tg_ws.configure(
        {
            "tools.web_fetch": {"allow_networks": ["127.0.0.2/32"]},
            # The sandbox lets a fetching agent reach 80 and 443; the test site has its own port.
            "agent": {"extra_connect_ports": [site.port]},
        }
    )
    page = f"{site.url}/page"

    def script(kind: str, messages: list[dict[str, Any]]) -> ToolStep | None:
        if tool_rounds(messages) == 0 and "page" in last_user_text(messages):
            return ToolStep([FakeCall("web_fetch", {"url": page})])
        return None

    def answer(messages: list[dict[str, Any]]) -> str:
        results = [b for m in messages if isinstance(m.get("content"), list) for b in m["content"]]
        seen = "marzipan-lighthouse" in str(results)
        return "The secret word is marzipan-lighthouse." if seen else "no page"

    llm.tool_script, llm.reply = script, answer
    llm.chunk_delay = 0.3  # the status line must be visible before the answer streams
    # A secret printed on the page reaches the model as the tool's result, and nothing else:
    # not the chat, the logs, the database or any file (the canary scan after the test).
    leaked = anthropic_key()
    canaries.add(leaked)
    site.page_extra = f"Someone pasted a key here: {leaked}"
    key = await signed_up(tg_ws, ada, canaries)

    ada.send(f"what is the secret word on {page} ?")
    await eventually(lambda: status_messages(telegram, r"🔎 reading 127\.0\.0\.2…"), within=30)
    (status,) = status_messages(telegram, r"🔎 reading 127\.0\.0\.2…")
    await ada.wait_text("The secret word is marzipan-lighthouse.", within=30)
    await eventually(lambda: deleted(telegram, status))
    assert not any("reading" in t for t in ada.texts())  # the answer took its place

    first, second = llm.requests[-2:]
    assert [t["name"] for t in first.body["tools"]][:1] == ["web_fetch"]
    ((_, text, is_error),) = tool_results(second.body)
    assert not is_error and "marzipan-lighthouse" in text and "do not show this" not in text
    assert leaked in text
    assert site.paths() == ["/page"]
    # The page was fetched without the tenant's key or any credential.
    (headers,) = [h for _, h in site.requests]
    assert key not in str(headers) and "Authorization" not in headers and "x-api-key" not in headers


async def test_redirect_to_the_metadata_address_is_refused(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    site: FakeWebSite,
    canaries: CanaryScan,
) -> None:
    tg_ws.configure(
        {
            "tools.web_fetch": {"allow_networks": ["127.0.0.2/32"]},
            # The sandbox lets a fetching agent reach 80 and 443; the test site has its own port.
            "agent": {"extra_connect_ports": [site.port]},
        }
    )
    async with FakeWebSite(host="127.0.0.1") as inner:
        urls = [
            f"{site.url}/redirect?to=http://169.254.169.254/latest/meta-data/",
            f"{site.url}/redirect?to=http://127.0.0.1:{inner.port}/page",
        ]

        def script(kind: str, messages: list[dict[str, Any]]) -> ToolStep | None:
            if tool_rounds(messages) == 0 and "fetch" in last_user_text(messages):
                return ToolStep([FakeCall("web_fetch", {"url": u}) for u in urls])
            return None

        llm.tool_script = script
        llm.reply = lambda m: "I could not read that page."
        await signed_up(tg_ws, ada, canaries)
        ada.send("fetch the metadata please")
        await ada.wait_text("I could not read that page.", within=30)
        results = tool_results(llm.requests[-1].body)
        assert len(results) == 2
        assert all(err and "private or internal address" in text for _, text, err in results)
        assert inner.requests == []
    assert site.paths() == [p.removeprefix(site.url) for p in urls]


async def test_a_note_survives_reset_and_restart_and_is_erased_with_memory(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    fact = "Ada's cat is called Pixelberry"

    def script(kind: str, messages: list[dict[str, Any]]) -> ToolStep | None:
        said = last_user_text(messages)
        if tool_rounds(messages):
            return None
        if said.startswith("remember"):
            return ToolStep([FakeCall("remember", {"fact": fact})])
        if said.startswith("what is my cat"):
            return ToolStep([FakeCall("recall", {"query": "cat"})])
        return None

    def answer(messages: list[dict[str, Any]]) -> str:
        results = " ".join(
            str(b.get("content"))
            for m in messages
            if isinstance(m.get("content"), list)
            for b in m["content"]
        )
        if "Pixelberry" in results:
            return "Your cat is Pixelberry."
        return "Noted." if "Remembered" in results else "I don't know."

    llm.tool_script, llm.reply = script, answer
    await signed_up(tg_ws, ada, canaries)
    ada.send("remember that my cat is called Pixelberry")
    await ada.wait_text("Noted.", within=30)

    ada.send("/reset")
    await ada.wait_text("(?i)forgot|fresh|reset")
    ada.send("what is my cat called?")
    await ada.wait_text("Your cat is Pixelberry.", within=30)
    # The note went to the model as the recall tool's result, in the new conversation.
    assert any("Pixelberry" in t for _, t, _ in tool_results(llm.requests[-1].body))
    db = tg_ws.root / "data" / "byokbot.db"
    assert b"Pixelberry" not in db.read_bytes()  # stored encrypted only

    bot = tg_ws.processes[-1]
    await restart_bot(tg_ws, bot)
    ada.send("what is my cat called, after the restart?")
    await ada.wait_text("after the restart|Your cat is Pixelberry", within=30)
    await eventually(lambda: sum(t == "Your cat is Pixelberry." for t in ada.texts()) >= 2)

    ada.send("/memory")
    await ada.wait_text(re.escape("1. " + fact))
    ada.press("Forget 1")
    await ada.wait_text("Forgotten")
    ada.send("/memory")
    await ada.wait_text("hasn't noted anything")
    ada.send("what is my cat called now?")
    await eventually(lambda: sum(t == "I don't know." for t in ada.texts()) >= 1, within=30)
    with sqlite3.connect(db) as conn:
        (blob,) = conn.execute("SELECT blob FROM agent_notes").fetchone()
    assert b"Pixelberry" not in bytes(blob)


async def test_stop_mid_loop_cancels_the_tool_and_clears_the_status(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    site: FakeWebSite,
    canaries: CanaryScan,
) -> None:
    tg_ws.configure(
        {
            "tools.web_fetch": {"allow_networks": ["127.0.0.2/32"], "timeout_seconds": 60},
            "agent": {"extra_connect_ports": [site.port]},
        }
    )

    def script(kind: str, messages: list[dict[str, Any]]) -> ToolStep | None:
        if tool_rounds(messages) == 0 and "slow" in last_user_text(messages):
            return ToolStep([FakeCall("web_fetch", {"url": f"{site.url}/slow"})])
        return None

    llm.tool_script = script
    await signed_up(tg_ws, ada, canaries)
    before = len(llm.requests)
    ada.send("read the slow page")
    await eventually(lambda: status_messages(telegram, "🔎 reading"), within=30)
    (status,) = status_messages(telegram, "🔎 reading")
    await eventually(lambda: "/slow" in site.paths())
    ada.send("/stop")
    await ada.wait_text("^Stopped.$")
    await eventually(lambda: deleted(telegram, status))
    assert len(llm.requests) == before + 1  # no step after the cancelled tool
    ada.send("still there?")
    await ada.wait_text("echo: still there?", within=30)


async def test_a_status_line_the_person_deleted_does_not_cost_the_answer(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    """Ada deletes the "looking through my notes" line; the next tool's line and the answer
    still come (the edit Telegram refuses is not the end of the reply)."""

    def script(kind: str, messages: list[dict[str, Any]]) -> ToolStep | None:
        if "tidy" not in last_user_text(messages):
            return None
        rounds = tool_rounds(messages)
        if rounds == 0:
            return ToolStep([FakeCall("recall", {})])
        if rounds == 1:
            return ToolStep([FakeCall("remember", {"fact": "Ada tidies up"})])
        return None

    llm.tool_script = script
    llm.reply = lambda _m: "All tidy."
    llm.chunk_delay = 0.3  # the second tool starts well after the first one's line is shown
    await signed_up(tg_ws, ada, canaries)
    ada.send("tidy up my notes")
    await eventually(lambda: status_messages(telegram, "looking through my notes"), within=30)
    (status,) = status_messages(telegram, "looking through my notes")
    telegram.user_deletes(ada.user_id, status)
    await ada.wait_text("All tidy.", within=30)
    assert status_messages(telegram, "noting that down")  # posted anew, not edited
    assert not any("went wrong" in t for t in ada.texts())


async def test_max_tool_steps_bounds_a_reply(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    tg_ws.configure({"agent": {"max_tool_steps": 2}})

    def script(kind: str, messages: list[dict[str, Any]]) -> ToolStep | None:
        return ToolStep([FakeCall("recall", {})]) if "loop" in last_user_text(messages) else None

    llm.tool_script = script
    await signed_up(tg_ws, ada, canaries)
    before = len(llm.requests)
    ada.send("loop forever")
    await ada.wait_text("more tool steps than allowed", within=30)
    assert len(llm.requests) - before == 3


async def test_plan_switch_turns_tools_off(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    tg_ws.configure({"plans.byok.tools": {"web_fetch": False, "notes": True}})
    await signed_up(tg_ws, ada, canaries)
    ada.send("hello")
    await ada.wait_text("echo: hello", within=30)
    names = [t["name"] for t in llm.requests[-1].body["tools"]]
    # no web_fetch, no web_search backend
    assert names == ["remember", "recall", "forget", "schedule_task"]


async def test_a_version_1_external_agent_still_works(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    # Protocol compatibility, not confinement (test_sandbox_escapes.py runs a command
    # confined): this interpreter lives under /root, which an agent's own uid cannot read.
    tg_ws.configure({"agent": {"command": [sys.executable, str(ECHO_AGENT)], "sandbox": "off"}})
    await signed_up(tg_ws, ada, canaries)
    ada.send("one two three")
    await ada.wait_text("^three two one$", within=30)


async def test_managed_plan_meters_every_step_and_the_catalog_says_which_models_take_tools(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    site: FakeWebSite,
    canaries: CanaryScan,
) -> None:
    from tests.system.managed_support import enable_proxy, query, sign_up_managed

    enable_proxy(tg_ws, llm, canaries)
    tg_ws.configure(
        {
            'proxy.models."model-small"': {"tools": False},
            "tools.web_fetch": {"allow_networks": ["127.0.0.2/32"]},
            "agent": {"extra_connect_ports": [site.port]},
        }
    )

    def script(kind: str, messages: list[dict[str, Any]]) -> ToolStep | None:
        if tool_rounds(messages) == 0 and "page" in last_user_text(messages):
            return ToolStep([FakeCall("web_fetch", {"url": f"{site.url}/plain"})])
        return None

    llm.tool_script = script
    llm.reply = lambda m: "read it"
    await start_bot(tg_ws)
    await sign_up_managed(ada)
    ada.send("read the page")
    await ada.wait_text("^read it$", within=30)
    assert len(llm.requests) == 2 and "tools" in llm.requests[0].body
    assert tool_results(llm.requests[1].body)[0][1].endswith("just plain text")

    def metered() -> tuple[int, int] | None:
        budget = query(tg_ws, "SELECT tokens_spent, tokens_reserved FROM budgets")
        usage = query(
            tg_ws, "SELECT SUM(input_tokens + output_tokens), SUM(requests) FROM usage_daily"
        )
        if not budget or not usage or usage[0][1] != 2 or budget[0][1] != 0:
            return None
        return budget[0][0], usage[0][0]

    await eventually(lambda: metered() is not None, within=30)
    spent, used = metered() or (0, 0)
    # Both upstream calls were settled by the proxy: its spend is the two steps' tokens.
    assert spent == used > 0

    ada.send("/model")
    await ada.wait_text("(?i)choose one")
    ada.press("model-small")
    await ada.wait_text("Model set to model-small")
    llm.reply = echo_reply
    before = len(llm.requests)
    ada.send("hello small model")
    await ada.wait_text("echo: hello small model", within=30)
    assert len(llm.requests) == before + 1
    assert llm.requests[-1].path == "/v1/chat/completions"
    assert "tools" not in llm.requests[-1].body  # the catalog says model-small takes none


async def test_web_search_through_the_operators_brave_backend(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    site: FakeWebSite,
    canaries: CanaryScan,
) -> None:
    from tests.canaries import search_key

    key = search_key()
    canaries.add(key)
    site.brave_key = key
    site.search_results = [
        {"title": "Heliotrope", "url": "https://example.org/h", "content": "A plant."}
    ]
    tg_ws.env["BRAVE_SEARCH_KEY"] = key
    tg_ws.configure(
        {
            "tools.web_search": {
                "backend": "brave",
                "url": f"{site.url}/res/v1/web/search",
                "key_env": "BRAVE_SEARCH_KEY",
            }
        }
    )

    def script(kind: str, messages: list[dict[str, Any]]) -> ToolStep | None:
        if tool_rounds(messages) == 0 and "search" in last_user_text(messages):
            return ToolStep([FakeCall("web_search", {"query": "heliotrope"})])
        return None

    llm.tool_script = script
    llm.reply = lambda m: "It is a plant."
    await signed_up(tg_ws, ada, canaries)
    ada.send("search for heliotrope")
    await eventually(lambda: status_messages(telegram, "🔎 searching the web for “heliotrope”…"))
    await ada.wait_text("^It is a plant.$", within=30)
    assert "web_search" in [t["name"] for t in llm.requests[-2].body["tools"]]
    ((_, text, err),) = tool_results(llm.requests[-1].body)
    assert not err and text == "1. Heliotrope\nhttps://example.org/h\nA plant."
    assert site.paths() == ["/res/v1/web/search?q=heliotrope&count=5"]
    assert key not in str(llm.requests[-1].body)  # the operator's key never reaches the model


async def test_a_search_backend_whose_key_is_missing_stops_start_up(
    tg_ws: Workspace, llm: FakeLLMServer
) -> None:
    tg_ws.configure(
        {
            "tools.web_search": {
                "backend": "brave",
                "url": "https://api.search.brave.com/res/v1/web/search",
                "key_env": "BRAVE_SEARCH_KEY_UNSET",
            }
        }
    )
    bot = await tg_ws.start("run")
    code = await bot.wait(within=30)
    assert code != 0
    assert "BRAVE_SEARCH_KEY_UNSET" in bot.output()
