"""Slack defects of issue 10, each through ``byokbot run`` against the strict fake Slack.

- 3: a key is taken only from the modal; a modal closed unsaved ends the intake, so the next
  DM reaches the agent; a refused value is answered inside the modal, never "send it again".
- 8: every text names Slack's own command syntax (``/byok key add …``), never ``/key add``.
- 11: a request refused for its signature leaves nothing of its body in the log; starting
  logs no "As you gave `client` as well, `token` will be unused".
"""

from __future__ import annotations

import re
import secrets

import pytest

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.slack_server import event_callback, message, signed_headers
from tests.system.harness import CanaryScan, Workspace
from tests.system.slack_fixtures import SlackSide, slack_fixture  # noqa: F401 - fixture
from tests.system.slack_people import HttpTransport, SlackPerson

MODES = pytest.mark.parametrize("mode", ["socket", "http"])
# A command named without Slack's ``/byok`` in front: ``/key add``, ``/start``...
BARE_COMMAND = re.compile(r"(?<![\w/])(?<!/byok )/(?!byok\b)[a-z][a-z_-]*\b")


async def _with_key(slack: SlackSide, ws: Workspace, mode: str, key: str) -> SlackPerson:
    """A person on the BYOK plan with ``key`` stored (through the modal)."""
    slack.configure(ws, mode)
    await slack.start(ws)
    ada = slack.person()
    await ada.command("start")
    await ada.wait_text("Pick a plan")
    await ada.press("BYOK")
    await ada.wait_text("Which provider")
    await ada.press("Anthropic")
    await ada.key_form()
    await ada.submit(key)
    await ada.wait_text("Key saved")
    return ada


# ----- defect 3 ------------------------------------------------------------------------------


@MODES
async def test_a_closed_key_modal_ends_the_intake(
    ws: Workspace, slack: SlackSide, llm: FakeLLMServer, canaries: CanaryScan, mode: str
) -> None:
    first = anthropic_key()
    canaries.add(first)
    ada = await _with_key(slack, ws, mode, first)

    await ada.command("key rotate anthropic")
    await ada.key_form()
    assert await ada.close_modal(), "the key modal must ask Slack for view_closed"

    question = "never mind, what is the capital of France?"
    asked = await ada.dm_app(question)
    await ada.wait_text(f"echo: {question}", within=30)
    assert llm.keys("anthropic")[-1] == first
    assert not any(c.get("ts") == asked for c in slack.fake.calls_to("chat.delete"))
    assert not any(re.search("(?i)valid .*key|send it again", t) for t in ada.texts())


@MODES
async def test_a_key_typed_in_the_dm_while_the_modal_is_open_is_a_leak(
    ws: Workspace, slack: SlackSide, llm: FakeLLMServer, canaries: CanaryScan, mode: str
) -> None:
    first, typed = anthropic_key(), anthropic_key()
    canaries.add(first, typed)
    ada = await _with_key(slack, ws, mode, first)

    await ada.command("key rotate anthropic")
    await ada.key_form()
    await ada.dm_app(typed)  # the person pastes the key into the DM instead of the modal
    await ada.wait_text("(?i)revoke it")
    assert not any("Key rotated" in t for t in ada.texts())

    await ada.dm_app("which key now?")
    await ada.wait_text("echo: which key now?", within=30)
    assert llm.keys("anthropic")[-1] == first
    assert all(typed not in str(r.body) and r.key != typed for r in llm.requests)


@MODES
async def test_a_refused_key_is_answered_inside_the_modal(
    ws: Workspace, slack: SlackSide, llm: FakeLLMServer, canaries: CanaryScan, mode: str
) -> None:
    first, second = anthropic_key(), anthropic_key()
    canaries.add(first, second)
    ada = await _with_key(slack, ws, mode, first)

    await ada.command("key rotate anthropic")
    modal = await ada.key_form()
    shown = len(ada.texts())
    ack = await ada.submit("sk-ant-not-a-real-key")
    assert ack.get("response_action") == "errors", ack
    error = " ".join(ack["errors"].values())
    assert "valid Anthropic key" in error
    assert not re.search("(?i)send it again", error), error
    assert ada.modal() is modal, "the modal stays open for another try"
    assert len(ada.texts()) == shown, "nothing about the refused value goes to the chat"

    await ada.submit(second)
    await ada.wait_text("Key rotated")
    await ada.dm_app("on the new key?")
    await ada.wait_text("echo: on the new key?", within=30)
    assert llm.keys("anthropic")[-1] == second


# ----- defect 8 ------------------------------------------------------------------------------


@MODES
async def test_texts_name_slack_commands(
    ws: Workspace, slack: SlackSide, llm: FakeLLMServer, canaries: CanaryScan, mode: str
) -> None:
    pasted = anthropic_key()
    canaries.add(pasted)
    slack.configure(ws, mode)
    await slack.start(ws)
    ada = slack.person()

    await ada.command("status")  # no account yet
    await ada.wait_text("(?i)don't have an agent")
    await ada.command("start")
    await ada.wait_text("Pick a plan")
    await ada.press("BYOK")
    await ada.wait_text("Which provider")
    await ada.command("help")
    helped = await ada.wait_text("(?i)here's what i can do")
    assert "/byok key add" in helped and "/byok start" in helped
    await ada.command("key")
    await ada.wait_text("(?i)providers:")
    await ada.command("frobnicate")
    unknown = await ada.wait_text("(?i)don't know the command")
    assert "/byok frobnicate" in unknown
    await ada.command("model")
    await ada.wait_text("(?i)key")
    await ada.dm_app(f"oops {pasted}")
    await ada.wait_text("(?i)revoke it")

    bare = sorted({m for t in ada.seen() for m in BARE_COMMAND.findall(t)})
    assert not bare, f"Slack has no {bare}; it says /byok …:\n" + "\n---\n".join(ada.seen())


# ----- defect 11 -----------------------------------------------------------------------------


async def test_a_badly_signed_request_leaves_no_content_in_the_log(
    ws: Workspace, slack: SlackSide, canaries: CanaryScan
) -> None:
    words = f"my private diary entry {secrets.token_hex(8)}"
    canaries.add(words)
    slack.configure(ws, "http")
    bot = await slack.start(ws)
    http = slack.transport
    assert isinstance(http, HttpTransport)

    raw, content_type = http.encode(
        "events_api", event_callback(message(words, user="UEVE", channel="DUEVE"))
    )
    forged = signed_headers("not-the-signing-secret", raw, content_type=content_type)
    status, _ = await http.post(raw, forged)
    assert status == 401
    # A good request after it is served, so the bad one has certainly been handled and logged.
    ada = slack.person()
    await ada.command("help")
    await ada.wait_text("(?i)here's what i can do")
    assert words not in bot.output()
    assert re.search(r"(?i)slack.*signature", bot.output()), "say a request was refused"


async def test_slack_starts_without_sdk_warnings(ws: Workspace, slack: SlackSide) -> None:
    slack.configure(ws, "socket")
    bot = await slack.start(ws)
    ada = slack.person()
    await ada.command("help")
    await ada.wait_text("(?i)here's what i can do")
    assert "will be unused" not in bot.output()
    assert not re.search(r"WARNING adapters\.slack", bot.output()), bot.output()
