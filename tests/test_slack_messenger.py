"""Messenger methods called directly, against the fake: streaming, fallbacks, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pytest

from adapters.slack import SlackAdapter, SlackDeliveryError
from adapters.slack.config import parse
from core.chat import (
    ChatRef,
    Event,
    EventKind,
    MessageRef,
    Platform,
    Reply,
    SecretRequest,
    TextFormat,
    UserRef,
)
from core.config import PlatformSettings
from core.ports import ChatAdapter, Messenger
from tests.fakes.slack_server import PROXY_VARS, FakeSlack, ManualSleep, ScriptedBot, slack_env

ALICE = UserRef(platform=Platform.SLACK, id="UALICE")
DM = ChatRef(platform=Platform.SLACK, id="DUALICE", is_direct=True)
CHANNEL = ChatRef(platform=Platform.SLACK, id="C0GENERAL", is_direct=False, thread_id="111.222")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    server = FakeSlack()
    await server.start()
    yield server
    await server.stop()


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def started(
    fake: FakeSlack, clock: Clock, *, sleep: ManualSleep | None = None, **options: Any
) -> SlackAdapter:
    settings = PlatformSettings(
        name="slack",
        enabled=True,
        options=MappingProxyType({"api_base_url": fake.base_url, **options}),
    )
    slack = SlackAdapter(
        parse(settings, slack_env()), monotonic=clock, sleep=sleep or ManualSleep()
    )
    await slack.start(ScriptedBot())
    fake.calls.clear()
    return slack


@pytest.fixture
async def slack(fake: FakeSlack, clock: Clock) -> AsyncIterator[SlackAdapter]:
    adapter = await started(fake, clock)
    yield adapter
    await adapter.stop()


def message_event(chat: ChatRef = DM) -> Event:
    return Event(kind=EventKind.MESSAGE, user=ALICE, chat=chat, text="hi", message_id="9.9")


async def ticking(clock: Clock, chunks: list[str], step: float) -> AsyncIterator[str]:
    for chunk in chunks:
        clock.t += step
        yield chunk


def test_the_adapter_satisfies_the_ports(slack: SlackAdapter) -> None:
    assert isinstance(slack, Messenger)
    adapter: ChatAdapter = slack
    assert adapter.platform is Platform.SLACK


async def test_stream_splits_long_replies_without_breaking_words(
    fake: FakeSlack, clock: Clock
) -> None:
    slack = await started(fake, clock, max_message_chars=200, edit_interval=0.0)
    try:
        words = [f"word{i:03d} " for i in range(60)]  # 480 characters
        last = await slack.stream(message_event(CHANNEL), ticking(clock, words, 0.1))
    finally:
        await slack.stop()
    posts = fake.calls_to("chat.postMessage")
    assert [p["thread_ts"] for p in posts] == ["111.222"] * 3
    assert posts[0]["text"] == "_thinking…_"
    messages: dict[str, str] = {}
    ts_by_post = [f"1700000000.{n:06d}" for n in range(1, 4)]
    for post, ts in zip(posts, ts_by_post, strict=True):
        messages[ts] = post["text"]
    for update in fake.calls_to("chat.update"):
        messages[update["ts"]] = update["text"]
    texts = [messages[ts] for ts in ts_by_post]
    assert all(len(t) <= 200 for t in texts)
    assert " ".join(texts).split() == "".join(words).split()
    assert last == MessageRef(chat=CHANNEL, id=ts_by_post[-1])


async def test_stream_paces_edits_by_the_interval(
    fake: FakeSlack, slack: SlackAdapter, clock: Clock
) -> None:
    chunks = ["a", "b", "c", "d", "e", "f", "g"]  # one every 0.3 s, edits at most every 1 s
    await slack.stream(message_event(), ticking(clock, chunks, 0.3))
    # t=0.3 first text at once; t=1.5 is the first chunk a full second later; then the final edit
    assert [u["text"] for u in fake.calls_to("chat.update")] == ["a", "abcde", "abcdefg"]


async def test_text_held_back_by_pacing_is_shown_when_the_interval_is_up(
    fake: FakeSlack, clock: Clock
) -> None:
    sleep = ManualSleep()
    slack = await started(fake, clock, sleep=sleep)

    async def pausing() -> AsyncIterator[str]:
        clock.t = 0.1
        yield "a"  # shown at once
        clock.t = 0.3
        yield "b"  # too soon: a timer is set for the rest of the second
        sleep.release()  # the second is up while the agent is still thinking
        for _ in range(100):
            if len(fake.calls_to("chat.update")) == 2:
                break
            await asyncio.sleep(0)
        yield "c"

    try:
        await slack.stream(message_event(), pausing())
    finally:
        await slack.stop()
    assert [u["text"] for u in fake.calls_to("chat.update")] == ["a", "ab", "abc"]
    assert sleep.delays == [pytest.approx(0.8)]


async def test_a_failing_stream_keeps_what_was_shown_and_reraises(
    fake: FakeSlack, slack: SlackAdapter, clock: Clock
) -> None:
    async def broken() -> AsyncIterator[str]:
        yield "partial"
        clock.t += 0.1
        yield " answer"
        raise RuntimeError("provider went away")

    with pytest.raises(RuntimeError, match="provider went away"):
        await slack.stream(message_event(), broken())
    assert [u["text"] for u in fake.calls_to("chat.update")] == ["partial", "partial answer"]
    assert fake.calls_to("chat.delete") == []


async def test_a_stream_whose_message_was_deleted_goes_on_in_a_new_one(
    fake: FakeSlack, slack: SlackAdapter, clock: Clock
) -> None:
    async def chunks() -> AsyncIterator[str]:
        clock.t += 0.1
        yield "partial"
        fake.fail("chat.update", "message_not_found", times=5)  # deleted meanwhile
        clock.t += 1.5
        yield " answer"

    ref = await slack.stream(message_event(), chunks())
    posts = [p["text"] for p in fake.calls_to("chat.postMessage")]
    assert posts[-1] == "partial answer"  # the whole answer, in a new message
    assert ref is not None


async def test_a_stream_that_yields_nothing_removes_the_placeholder(
    fake: FakeSlack, slack: SlackAdapter
) -> None:
    async def empty() -> AsyncIterator[str]:
        for chunk in ():
            yield chunk

    assert await slack.stream(message_event(), empty()) is None
    assert fake.methods() == ["chat.postMessage", "chat.delete"]


async def test_refused_markdown_falls_back_to_plain_text(
    fake: FakeSlack, slack: SlackAdapter
) -> None:
    fake.fail("chat.postMessage", "invalid_blocks")
    ref = await slack.send(DM, Reply(text="**bold**", format=TextFormat.MARKDOWN))
    first, second = fake.calls_to("chat.postMessage")
    assert first["blocks"][0]["text"] == {"type": "mrkdwn", "text": "*bold*"}
    assert second["blocks"][0]["text"]["type"] == "plain_text"
    assert second["text"] == "**bold**"
    assert ref == MessageRef(chat=DM, id="1700000000.000001")  # the refused post got no ts


async def test_other_refusals_raise_a_wrapped_error(fake: FakeSlack, slack: SlackAdapter) -> None:
    fake.fail("chat.postMessage", "channel_not_found")
    with pytest.raises(SlackDeliveryError) as caught:
        await slack.send(DM, Reply(text="hello"))
    assert (caught.value.method, caught.value.error) == ("chat.postMessage", "channel_not_found")
    assert str(caught.value) == "Slack chat.postMessage failed: channel_not_found"
    assert caught.value.__cause__ is None


async def test_edit_and_delete(fake: FakeSlack, slack: SlackAdapter) -> None:
    await slack.edit(MessageRef(chat=DM, id="5.5"), Reply(text="new"))
    assert await slack.delete(DM, "5.5") is True
    [update] = fake.calls_to("chat.update")
    assert (update["channel"], update["ts"], update["text"]) == ("DUALICE", "5.5", "new")
    assert fake.calls_to("chat.delete") == [{"channel": "DUALICE", "ts": "5.5"}]


async def test_delete_without_a_user_token_reports_the_refusal(
    fake: FakeSlack, slack: SlackAdapter
) -> None:
    fake.fail("chat.delete", "cant_delete_message")
    assert await slack.delete(CHANNEL, "5.5") is False
    assert len(fake.calls_to("chat.delete")) == 1


async def test_sensitive_answers_in_a_channel_are_ephemeral(
    fake: FakeSlack, slack: SlackAdapter
) -> None:
    event = Event(kind=EventKind.MESSAGE, user=ALICE, chat=CHANNEL, text="hi", message_id="1.1")
    assert await slack.respond(event, Reply(text="your key: …9f3c", sensitive=True)) is None
    assert await slack.respond(event, Reply(text="hello all")) is not None
    [ephemeral] = fake.calls_to("chat.postEphemeral")
    assert (ephemeral["channel"], ephemeral["user"], ephemeral["thread_ts"]) == (
        "C0GENERAL",
        "UALICE",
        "111.222",
    )
    assert [p["text"] for p in fake.calls_to("chat.postMessage")] == ["hello all"]


async def test_open_dm_is_cached_and_refusals_return_none(
    fake: FakeSlack, slack: SlackAdapter
) -> None:
    assert await slack.open_dm(ALICE) == DM
    assert await slack.open_dm(ALICE) == DM
    assert len(fake.calls_to("conversations.open")) == 1
    fake.fail("conversations.open", "user_not_found")
    assert await slack.open_dm(UserRef(platform=Platform.SLACK, id="UGONE")) is None


async def test_ask_secret_returns_false_when_no_dm_can_be_opened(
    fake: FakeSlack, slack: SlackAdapter
) -> None:
    fake.fail("conversations.open", "cannot_dm_bot")
    request = SecretRequest(
        token="t",
        provider="openai",
        title="OpenAI key",
        prompt="Paste it",
        expires_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert await slack.ask_secret(message_event(CHANNEL), request) is False
    assert fake.calls_to("chat.postMessage") == []


async def test_typing_sends_nothing(fake: FakeSlack, slack: SlackAdapter) -> None:
    await slack.typing(DM)
    assert fake.calls == []


async def test_calls_before_start_are_refused(fake: FakeSlack) -> None:
    settings = PlatformSettings(name="slack", enabled=True)
    slack = SlackAdapter(parse(settings, slack_env()))
    with pytest.raises(Exception, match="not started"):
        await slack.send(DM, Reply(text="x"))
