"""The agent's tool loop and built-in tools, driven over the line protocol (component level).

The built-in worker's ``serve`` runs on a socket pair against the fake provider (both APIs,
scripted tool calls) and a loopback web site; tests speak protocol lines to it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from core.llm import ChatMessage
from core.runtime import protocol
from core.runtime.tools.web import is_public
from core.runtime.worker import serve
from core.secret import Secret
from tests.fakes.llm_server import FakeCall, FakeLLMServer, ToolStep, tool_results, tool_rounds
from tests.fakes.web_site import FakeWebSite

ALL_TOOLS = ("web_fetch", "remember", "recall", "forget")


def _no_hardening(_: protocol.Configure) -> None:
    return None


@dataclass
class Agent:
    to_agent: asyncio.StreamWriter
    from_agent: asyncio.StreamReader
    ids: int = 0

    def request(self, text: str, *, tools: tuple[str, ...] = ALL_TOOLS, **kw: Any) -> str:
        self.ids += 1
        rid = f"r{self.ids}"
        msg = protocol.Request(
            rid, (ChatMessage("user", text),), "model-large", "", 256, tools=tools, **kw
        )
        self.to_agent.write(protocol.encode(msg))
        return rid

    def cancel(self, rid: str) -> None:
        self.to_agent.write(protocol.encode(protocol.Cancel(rid)))

    async def until_end(self, rid: str, *, within: float = 20) -> list[protocol.Message]:
        events: list[protocol.Message] = []
        async with asyncio.timeout(within):
            while True:
                msg = protocol.decode(await self.from_agent.readline())
                if getattr(msg, "id", None) != rid:
                    continue
                events.append(msg)
                if isinstance(msg, protocol.Done | protocol.Error):
                    return events


@asynccontextmanager
async def agent(kind: str, base: str, tools: protocol.ToolConfig) -> AsyncIterator[Agent]:
    ours, theirs = socket.socketpair()
    a_in, a_out = await asyncio.open_unix_connection(sock=theirs, limit=protocol.MAX_LINE)
    s_in, s_out = await asyncio.open_unix_connection(sock=ours, limit=protocol.MAX_LINE)
    task = asyncio.create_task(serve(a_in, a_out, apply=_no_hardening))
    cfg = protocol.Configure(kind, base, Secret("sk-test"), ".", 20.0, 0, 0, tools=tools)
    s_out.write(protocol.encode(cfg))
    ready = protocol.decode(await s_in.readline())
    assert isinstance(ready, protocol.Ready) and ready.version == 2
    try:
        yield Agent(s_out, s_in)
    finally:
        s_out.write_eof()
        await asyncio.wait_for(task, 10)
        s_out.close()
        a_out.close()


def text_of(events: list[protocol.Message]) -> str:
    return "".join(e.text for e in events if isinstance(e, protocol.Chunk))


def once(step: Callable[[], ToolStep]) -> Callable[[str, list[dict[str, Any]]], ToolStep | None]:
    """A script that asks for tools in the first step only, then answers in text."""

    def script(kind: str, messages: list[dict[str, Any]]) -> ToolStep | None:
        return step() if tool_rounds(messages) == 0 else None

    return script


@pytest.fixture
async def site() -> AsyncIterator[FakeWebSite]:
    async with FakeWebSite() as s:
        yield s


def allow_site(**kw: Any) -> protocol.ToolConfig:
    return protocol.ToolConfig(allow_networks=("127.0.0.2/32",), **kw)


def base_of(llm: FakeLLMServer, kind: str) -> str:
    return llm.anthropic_url if kind == "anthropic" else llm.openai_url


@pytest.mark.parametrize("kind", ["anthropic", "openai-compatible"])
async def test_web_fetch_result_goes_back_and_the_answer_streams(
    kind: str, site: FakeWebSite
) -> None:
    async with FakeLLMServer() as llm:
        llm.tool_script = once(
            lambda: ToolStep([FakeCall("web_fetch", {"url": f"{site.url}/page"})], "Let me look.")
        )
        llm.reply = lambda m: "The page is about heliotropes."
        async with agent(kind, base_of(llm, kind), allow_site()) as a:
            events = await a.until_end(a.request("what is on that page?"))
    assert isinstance(events[-1], protocol.Done)
    assert text_of(events) == "Let me look.The page is about heliotropes."
    tools = [e for e in events if isinstance(e, protocol.ToolEvent)]
    assert [(t.name, t.state, t.target, t.failed) for t in tools] == [
        ("web_fetch", "start", "127.0.0.2", False),
        ("web_fetch", "end", "127.0.0.2", False),
    ]
    # Usage is reported for every upstream call: the tool step and the answer.
    assert len([e for e in events if isinstance(e, protocol.UsageReport)]) == 2
    assert len(llm.requests) == 2
    first, second = llm.requests
    names = [t.get("name") or t["function"]["name"] for t in first.body["tools"]]
    assert names == list(ALL_TOOLS)
    (result,) = tool_results(second.body)
    assert not result[2]
    assert "marzipan-lighthouse" in result[1]
    # Readable text: the article, not the script or the style sheet.
    assert "do not show this" not in result[1] and "color:red" not in result[1]
    assert site.requests[0][1]["Host"] == f"127.0.0.2:{site.port}"


@pytest.mark.parametrize("kind", ["anthropic", "openai-compatible"])
async def test_parallel_calls_and_errors_are_fed_back(kind: str, site: FakeWebSite) -> None:
    async with FakeLLMServer() as llm:
        llm.tool_script = once(
            lambda: ToolStep(
                [
                    FakeCall("web_fetch", {"url": f"{site.url}/plain"}, id="c-ok"),
                    FakeCall("web_fetch", {"url": "ftp://example.com/x"}, id="c-scheme"),
                    FakeCall("web_fetch", '{"url": "http://exa', id="c-json"),
                    FakeCall("no_such_tool", {}, id="c-unknown"),
                ]
            )
        )
        llm.reply = lambda m: "done"
        async with agent(kind, base_of(llm, kind), allow_site()) as a:
            events = await a.until_end(a.request("go"))
    assert text_of(events) == "done"
    results = {cid: (text, err) for cid, text, err in tool_results(llm.requests[1].body)}
    assert results["c-ok"] == (f"URL: {site.url}/plain\n\njust plain text", False)
    assert results["c-scheme"][1] and "http" in results["c-scheme"][0]
    assert results["c-json"][1] and "JSON" in results["c-json"][0]
    assert results["c-unknown"][1] and "no tool named" in results["c-unknown"][0]
    if kind == "anthropic":  # the flag itself, not only the words
        blocks = llm.requests[1].body["messages"][-1]["content"]
        assert [b.get("is_error", False) for b in blocks] == [False, True, True, True]
    assert site.paths() == ["/plain"]


async def test_ssrf_redirects_to_loopback_and_metadata_are_refused(site: FakeWebSite) -> None:
    async with FakeWebSite(host="127.0.0.1") as inner, FakeLLMServer() as llm:
        targets = {
            "c-loop": f"{site.url}/redirect?to=http://127.0.0.1:{inner.port}/page",
            "c-meta": f"{site.url}/redirect?to=http://169.254.169.254/latest/meta-data/",
            "c-v6": f"{site.url}/redirect?to=http://[::1]:{inner.port}/page",
            "c-mapped": f"{site.url}/redirect?to=http://[::ffff:127.0.0.1]:{inner.port}/page",
            "c-direct": f"http://127.0.0.1:{inner.port}/page",
            "c-private": "http://10.0.0.1/",
        }
        llm.tool_script = once(
            lambda: ToolStep([FakeCall("web_fetch", {"url": u}, id=c) for c, u in targets.items()])
        )
        llm.reply = lambda m: "refused"
        async with agent("anthropic", llm.anthropic_url, allow_site()) as a:
            events = await a.until_end(a.request("fetch them"))
        results = {cid: (text, err) for cid, text, err in tool_results(llm.requests[1].body)}
        assert inner.requests == []  # nothing ever connected to the loopback site
    assert isinstance(events[-1], protocol.Done)
    for cid in targets:
        text, err = results[cid]
        assert err and "private or internal address" in text, (cid, text)


async def test_without_the_allow_list_the_loopback_site_is_refused(site: FakeWebSite) -> None:
    async with FakeLLMServer() as llm:
        llm.tool_script = once(
            lambda: ToolStep([FakeCall("web_fetch", {"url": f"{site.url}/page"})])
        )
        async with agent("anthropic", llm.anthropic_url, protocol.ToolConfig()) as a:
            await a.until_end(a.request("fetch"))
    ((_, text, err),) = tool_results(llm.requests[1].body)
    assert err and "private or internal address" in text
    assert site.requests == []


async def test_size_and_time_bounds(site: FakeWebSite) -> None:
    async with FakeLLMServer() as llm:
        llm.tool_script = once(
            lambda: ToolStep(
                [
                    FakeCall("web_fetch", {"url": f"{site.url}/big"}, id="big"),
                    FakeCall("web_fetch", {"url": f"{site.url}/slow"}, id="slow"),
                ]
            )
        )
        cfg = allow_site(fetch_max_bytes=50_000, fetch_timeout=1.0, fetch_max_chars=5000)
        async with agent("anthropic", llm.anthropic_url, cfg) as a:
            await a.until_end(a.request("fetch"))
    results = {cid: (text, err) for cid, text, err in tool_results(llm.requests[1].body)}
    assert not results["big"][1] and results["big"][0].endswith("[truncated]")
    assert len(results["big"][0]) < 5200
    assert results["slow"][1] and "longer than 1 s" in results["slow"][0]


async def test_redirect_bound(site: FakeWebSite) -> None:
    hop = f"{site.url}/redirect?to={site.url}/page"
    async with FakeLLMServer() as llm:
        llm.tool_script = once(lambda: ToolStep([FakeCall("web_fetch", {"url": hop})]))
        async with agent("anthropic", llm.anthropic_url, allow_site(fetch_max_redirects=0)) as a:
            await a.until_end(a.request("fetch"))
    ((_, text, err),) = tool_results(llm.requests[1].body)
    assert err and "more than 0 redirects" in text


@pytest.mark.parametrize("kind", ["anthropic", "openai-compatible"])
async def test_max_steps_ends_the_reply_with_an_error(kind: str) -> None:
    async with FakeLLMServer() as llm:
        llm.tool_script = lambda k, m: ToolStep([FakeCall("recall", {})])
        async with agent(kind, base_of(llm, kind), protocol.ToolConfig(max_steps=2)) as a:
            events = await a.until_end(a.request("loop forever"))
    assert isinstance(events[-1], protocol.Error) and events[-1].code == "tool_steps"
    assert len(llm.requests) == 3  # two rounds of tools, then the step that asked again


async def test_notes_are_remembered_recalled_and_forgotten_as_events() -> None:
    async with FakeLLMServer() as llm:
        llm.tool_script = once(
            lambda: ToolStep(
                [
                    FakeCall("remember", {"fact": "Ada's cat is called Pixel"}),
                    FakeCall("recall", {"query": "dog"}),
                    FakeCall("forget", {"note_id": "n1"}),
                ]
            )
        )
        llm.reply = lambda m: "ok"
        async with agent("anthropic", llm.anthropic_url, protocol.ToolConfig()) as a:
            rid = a.request("x", notes=(protocol.Note("n1", "likes tea"),))
            events = await a.until_end(rid)
    notes = [e for e in events if isinstance(e, protocol.NoteEvent)]
    assert [(n.op, n.text) for n in notes] == [("add", "Ada's cat is called Pixel"), ("forget", "")]
    assert notes[1].note == "n1"
    remembered, recalled, forgot = tool_results(llm.requests[1].body)
    assert "Remembered" in remembered[1]
    assert "likes tea" in recalled[1] and "Pixel" in recalled[1]
    assert forgot[1] == "Forgotten."


async def test_tools_not_offered_are_not_sent_nor_run() -> None:
    async with FakeLLMServer() as llm:
        llm.tool_script = once(lambda: ToolStep([FakeCall("web_fetch", {"url": "http://x"})]))
        llm.reply = lambda m: "fine"
        async with agent("anthropic", llm.anthropic_url, protocol.ToolConfig()) as a:
            events = await a.until_end(a.request("x", tools=("recall",)))
    assert "tools" in llm.requests[0].body and len(llm.requests[0].body["tools"]) == 1
    ((_, text, err),) = tool_results(llm.requests[1].body)
    assert err and "no tool named" in text
    assert text_of(events) == "fine"


async def test_web_search_only_with_a_backend_and_through_it(site: FakeWebSite) -> None:
    site.search_results = [
        {"title": "Heliotrope", "url": "https://example.org/h", "content": "A plant."}
    ]
    async with FakeLLMServer() as llm:
        llm.tool_script = once(lambda: ToolStep([FakeCall("web_search", {"query": "heliotrope"})]))
        llm.reply = lambda m: "found"
        async with agent("anthropic", llm.anthropic_url, protocol.ToolConfig()) as a:
            await a.until_end(a.request("x", tools=("web_search",)))
        assert "tools" not in llm.requests[0].body  # no backend: not offered at all
        llm.requests.clear()
        cfg = protocol.ToolConfig(search_backend="searxng", search_url=site.url)
        async with agent("anthropic", llm.anthropic_url, cfg) as a:
            await a.until_end(a.request("x", tools=("web_search",)))
    ((_, text, err),) = tool_results(llm.requests[1].body)
    assert not err and text == "1. Heliotrope\nhttps://example.org/h\nA plant."
    assert site.paths() == ["/search?q=heliotrope&format=json"]


async def test_cancel_mid_loop_ends_with_done(site: FakeWebSite) -> None:
    async with FakeLLMServer() as llm:
        llm.tool_script = once(
            lambda: ToolStep([FakeCall("web_fetch", {"url": f"{site.url}/slow"})])
        )
        async with agent("anthropic", llm.anthropic_url, allow_site()) as a:
            rid = a.request("slow one")
            async with asyncio.timeout(10):
                while True:
                    msg = protocol.decode(await a.from_agent.readline())
                    if isinstance(msg, protocol.ToolEvent):
                        break
            a.cancel(rid)
            events = await a.until_end(rid, within=5)
    assert isinstance(events[-1], protocol.Done)
    assert len(llm.requests) == 1  # the loop stopped: no second step


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),  # noqa: S104 - an address to refuse, not a bind
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:169.254.169.254", False),
        ("224.0.0.1", False),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    ip = ipaddress.ip_address(address)
    assert is_public(ip) is public
    # The allow-list (tests only) admits exactly its networks; a mapped address is its IPv4.
    judged = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    assert is_public(ip, (str(ipaddress.ip_network(judged)),))


@pytest.mark.parametrize(("ok", "message"), [(True, "Scheduled. Next run: 09:00"), (False, "over")])
async def test_schedule_task_waits_for_the_verdict_and_the_model_sees_it(
    ok: bool, message: str
) -> None:
    async with FakeLLMServer() as llm:
        when = "2026-12-03T09:00"
        llm.tool_script = once(
            lambda: ToolStep([FakeCall("schedule_task", {"when": when, "prompt": "tea"})])
        )
        llm.reply = lambda m: "told"
        async with agent("anthropic", llm.anthropic_url, protocol.ToolConfig()) as a:
            rid = a.request("remind me", tools=("schedule_task",))
            async with asyncio.timeout(20):
                event = protocol.decode(await a.from_agent.readline())
                while not isinstance(event, protocol.TaskEvent):
                    event = protocol.decode(await a.from_agent.readline())
            assert (event.id, event.when, event.prompt) == (rid, when, "tea") and event.ref
            # An answer to another ref is not this task's verdict; the right one is.
            a.to_agent.write(protocol.encode(protocol.TaskResult(rid, "other", True, "no")))
            a.to_agent.write(protocol.encode(protocol.TaskResult(rid, event.ref, ok, message)))
            events = await a.until_end(rid)
    assert text_of(events) == "told"
    ((_, text, err),) = tool_results(llm.requests[1].body)
    assert (text, err) == (message, not ok)
