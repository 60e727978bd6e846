"""A new person on Slack, through ``byokbot run`` in Socket Mode and in HTTP mode.

Start, plan, the key through the modal, a streamed reply on that key, rotation, the leak guard
and deletion, against the strict fake Slack (single-use triggers, bot tokens that cannot
delete a person's message, acks within 3 s).
"""

from __future__ import annotations

import re

import pytest

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.slack_fixtures import SlackSide, slack_fixture  # noqa: F401 - fixture

MODES = pytest.mark.parametrize("mode", ["socket", "http"])


@MODES
async def test_byok_journey(
    ws: Workspace, slack: SlackSide, llm: FakeLLMServer, canaries: CanaryScan, mode: str
) -> None:
    first, second, pasted = anthropic_key(), anthropic_key(), anthropic_key()
    canaries.add(first, second, pasted)
    slack.configure(ws, mode)
    await slack.start(ws)
    ada = slack.person()

    await ada.command("start")
    await ada.wait_text("Pick a plan")
    await ada.press("BYOK")
    await ada.wait_text("Which provider")
    await ada.press("Anthropic")
    await ada.key_form()
    ack = await ada.submit(first)
    assert ack.get("response_action") != "errors", ack
    await ada.wait_text("sk-ant-…")

    await ada.dm_app("hello agent")
    await ada.wait_text("echo: hello agent", within=30)
    assert llm.keys("anthropic")[-1] == first
    mention = await ada.mention("and in the channel?")
    await ada.wait_text("echo: and in the channel", channel="C0GENERAL", within=30)
    threaded = [p for p in slack.fake.visible("C0GENERAL", ada.user_id) if p.author != ada.user_id]
    assert threaded and all(p.thread_ts == mention for p in threaded), "answers go in a thread"

    await ada.command("key rotate anthropic")
    await ada.key_form()
    await ada.submit(second)
    await ada.wait_text("(?i)key rotated")
    await ada.dm_app("after rotation")
    await ada.wait_text("echo: after rotation", within=30)
    assert llm.keys("anthropic")[-1] == second
    # The mention came as app_mention and as message: answered once.
    assert ada.count("echo: and in the channel", channel="C0GENERAL") == 1

    leak = await ada.dm_app(f"here is my other key {pasted} ok")
    await ada.wait_text("(?i)revoke it")
    # A bot token cannot delete a person's message: the bot must say so, not claim it did.
    assert ("chat.delete", "cant_delete_message") in slack.fake.refusals
    assert slack.fake.find(ada.dm, leak) is not None
    await ada.wait_text("(?i)couldn't delete")
    assert all(pasted not in str(r.body) for r in llm.requests)

    await ada.command("delete")
    await ada.wait_text("(?i)erase")
    await ada.press("Yes, erase")
    await ada.wait_text("(?i)erased")
    await ada.dm_app("still there?")
    await eventually(
        lambda: re.search("(?i)don't have an agent|pick a plan", ada.texts()[-1]) is not None,
        message=lambda: str(ada.texts()),
    )
