"""Streamed replies under Discord's rate limits and faults, through ``byokbot run`` (issue 13).

The fake Discord enforces its limits as the real one does (message creates and edits are
separate buckets of 5 per 5 s per channel, 50 requests/s for the bot, bucket headers on every
answer, 429 with ``retry_after`` beyond them); the fake provider streams long replies in small
paced chunks. The suite's config edits every 0.2 s: the bot must keep within Discord's limits
whatever the operator's pace. Assertions are on the calls the fake saw.
"""

from __future__ import annotations

import asyncio
import math
import re

from tests.canaries import anthropic_key
from tests.fakes.discord_server import BOT_ID, Call, FakeDiscord
from tests.fakes.llm_server import FakeLLMServer
from tests.system.discord_fixtures import (
    SERVER_CHANNEL,
    DiscordPerson,
    another_person,
    dc_ws,
    discord,
    start_discord_bot,
)
from tests.system.harness import CanaryScan, Workspace, eventually
from tests.system.pacing_support import WRONG, long_reply
from tests.system.test_delivery_pacing import expected, streamed

__all__ = ["dc_ws", "discord"]  # fixtures, imported for pytest


async def sign_up_all(people: list[DiscordPerson], keys: list[str]) -> None:
    """/start, BYOK, Anthropic and the key in the form, for everyone at once."""
    await asyncio.gather(*(p.slash("start") for p in people))
    await asyncio.gather(*(p.wait_text("Pick a plan", within=60) for p in people))
    await asyncio.gather(*(p.press("BYOK", within=60) for p in people))
    await asyncio.gather(*(p.wait_text("Which provider", within=60) for p in people))
    await asyncio.gather(*(p.press("Anthropic", within=60) for p in people))
    await asyncio.gather(*(p.wait_modal(within=60) for p in people))
    await asyncio.gather(*(p.submit_modal(k) for p, k in zip(people, keys, strict=True)))
    await asyncio.gather(*(p.wait_text("Key saved", within=60) for p in people))


async def mention(fake: FakeDiscord, person: DiscordPerson, text: str) -> str:
    """``@bot text`` in the server channel; returns the message id."""
    bot = fake.user(BOT_ID, "byok")
    payload = fake.message(
        person.user, f"<@{BOT_ID}> {text}", channel_id=SERVER_CHANNEL, mentions=[bot]
    )
    await fake.dispatch("MESSAGE_CREATE", payload)
    return str(payload["id"])


def reply_calls(fake: FakeDiscord, channel: str, since: int, ending: str) -> list[Call]:
    """The create and edits of the message (from call ``since`` on) whose text ends so."""
    by_id: dict[str, list[Call]] = {}
    for c in fake.calls[since:]:
        if c.status >= 300 or c.method not in ("POST", "PATCH"):
            continue
        if c.method == "POST" and c.path == f"/channels/{channel}/messages":
            by_id[str(c.result["id"])] = [c]
        elif c.method == "PATCH" and c.path.startswith(f"/channels/{channel}/messages/"):
            mid = c.path.rsplit("/", 1)[1]
            if mid in by_id:
                by_id[mid].append(c)
    for calls in by_id.values():
        if str(calls[-1].body.get("content", "")).endswith(ending):
            return calls
    return []


def within_budget(calls: list[Call]) -> bool:
    """At most one call per (started) second of streaming, plus the final one."""
    return len(calls) <= math.ceil(calls[-1].at - calls[0].at) + 1


def show(calls: list[Call]) -> str:
    return ", ".join(f"{c.method}@{c.at - calls[0].at:.2f}" for c in calls)


