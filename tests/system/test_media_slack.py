"""Files shared with the app on Slack, through ``byokbot run`` in Socket Mode (defect 2.10).

A shared image or voice clip without text gets a line saying the agent reads text only; with
text, the text reaches the agent and the person is told the file was not passed on.
"""

from __future__ import annotations

from typing import Any

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.slack_server import event_callback, message
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.slack_fixtures import SlackSide, slack_fixture  # noqa: F401 - fixture
from tests.system.slack_people import SlackPerson

# Files as Slack describes them in a ``file_share`` message event (trimmed).
IMAGE = {
    "id": "F07IMAGE01",
    "name": "image.png",
    "title": "image.png",
    "mimetype": "image/png",
    "filetype": "png",
    "pretty_type": "PNG",
    "mode": "hosted",
    "url_private": "https://files.slack.com/files-pri/T0001-F07IMAGE01/image.png",
    "size": 12345,
}
VOICE_CLIP = {
    "id": "F07AUDIO01",
    "name": "audio_message.webm",
    "title": "audio_message.webm",
    "mimetype": "audio/webm",
    "filetype": "webm",
    "subtype": "slack_audio",
    "mode": "hosted",
    "url_private": "https://files.slack.com/files-pri/T0001-F07AUDIO01/audio_message.webm",
    "size": 9120,
}


async def share(person: SlackPerson, text: str, *files: dict[str, Any]) -> str:
    """Share ``files`` (with ``text``) in the DM with the app, as Slack delivers it."""
    ts = person.slack.person_posts(person.dm, person.user_id, text)
    event = message(text, user=person.user_id, channel=person.dm, ts=ts, channel_type="im")
    event |= {"subtype": "file_share", "files": list(files), "upload": False}
    await person.transport.deliver("events_api", event_callback(event))
    return ts


async def test_shared_files_are_answered_on_slack(
    ws: Workspace, slack: SlackSide, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    key = anthropic_key()
    canaries.add(key)
    slack.configure(ws, "socket")
    await slack.start(ws)
    ada = slack.person()

    await share(ada, "", IMAGE)
    await ada.wait_text("can't read photos yet, only text", within=30)
    await share(ada, "", VOICE_CLIP)
    await ada.wait_text("can't read voice messages yet, only text", within=30)
    assert llm.requests == []

    await ada.command("start")
    await ada.wait_text("Pick a plan")
    await ada.press("BYOK")
    await ada.wait_text("Which provider")
    await ada.press("Anthropic")
    await ada.key_form()
    await ada.submit(key)
    await ada.wait_text("sk-ant-…")

    await share(ada, "what is in this picture?", IMAGE)
    await ada.wait_text(r"echo: what is in this picture\?", within=30)
    await ada.wait_text("passed on only the text")
    await eventually(lambda: bool(llm.keys("anthropic")), within=30)
    last = llm.requests[-1]
    assert last.key == key
    assert last.body["messages"][-1]["content"] == "what is in this picture?"
