"""Long conversations: the budget/summary logic, and the supervisor compacting through a worker."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from core.config import ConversationSettings
from core.runtime.compaction import (
    SUMMARY_CONTEXT_HEAD,
    SUMMARY_REQUEST_HEAD,
    SUMMARY_ROLE,
    SUMMARY_SYSTEM,
    cost,
    estimate_tokens,
    join_summary,
    passes,
    plan_compaction,
    recent_start,
    split_summary,
    system_with_summary,
    transcript,
)
from core.runtime.ports import Compacted, Turn
from tests.fakes.agents import rig
from tests.fakes.llm_server import FakeLLMServer, echo_reply


def _turns(n: int, size: int = 40) -> list[Turn]:
    return [Turn("user" if i % 2 == 0 else "assistant", f"{i:03d}" + "x" * size) for i in range(n)]


def test_no_compaction_while_the_turns_fit_the_budget() -> None:
    turns = _turns(5)
    assert plan_compaction("", turns, cost("", turns), 10) is None


def test_overflow_splits_older_turns_from_a_recent_tail_that_starts_with_the_person() -> None:
    turns = _turns(11)  # ends with a user turn (the new message)
    each = estimate_tokens(turns[0].content)
    split = plan_compaction("", turns, cost("", turns) - 1, keep_tokens=each * 4)
    assert split is not None
    assert split.old + split.recent == turns
    assert split.recent[0].role == "user" and split.recent[-1] == turns[-1]
    assert cost("", split.recent) <= each * 4
    assert len(split.recent) == 3  # four would fit, but the tail must start with the person


def test_the_previous_summary_counts_against_the_budget() -> None:
    turns = _turns(3)
    budget = cost("", turns)
    assert plan_compaction("", turns, budget, 20) is None
    assert plan_compaction("a long summary " * 20, turns, budget, 20) is not None


def test_a_single_huge_message_is_not_compacted() -> None:
    turns = [Turn("user", "x" * 10_000)]
    assert plan_compaction("", turns, 100, 50) is None
    assert recent_start(turns, 1) == 0  # the new message is always kept


def test_summary_is_stored_as_a_leading_turn_and_read_back() -> None:
    turns = _turns(2)
    stored = join_summary("facts", turns)
    assert stored[0] == Turn(SUMMARY_ROLE, "facts")
    assert split_summary(stored) == ("facts", turns)
    assert split_summary(turns) == ("", turns)
    assert join_summary("", turns) == turns


def test_transcript_carries_the_old_summary_and_drops_the_oldest_text_when_too_long() -> None:
    text = transcript(
        "the word is heliotrope", [Turn("user", "old " * 50), Turn("user", "new")], 300
    )
    assert text.startswith(SUMMARY_REQUEST_HEAD)
    assert "the word is heliotrope" in text
    assert text.endswith("Person: new") and len(text) <= 300


def test_turns_too_long_for_one_request_are_split_into_parts_that_each_fit() -> None:
    turns = [
        Turn("user" if i % 2 == 0 else "assistant", f"turn {i} " + "x" * 90) for i in range(30)
    ]
    groups = passes(turns, limit_chars=1600, summary_chars=400)
    assert len(groups) > 1
    assert [t for g in groups for t in g] == turns  # every turn once, oldest first
    for group in groups:
        text = transcript("s" * 400, group, 1600)
        assert all(t.content in text for t in group), "a part was cut"
    assert passes(turns[:3], 1600, 400) == [turns[:3]]  # what fits stays one request
    huge = [Turn("user", "y" * 5000), Turn("assistant", "ok")]
    assert passes(huge, 1600, 400) == [[huge[0]], [huge[1]]]


async def test_a_long_first_turn_is_summarised_not_dropped_when_the_old_part_is_long(
    tmp_path: Path,
) -> None:
    # Turns of ~270 characters fill the 500-token budget in a few turns; the part to
    # summarise is longer than one request may be, and the first turn must still be read.
    fake = FakeLLMServer(reply=summariser)
    filler = "about nothing in particular, just filling the context with words; " * 4
    async with rig(tmp_path, fake=fake) as r:
        profile = r.tenant("t1", "sk-one")
        r.profiles.set(replace(profile, context_tokens=500, max_reply_tokens=60))
        await r.say("t1", "remember: my cat is called Miso")
        for i in range(10):
            await r.say("t1", f"turn {i} {filler}")
        summaries = [q for q in fake.requests if _system(q.body) == SUMMARY_SYSTEM]
        assert len(summaries) > 1
        stored = r.memory.turns[("t1", "chat")]
        assert stored[0].role == SUMMARY_ROLE and "Miso" in stored[0].content


def test_system_prompt_gains_the_summary() -> None:
    assert system_with_summary("Be terse.", "") == "Be terse."
    combined = system_with_summary("Be terse.", "Ada likes tea.")
    assert combined.startswith("Be terse.") and SUMMARY_CONTEXT_HEAD in combined
    assert combined.endswith("Ada likes tea.")


def summariser(messages: list[dict[str, Any]]) -> str:
    """Answers a summarisation request with the lines that mention "remember"; echoes otherwise."""
    last = str(messages[-1]["content"])
    if not last.startswith(SUMMARY_REQUEST_HEAD):
        return echo_reply(messages)
    kept = [
        line
        for line in last.splitlines()
        if "remember" in line.lower() and not line.startswith("Assistant:")
    ]
    return " ".join(dict.fromkeys(line.removeprefix("Person: ") for line in kept)) or "nothing"


def _system(body: dict[str, Any]) -> str:
    """The system prompt of a request in either API's shape."""
    system = body.get("system", "")
    if isinstance(system, list):
        system = " ".join(b["text"] for b in system)
    extra = [str(m["content"]) for m in body["messages"] if m["role"] == "system"]
    return " ".join([system, *extra]).strip()


