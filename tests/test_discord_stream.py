"""Streaming agent replies on Discord: typing first, paced edits of one message, splitting."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.discord.adapter import DiscordAdapter
from core.chat import Event, MessageRef
from tests.fakes.discord_harness import running
from tests.fakes.discord_server import BOT_ID, GUILD_CHANNEL_ID, FakeDiscord

ALICE_ID = "700000000000000001"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    monkeypatch.setattr(Route, "BASE", Route.BASE)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)
    async with FakeDiscord() as server:
        yield server


def shown_in(fake: FakeDiscord, channel_id: str) -> list[tuple[str, str]]:
    """(method, content) of every message create/edit in a channel, in order."""
    return [
        (c.method, c.body["content"])
        for c in fake.calls
        if c.path.startswith(f"/channels/{channel_id}/messages") and c.method in ("POST", "PATCH")
    ]


def final_texts(fake: FakeDiscord, channel_id: str) -> list[str]:
    """The last text of each message the bot posted in a channel, in posting order."""
    texts: dict[str, str] = {}
    for c in fake.calls:
        if not c.path.startswith(f"/channels/{channel_id}/messages"):
            continue
        if c.method == "POST":
            texts[c.result["id"]] = c.body["content"]
        elif c.method == "PATCH":
            texts[c.path.rsplit("/", 1)[1]] = c.body["content"]
    return list(texts.values())


async def lockstep(fake: FakeDiscord, channel_id: str, parts: list[str]) -> AsyncIterator[str]:
    """Yield each part only once the previous text is on screen: one edit per part."""
    text = ""
    for part in parts:
        text += part
        yield part
        await fake.wait_for(lambda t=text: any(c == t for _, c in shown_in(fake, channel_id)))


async def test_dm_reply_streams_typing_then_one_paced_message(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")
    results: list[MessageRef | None] = []

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        chunks = lockstep(fake, event.chat.id, ["Hel", "lo", " there,", " Alice."])
        results.append(await adapter.stream(event, chunks))

    async with running(fake) as (_, script):
        script.behaviour = behaviour
        await fake.dispatch("MESSAGE_CREATE", fake.message(alice, "hi agent"))
        await fake.wait_for(lambda: len(results) == 1)
    dm = fake.dm_channels[ALICE_ID]
    assert next((c.method, c.path) for c in fake.calls if c.path.startswith("/channels/")) == (
        "POST",
        f"/channels/{dm}/typing",
    )
    assert shown_in(fake, dm) == [
        ("POST", "Hel"),
        ("PATCH", "Hello"),
        ("PATCH", "Hello there,"),
        ("PATCH", "Hello there, Alice."),
    ]
    first_id = fake.find("POST", rf"^/channels/{dm}/messages$")[0].result["id"]
    assert results[0] is not None
    assert results[0].id == first_id
    assert script.events[0].text == "hi agent"


async def test_mention_reply_is_split_at_2000_between_words(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")
    words = [f"word{i:04d}" for i in range(500)]  # 4499 characters with spaces
    text = " ".join(words)
    parts = [text[i : i + 450] for i in range(0, len(text), 450)]
    done: list[bool] = []

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        async def chunks() -> AsyncIterator[str]:
            for part in parts:
                yield part

        await adapter.stream(event, chunks())
        done.append(True)

    async with running(fake) as (_, script):
        script.behaviour = behaviour
        bot = fake.user(BOT_ID, "byokbot")
        await fake.dispatch(
            "MESSAGE_CREATE",
            fake.message(
                alice, f"<@{BOT_ID}> write a lot", channel_id=GUILD_CHANNEL_ID, mentions=[bot]
            ),
        )
        await fake.wait_for(lambda: done == [True])
    finals = final_texts(fake, GUILD_CHANNEL_ID)
    assert len(finals) == 3
    assert all(len(t) <= 2000 for t in finals)
    assert " ".join(finals) == text
    assert all(t.split(" ")[-1] in words and t.split(" ")[0] in words for t in finals)
    assert script.events[0].text == "write a lot"


async def test_failed_stream_keeps_what_was_shown_and_raises(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")
    errors: list[str] = []

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        async def chunks() -> AsyncIterator[str]:
            yield "The answer is"
            await fake.wait_for(lambda: len(shown_in(fake, event.chat.id)) == 1)
            yield " forty"
            raise RuntimeError("provider went away")

        try:
            await adapter.stream(event, chunks())
        except RuntimeError as exc:
            errors.append(str(exc))

    async with running(fake) as (_, script):
        script.behaviour = behaviour
        await fake.dispatch("MESSAGE_CREATE", fake.message(alice, "question"))
        await fake.wait_for(lambda: len(errors) == 1)
    dm = fake.dm_channels[ALICE_ID]
    assert errors == ["provider went away"]
    assert final_texts(fake, dm) == ["The answer is forty"]
    assert fake.find("DELETE", r"^/channels/") == []


async def test_empty_stream_posts_nothing(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")
    results: list[MessageRef | None] = []

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        async def nothing() -> AsyncIterator[str]:
            for part in ():
                yield part

        results.append(await adapter.stream(event, nothing()))

    async with running(fake) as (_, script):
        script.behaviour = behaviour
        await fake.dispatch("MESSAGE_CREATE", fake.message(alice, "hello?"))
        await fake.wait_for(lambda: len(results) == 1)
    dm = fake.dm_channels[ALICE_ID]
    assert results == [None]
    assert [c.path for c in fake.calls if c.path.startswith("/channels/")] == [
        f"/channels/{dm}/typing"
    ]


async def test_typing_is_refreshed_while_the_first_chunk_is_awaited(fake: FakeDiscord) -> None:
    alice = fake.user(ALICE_ID, "alice")
    done: list[bool] = []

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        typing = rf"^/channels/{event.chat.id}/typing$"

        async def slow() -> AsyncIterator[str]:
            await fake.wait_for(lambda: len(fake.find("POST", typing)) == 3)
            yield "Finally."

        await adapter.stream(event, slow())
        done.append(True)

    async with running(fake, typing_refresh=0.05) as (_, script):
        script.behaviour = behaviour
        await fake.dispatch("MESSAGE_CREATE", fake.message(alice, "think hard"))
        await fake.wait_for(lambda: done == [True])
    dm = fake.dm_channels[ALICE_ID]
    kinds = [c.path.rsplit("/", 1)[1] for c in fake.calls if c.path.startswith(f"/channels/{dm}/")]
    assert kinds == ["typing", "typing", "typing", "messages"]


async def test_stream_answering_a_slash_command_edits_through_the_interaction(
    fake: FakeDiscord,
) -> None:
    alice = fake.user(ALICE_ID, "alice")
    done: list[bool] = []

    async def behaviour(adapter: DiscordAdapter, event: Event) -> None:
        async def chunks() -> AsyncIterator[str]:
            yield "Thinking"
            await fake.wait_for(lambda: len(fake.find("POST", r"^/interactions/")) == 1)
            yield " done."

        await adapter.stream(event, chunks())
        done.append(True)

    async with running(fake) as (_, script):
        script.behaviour = behaviour
        await fake.dispatch(
            "INTERACTION_CREATE", fake.slash(alice, "usage", channel_id=GUILD_CHANNEL_ID)
        )
        await fake.wait_for(lambda: done == [True])
    first = fake.find("POST", r"^/interactions/")[0].body
    assert (first["type"], first["data"]["content"]) == (4, "Thinking")
    edits = fake.find("PATCH", r"^/webhooks/")
    assert [(c.path.rsplit("/", 1)[1], c.body["content"]) for c in edits] == [
        ("@original", "Thinking done.")
    ]
