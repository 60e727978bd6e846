"""Files shared with the app on Slack, through ``byokbot run`` in Socket Mode (2.10, issue 14).

Before sign-up a shared image or voice clip gets a line saying to set up an agent first; after
it, a shared image is downloaded with the bot token (from ``url_private``) and reaches the
model as image input, with the text beside it; the token never reaches the provider.
"""

from __future__ import annotations

import json
from typing import Any

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.media_files import png
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
    await ada.wait_text("You don't have an agent yet", within=30)
    await share(ada, "", VOICE_CLIP)
    await eventually(
        lambda: sum("You don't have an agent yet" in t for t in ada.texts()) >= 2, within=30
    )
    assert llm.requests == []
    assert slack.fake.downloads == []

    await ada.command("start")
    await ada.wait_text("Pick a plan")
    await ada.press("BYOK")
    await ada.wait_text("Which provider")
    await ada.press("Anthropic")
    await ada.key_form()
    await ada.submit(key)
    await ada.wait_text("sk-ant-…")

    image = png(4, 4)
    shared = IMAGE | {"url_private": slack.fake.add_file("F07IMAGE01", "image.png", image)}
    shared["size"] = len(image)
    await share(ada, "what is in this picture?", shared)
    await ada.wait_text(r"echo: what is in this picture\? \(saw 1 image\)", within=30)
    assert llm.images() == [("anthropic", "image/png", image)]
    last = llm.requests[-1]
    assert last.key == key
    assert slack.fake.downloads == ["F07IMAGE01"]
    sent = json.dumps([r.body for r in llm.requests])
    assert "xoxb-" not in sent and "files-pri" not in sent
