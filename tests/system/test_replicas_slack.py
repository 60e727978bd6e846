"""Two ``byokbot run`` replicas in Slack HTTP mode behind nginx, on one PostgreSQL (issue 16).

Slack posts every request (commands, button presses, the key modal, events) to the public
URL; nginx hands them to the replicas in turn, so the modal one replica opened is submitted
to the other, and a retried event reaches the replica that did not see it first.
Needs ``BYOKBOT_TEST_PG_URL`` (``.ci/run`` starts a throwaway PostgreSQL) and nginx.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.slack_server import event_callback, message, signed_headers
from tests.system.conftest import base_tables
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.managed_support import free_port
from tests.system.replica_fixtures import Nginx, pg_url
from tests.system.slack_fixtures import HTTP_READY, SlackSide, slack_fixture
from tests.system.slack_people import HttpTransport
from tests.system.telegram_steps import llm_saw

__all__ = ["pg_url", "slack_fixture"]  # fixtures used below


async def test_slack_http_on_two_replicas_keys_chat_and_retries_once(
    tmp_path: Path,
    llm: FakeLLMServer,
    slack: SlackSide,
    pg_url: str,
    canaries: CanaryScan,
) -> None:
    key = anthropic_key()
    master = base64.b64encode(secrets.token_bytes(32)).decode()
    canaries.add(key, master)
    ports = [free_port(), free_port()]
    spaces: list[Workspace] = []
    for i, port in enumerate(ports):
        root = tmp_path / f"replica{i}"
        root.mkdir()
        ws = Workspace(root)
        ws.configure(base_tables(root, llm))
        ws.configure({"core": {"database_url": pg_url}})
        slack.configure(ws, "http", listen_port=port)
        ws.env["BYOKBOT_MASTER_KEY"] = master
        canaries.watch_workspace(ws)
        spaces.append(ws)
    nginx = Nginx(tmp_path / "nginx", (ports[0], ports[1]))
    try:
        bots = [await ws.start("run") for ws in spaces]
        for bot in bots:
            await bot.wait_output(HTTP_READY, within=60)
        await nginx.start()
        slack.transport = HttpTransport(
            f"http://127.0.0.1:{nginx.port}/slack/events", slack.signing_secret
        )
        ada = slack.person()

        await ada.command("start")
        await ada.wait_text("Pick a plan")
        await ada.press("BYOK")
        await ada.wait_text("Which provider")
        await ada.press("Anthropic")
        await ada.key_form()
        ack = await ada.submit(key)
        assert ack.get("response_action") != "errors", ack
        await ada.wait_text("sk-ant-…")
        served = nginx.served("/slack")
        # The modal opened on one replica (the press) was submitted to the other.
        assert served[-1] != served[-2], served

        for line in ("first", "second"):
            await ada.dm_app(line)
            await ada.wait_text(f"echo: {line}", within=30)
        assert set(nginx.served("/slack")) == set(ports)
        assert llm.keys("anthropic") and set(llm.keys("anthropic")) == {key}

        # Slack retries an event it thinks was not acknowledged: the retry lands on the
        # other replica and must be answered once.
        before = len(llm.requests)
        ts = slack.fake.person_posts(ada.dm, ada.user_id, "only once please")
        event = message(
            "only once please", user=ada.user_id, channel=ada.dm, ts=ts, channel_type="im"
        )
        raw = json.dumps(event_callback(event, event_id="Ev0REPLICA01"))
        for attempt in (0, 1):
            headers = signed_headers(slack.signing_secret, raw, content_type="application/json")
            if attempt:
                headers |= {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
            status, _ = await slack.transport.post(raw, headers)
            assert status == 200
        await ada.wait_text("echo: only once please", within=30)
        last_two = nginx.served("/slack")[-2:]
        assert last_two[0] != last_two[1], last_two
        await eventually(lambda: llm_saw(llm, "only once please"))
        assert sum("only once please" in str(r.body) for r in llm.requests[before:]) == 1
        assert ada.count("echo: only once please") == 1
        for bot in bots:
            assert bot.returncode is None
            assert "Traceback" not in bot.stderr(), bot.stderr()
    finally:
        await nginx.stop()
        for ws in spaces:
            await ws.close()
