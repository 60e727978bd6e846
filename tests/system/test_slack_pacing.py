"""Streamed replies under Slack's rate limits and faults, through ``byokbot run`` (issue 13).

The fake Slack enforces its limits as the real one does (chat.postMessage about 1 a second
per channel with short bursts, chat.update the same per channel and 50 a minute in the
workspace; HTTP 429 with ``Retry-After`` beyond them); the fake provider streams long replies
in small paced chunks. Assertions are on the calls the fake saw.
"""

from __future__ import annotations

import asyncio
import math
import re

from tests.canaries import anthropic_key
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.slack_server import Call
from tests.fakes.slack_strict import StrictSlack
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.pacing_support import WRONG, long_reply
from tests.system.slack_fixtures import SlackSide, slack_fixture
from tests.system.slack_people import SlackPerson
from tests.system.test_delivery_pacing import expected, streamed

__all__ = ["slack_fixture"]  # the fixture, imported for pytest

CHANNEL = "C0GENERAL"


async def sign_up_all(people: list[SlackPerson], keys: list[str]) -> None:
    """/byok start, BYOK, Anthropic and the key in the form, for everyone at once."""
    await asyncio.gather(*(p.command("start") for p in people))
    await asyncio.gather(*(p.wait_text("Pick a plan", within=60) for p in people))
    await asyncio.gather(*(p.press("BYOK") for p in people))
    await asyncio.gather(*(p.wait_text("Which provider", within=60) for p in people))
    await asyncio.gather(*(p.press("Anthropic") for p in people))
    await asyncio.gather(*(p.key_form(within=60) for p in people))
    await asyncio.gather(*(p.submit(k) for p, k in zip(people, keys, strict=True)))
    await asyncio.gather(*(p.wait_text("sk-ant-…", within=60) for p in people))


def reply_calls(fake: StrictSlack, channel: str, since: int, ending: str) -> list[Call]:
    """The post and updates (from call ``since`` on) of the message whose text ends so."""
    by_ts: dict[str, list[Call]] = {}
    for c in fake.calls[since:]:
        if c.status != 200 or c.error or str(c.args.get("channel")) != channel:
            continue
        if c.method == "chat.postMessage":
            by_ts[str(c.result.get("ts"))] = [c]
        elif c.method == "chat.update" and str(c.args.get("ts")) in by_ts:
            by_ts[str(c.args.get("ts"))].append(c)
    for calls in by_ts.values():
        if str(calls[-1].args.get("text", "")).endswith(ending):
            return calls
    return []


def within_budget(calls: list[Call]) -> bool:
    """At most one call per (started) second of streaming, plus the final one."""
    return len(calls) <= math.ceil(calls[-1].at - calls[0].at) + 1


def show(calls: list[Call]) -> str:
    return ", ".join(f"{c.method}@{c.at - calls[0].at:.2f}" for c in calls)


async def test_many_people_streaming_at_once_stay_within_slacks_limits(
    ws: Workspace, slack: SlackSide, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    slack.fake.enforce_rate_limits()
    slack.configure(ws, "socket", edit_interval=1.0)  # Slack's default pace
    await slack.start(ws)
    people = [slack.person(f"UP{i:02d}", f"p{i}") for i in range(12)]
    keys = [anthropic_key() for _ in people]
    canaries.add(*keys)
    await sign_up_all(people, keys)

    # Six talk in one channel, six in their DMs, all at the same moment; each reply streams
    # 40 words, 50 ms apart (about 2 s of provider time).
    words = 40
    streamed(llm, words, 0.05)
    in_channel, in_dm = people[:6], people[6:]
    since = len(slack.fake.calls)
    await asyncio.gather(
        *(p.dm_app(f"question from {p.name}") for p in in_dm),
        *(p.mention(f"question from {p.name}", channel=CHANNEL) for p in in_channel),
    )

    def done() -> bool:
        return all(expected(f"question from {p.name}", words) in p.texts() for p in in_dm) and all(
            expected(f"question from {p.name}", words) in p.texts(CHANNEL) for p in in_channel
        )

    await eventually(
        done,
        within=120,
        message=lambda: "\n---\n".join(
            [*(t for p in in_dm for t in p.texts()[-1:]), *in_channel[0].texts(CHANNEL)]
        ),
    )

    fake = slack.fake
    assert fake.rate_limited() == []
    for p in people:
        assert not any(WRONG in t for t in p.texts()), p.texts()
    assert not any(WRONG in t for t in in_channel[0].texts(CHANNEL))
    for channel in [CHANNEL, *(p.dm for p in in_dm)]:
        assert fake.most_in_window("chat.postMessage", 5.0, channel) <= 5, channel
        assert fake.most_in_window("chat.update", 5.0, channel) <= 5, channel
    assert fake.most_in_window("chat.update", 60.0) <= 50
    replies = [
        reply_calls(fake, p.dm, since, f"question from {p.name} {long_reply(words)}") for p in in_dm
    ] + [
        reply_calls(fake, CHANNEL, since, f"question from {p.name} {long_reply(words)}")
        for p in in_channel
    ]
    for calls in replies:
        assert calls, "a reply made no platform call"
        assert within_budget(calls), f"{len(calls)} calls: {show(calls)}"


async def test_a_502_and_a_timeout_on_updates_are_retried_and_the_reply_completes(
    ws: Workspace, slack: SlackSide, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    slack.configure(ws, "socket", edit_interval=1.0)
    await slack.start(ws)
    ada = slack.person("UADA", "ada")
    key = anthropic_key()
    canaries.add(key)
    await sign_up_all([ada], [key])

    # Chunks slower than the edit pace: each one is shown as it comes, so a failed update is
    # met in the stream itself. The first update answers 502; the next one gets no answer for
    # 7 s (then a 504).
    words = 8
    streamed(llm, words, 0.8)
    slack.fake.fail("chat.update", "internal_error", status=502)
    slack.fake.stall("chat.update", 7.0)
    since = len(slack.fake.calls)
    await ada.dm_app("tell me a story")

    await ada.wait_text(re.escape(expected("tell me a story", words)), within=60)

    def statuses() -> list[tuple[str, int]]:
        return [(c.method, c.status) for c in slack.fake.calls[since:]]

    assert ("chat.update", 502) in statuses()
    await eventually(lambda: ("chat.update", 504) in statuses(), within=10)
    assert not any(WRONG in t for t in ada.texts()), ada.texts()
    # One message: nothing was posted twice.
    assert [t for t in ada.texts() if "tell me a story" in t] == [
        expected("tell me a story", words)
    ]