@pytest.mark.parametrize("kind", ["anthropic", "openai-compatible"])
async def test_a_long_conversation_keeps_an_early_fact_through_compaction(
    tmp_path: Path, kind: str
) -> None:
    fake = FakeLLMServer(reply=summariser)
    async with rig(tmp_path, fake=fake) as r:
        profile = r.tenant("t1", "sk-one", kind=kind)
        r.profiles.set(replace(profile, context_tokens=400, max_reply_tokens=50))
        await r.say("t1", "remember: my cat is called Miso")
        for i in range(40):
            assert await r.say("t1", f"filler message number {i}") == (
                f"echo: filler message number {i}"
            )
        summaries = [q for q in fake.requests if _system(q.body) == SUMMARY_SYSTEM]
        assert summaries, "the budget never filled"
        assert all("tools" not in q.body for q in summaries)
        last = fake.requests[-1].body
        assert "Miso" in _system(last) or "Miso" in str(last["messages"])
        stored = r.memory.turns[("t1", "chat")]
        assert stored[0].role == SUMMARY_ROLE and "Miso" in stored[0].content
        assert cost("", stored) <= 400
        # Every request, summaries included, was booked.
        assert len(r.usage.records) == len(fake.requests)


async def test_compact_on_demand_summarises_everything_and_reports_it(tmp_path: Path) -> None:
    async with rig(tmp_path, fake=FakeLLMServer(reply=summariser)) as r:
        r.tenant("t1", "sk-one")
        assert await r.sup.compact("t1", "chat") is None
        await r.say("t1", "remember the door code 4711")
        await r.say("t1", "and something else")
        done = await r.sup.compact("t1", "chat")
        assert isinstance(done, Compacted) and done.turns == 4
        assert done.after_tokens < done.before_tokens
        assert r.memory.turns[("t1", "chat")] == [Turn(SUMMARY_ROLE, "remember the door code 4711")]
        assert await r.say("t1", "what was it?") == "echo: what was it?"
        assert "4711" in _system(r.fake.requests[-1].body)


async def test_compaction_can_be_switched_off_and_then_trims(tmp_path: Path) -> None:
    off = ConversationSettings(compaction=False)
    async with rig(tmp_path, fake=FakeLLMServer(reply=summariser), conversations=off) as r:
        profile = r.tenant("t1", "sk-one")
        r.profiles.set(replace(profile, context_tokens=300, max_reply_tokens=50))
        for i in range(30):
            await r.say("t1", f"remember filler {i}")
        assert all(_system(q.body) != SUMMARY_SYSTEM for q in r.fake.requests)
        assert len(r.fake.requests[-1].body["messages"]) < 60


async def test_a_failed_summary_falls_back_to_trimming(tmp_path: Path) -> None:
    async with rig(tmp_path, fake=FakeLLMServer(reply=summariser)) as r:
        profile = r.tenant("t1", "sk-one")
        profile = replace(profile, context_tokens=300, max_reply_tokens=50)
        r.profiles.set(profile)
        budget = 300 - 50 - estimate_tokens(profile.persona)
        for i in range(20):
            text = f"filler {i} " + "y" * 60
            summary, turns = split_summary(r.memory.turns.get(("t1", "chat"), []))
            if plan_compaction(summary, [*turns, Turn("user", text)], budget, budget // 2):
                break
            await r.say("t1", text)
        # The summarisation request fails; the reply itself goes through, trimmed.
        r.fake.fail(500)
        before = len(r.fake.requests)
        assert await r.say("t1", text) == f"echo: {text}"
        assert len(r.fake.requests) == before + 2
        assert _system(r.fake.requests[before].body) == SUMMARY_SYSTEM
        assert split_summary(r.memory.turns[("t1", "chat")])[0] == summary
