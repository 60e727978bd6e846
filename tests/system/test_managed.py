"""The managed plan through ``byokbot run``: the metering proxy runs inside the bot's process.

A person picks Managed and talks to the agent without ever holding a provider key; the fake
upstream sees the platform's key only; ``/usage`` shows the allowance; over the cap the person
gets the cap's words. A failure of the proxy or of the platform's key is told as our problem,
never as the person's provider's. With the proxy off, Managed is neither offered nor accepted.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.harness import CanaryScan, Workspace, calls_text
from tests.system.managed_support import (
    OPENAI_KEY_ENV,
    enable_proxy,
    free_port,
    key_was_asked,
    sign_up_managed,
    start_bot,
    streamed_parts,
)
from tests.system.people import TelegramPerson

CAP = 400
OUR_SIDE = r"(?i)our side"
YOUR_PROVIDER = r"(?i)your provider|your key|api key"


def _reply(messages: list[dict[str, Any]]) -> str:
    """Long enough to arrive in several paced parts; ``everything`` asks for a huge answer."""
    last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if "everything" in str(last):
        return "all " * 600 + "done"
    return f"echo: {last} " + " ".join(f"word{i}" for i in range(25))


async def test_managed_journey_through_the_proxy_in_byokbot_run(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    keys = enable_proxy(tg_ws, llm, canaries, token_cap=CAP)
    # CAP is sized for plain requests: tool definitions would add ~600 tokens to each
    # request's estimate (the agent's tools are metered in tests/system/test_agent_tools.py).
    tg_ws.configure(
        {
            "plans.managed.tools": {
                "web_fetch": False,
                "web_search": False,
                "notes": False,
                "tasks": False,
            }
        }
    )
    llm.reply = _reply
    await start_bot(tg_ws, telegram)

    await sign_up_managed(ada)
    ada.send("hello agent")
    final = _reply([{"role": "user", "content": "hello agent"}])
    await ada.wait_text("^echo: hello agent .*word24$", within=30)
    assert streamed_parts(ada, final), "the reply arrived in one piece, not streamed"
    # The upstream saw the platform's key and nothing else; nobody asked the person for one.
    assert llm.keys() == [keys.anthropic]
    assert llm.requests[-1].body["model"] == "model-large"
    assert not key_was_asked(ada)

    ada.send("/usage")
    usage = await ada.wait_text("Plan allowance this month")
    assert f"of {CAP:,} tokens" in usage

    # The other curated model goes through the OpenAI-compatible upstream, same platform.
    ada.send("/reset")
    await ada.wait_text("(?i)forgotten")
    ada.send("/model")
    await ada.wait_text("(?i)choose one")
    ada.press("model-small")
    await ada.wait_text("Model set to model-small")
    ada.send("via openai")
    await ada.wait_text("^echo: via openai .*word24$", within=30)
    assert llm.requests[-1].path == "/v1/chat/completions"
    assert llm.keys()[-1] == keys.openai

    # One huge answer spends the whole allowance; the next message gets the cap's words.
    llm.chunk_delay = 0
    ada.send("/reset")
    ada.send("tell me everything")
    await ada.wait_text("all all .*done$", within=30)
    asked = len(llm.requests)
    ada.send("one more please")
    refusal = await ada.wait_text("(?i)you've used this month's allowance", within=30)
    assert len(llm.requests) == asked, "a request over the cap reached the upstream"
    assert "provider" not in refusal.lower()
    ada.send("/usage")
    await ada.wait_text(
        rf"Plan allowance this month: [\d,]+ of {CAP:,} tokens.*\((1\d\d|[2-9]\d\d)%\)"
    )
    assert not key_was_asked(ada)
    assert set(llm.keys()) == {keys.anthropic, keys.openai}
    # The agents' scoped proxy tokens are stored hashed: none is written out in clear.
    token = re.compile(rb"byok-[A-Za-z0-9_-]{40,}")
    assert not [str(f) for f in tg_ws.files() if token.search(f.read_bytes())]
    assert not token.search(calls_text(telegram.calls))


async def test_proxy_and_platform_key_failures_are_told_as_ours(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    keys = enable_proxy(tg_ws, llm, canaries)
    await start_bot(tg_ws, telegram)
    await sign_up_managed(ada)

    llm.fail(500, times=1)  # the upstream breaks: the proxy answers 500
    ada.send("first try")
    said = await ada.wait_text(OUR_SIDE, within=30)
    assert not _blames_the_person(said), said

    llm.valid_keys = {"not-the-platform-key"}  # the provider refuses the platform's key
    ada.send("second try")
    await _wait_count(ada, OUR_SIDE, 2)
    assert not any(_blames_the_person(t) for t in ada.texts()), ada.texts()
    assert set(llm.keys()) == {keys.anthropic}

    llm.valid_keys = None  # fixed by the operator: the same person is answered again
    ada.send("third try")
    await ada.wait_text("echo: third try", within=30)
    assert not key_was_asked(ada)


async def test_an_unreachable_proxy_is_told_as_ours(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    llm: FakeLLMServer,
    ada: TelegramPerson,
    canaries: CanaryScan,
) -> None:
    # Agents are sent to public_url, where nothing listens: the proxy is unreachable for them.
    enable_proxy(tg_ws, llm, canaries, proxy={"public_url": f"http://127.0.0.1:{free_port()}"})
    await start_bot(tg_ws, telegram)
    await sign_up_managed(ada)
    ada.send("anyone there?")
    said = await ada.wait_text(OUR_SIDE, within=30)
    assert not _blames_the_person(said), said
    assert llm.keys() == []


async def test_without_the_proxy_managed_is_not_offered_nor_accepted(
    tg_ws: Workspace,
    telegram: FakeTelegramServer,
    ada: TelegramPerson,
) -> None:
    await start_bot(tg_ws, telegram)
    ada.send("/start")
    await ada.wait_text("Pick a plan")
    labels = [label for _, label, _ in ada.buttons()]
    assert any("BYOK" in label for label in labels), labels
    assert not any("Managed" in label for label in labels), labels
    assert "Managed" not in ada.texts()[-1]

    ada.send("/plan managed")
    refusal = await ada.wait_text("(?i)(isn't|not) available")
    assert "/plan byok" in refusal
    assert "Welcome aboard" not in "\n".join(ada.texts())
    ada.send("/plan")
    await ada.wait_text("Choose a plan")
    assert "Managed" not in ada.texts()[-1]


def _blames_the_person(text: str) -> bool:
    return bool(re.search(YOUR_PROVIDER, text))


async def _wait_count(person: TelegramPerson, pattern: str, n: int) -> None:
    rx = re.compile(pattern)
    try:
        await person.server.wait_for(
            lambda: sum(bool(rx.search(t)) for t in person.texts()) >= n, 30
        )
    except TimeoutError:
        raise AssertionError("\n---\n".join(person.texts())) from None


async def test_a_proxy_that_cannot_start_stops_start_up_with_one_line(
    tg_ws: Workspace, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    keys = enable_proxy(tg_ws, llm, canaries)
    port = tg_ws.tables["proxy"]["port"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = await tg_ws.cli("run", within=60)
    assert result.returncode != 0
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("byokbot: error:")]
    assert len(errors) == 1 and f"cannot listen on 127.0.0.1:{port}" in errors[0], result.stderr

    del tg_ws.env[OPENAI_KEY_ENV]  # a platform key the proxy needs is not set
    result = await tg_ws.cli("run", within=60)
    assert result.returncode != 0
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("byokbot: error:")]
    assert len(errors) == 1 and OPENAI_KEY_ENV in errors[0], result.stderr
    assert keys.openai not in result.output