async def test_many_people_streaming_at_once_stay_within_discords_limits(
    dc_ws: Workspace, discord: FakeDiscord, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    discord.enforce_rate_limits()
    people = [another_person(discord, f"p{i}") for i in range(12)]
    keys = [anthropic_key() for _ in people]
    canaries.add(*keys)
    await start_discord_bot(dc_ws, discord)
    await sign_up_all(people, keys)

    # Six talk in one server channel, six in their DMs, all at the same moment; each reply
    # streams 40 words, 50 ms apart (about 2 s of provider time).
    words = 40
    streamed(llm, words, 0.05)
    in_channel, in_dm = people[:6], people[6:]
    since = len(discord.calls)
    await asyncio.gather(
        *(p.send_dm(f"question from {p.name}") for p in in_dm),
        *(mention(discord, p, f"question from {p.name}") for p in in_channel),
    )

    def done() -> bool:
        channel = [m.content for m in discord.visible(in_channel[0].user_id, SERVER_CHANNEL)]
        return all(expected(f"question from {p.name}", words) in p.texts() for p in in_dm) and all(
            any(t.endswith(f"question from {p.name} {long_reply(words)}") for t in channel)
            for p in in_channel
        )

    await eventually(
        done,
        within=120,
        message=lambda: "\n---\n".join(
            [*(p.transcript() for p in in_dm), in_channel[0].transcript(SERVER_CHANNEL)]
        ),
    )

    assert discord.rate_limited() == []
    assert not [c for c in discord.refused() if c.status != 403], discord.refused()
    for p in people:
        assert not any(WRONG in t for t in p.texts()), p.texts()
    assert not any(WRONG in t for t in in_channel[0].texts(SERVER_CHANNEL))
    channels = [SERVER_CHANNEL, *(p.dm for p in in_dm)]
    for channel in channels:
        for method in ("POST", "PATCH"):
            assert discord.most_in_window(channel, method, 5.0) <= 5, (channel, method)
    replies = [
        reply_calls(discord, p.dm, since, f"question from {p.name} {long_reply(words)}")
        for p in in_dm
    ] + [
        reply_calls(discord, SERVER_CHANNEL, since, f"question from {p.name} {long_reply(words)}")
        for p in in_channel
    ]
    for calls in replies:
        assert calls, "a reply made no platform call"
        assert [c.method for c in calls].count("POST") == 1, show(calls)
        assert within_budget(calls), f"{len(calls)} calls: {show(calls)}"


async def test_5xx_and_a_timeout_on_edits_are_retried_and_the_reply_completes(
    dc_ws: Workspace, discord: FakeDiscord, llm: FakeLLMServer, canaries: CanaryScan
) -> None:
    ada, bob = another_person(discord, "ada"), another_person(discord, "bob")
    keys = [anthropic_key(), anthropic_key()]
    canaries.add(*keys)
    await start_discord_bot(dc_ws, discord)
    await sign_up_all([ada, bob], keys)

    # Chunks slower than the edit pace: each one is shown as it comes, so a failed edit is met
    # in the stream itself. Ada's first edit answers 502 and, tried again, 503 (discord.py
    # retries the first itself, not the second); the first edit of Bob's reply in the server
    # channel gets no answer for 7 s (then a 504).
    words = 8
    streamed(llm, words, 0.8)
    ada_edits = rf"^/channels/{ada.dm}/messages/"
    discord.fail_next("PATCH", ada_edits, 502, {"message": "Bad Gateway"})
    discord.fail_next("PATCH", ada_edits, 503, {"message": "Service Unavailable"})
    discord.stall("PATCH", rf"^/channels/{SERVER_CHANNEL}/messages/", 7.0)
    since = len(discord.calls)
    await ada.send_dm("tell me a story")
    await mention(discord, bob, "tell us a story")

    await ada.wait_text(re.escape(expected("tell me a story", words)), within=60)
    await bob.wait_text(f"tell us a story {long_reply(words)}$", channel=SERVER_CHANNEL, within=60)

    def statuses() -> list[tuple[str, int]]:
        return [(c.method, c.status) for c in discord.calls[since:]]

    assert ("PATCH", 502) in statuses() and ("PATCH", 503) in statuses()
    # The stalled one (its answer came too late, after the edit was tried again).
    await eventually(lambda: ("PATCH", 504) in statuses(), within=10)
    assert not any(WRONG in t for t in ada.texts()), ada.texts()
    assert not any(WRONG in t for t in bob.texts(SERVER_CHANNEL))
    # Each reply is one message: nothing was posted twice.
    assert [t for t in ada.texts() if "tell me a story" in t] == [
        expected("tell me a story", words)
    ]
    assert len([t for t in bob.texts(SERVER_CHANNEL) if "tell us a story" in t]) == 1
