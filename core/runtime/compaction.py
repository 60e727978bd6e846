"""Long conversations: when the context budget fills, older turns become a summary.

The supervisor keeps a conversation as its turns, optionally led by one ``summary`` turn (what
earlier compactions left). Before a request it asks ``plan_compaction`` whether the turns still
fit the budget; when they do not, the older turns (and the previous summary) are sent to the
tenant's own model in one summarisation request — through the same key or the managed proxy,
so it is metered like any reply — and replaced by the model's summary. Pure functions here;
the requests are the supervisor's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from core.runtime.ports import Turn

SUMMARY_ROLE: Final = "summary"
"""The role of the one turn that holds the summary of compacted turns (never sent as is)."""

SUMMARY_SYSTEM: Final = (
    "You compress chat history. Write a concise summary of the conversation you are given, "
    "in the language it is written in. Keep every fact the person stated about themselves or "
    "their world, names, numbers, dates, preferences, decisions and open questions or tasks. "
    "Write plain sentences, no preamble."
)

SUMMARY_REQUEST_HEAD: Final = "Summarise this conversation between a person and their assistant."
"""First line of the summarisation request's user message (fakes recognise it by this)."""

SUMMARY_CONTEXT_HEAD: Final = "Summary of the earlier part of this conversation"


def estimate_tokens(text: str) -> int:
    """A provider-neutral token estimate (~4 characters a token, plus framing)."""
    return len(text) // 4 + 4


def split_summary(turns: Sequence[Turn]) -> tuple[str, list[Turn]]:
    """``(summary, turns)``: the stored summary (or "") and the remembered messages after it."""
    if turns and turns[0].role == SUMMARY_ROLE:
        return turns[0].content, list(turns[1:])
    return "", [t for t in turns if t.role != SUMMARY_ROLE]


def join_summary(summary: str, turns: Sequence[Turn]) -> list[Turn]:
    """The stored form: the summary turn first (when there is one), then the messages."""
    return [Turn(SUMMARY_ROLE, summary), *turns] if summary else list(turns)


def cost(summary: str, turns: Sequence[Turn]) -> int:
    """Estimated tokens of a summary and turns as sent to the model."""
    return (estimate_tokens(summary) if summary else 0) + sum(
        estimate_tokens(t.content) for t in turns
    )


@dataclass(frozen=True, slots=True)
class Split:
    """Which turns a compaction summarises (``old``) and which it keeps as they are."""

    old: list[Turn]
    recent: list[Turn]


def recent_start(turns: Sequence[Turn], keep_tokens: int) -> int:
    """Index of the first turn kept: the newest that fit ``keep_tokens``, from a user turn.

    The last turn is always kept. A kept tail never starts with an assistant turn (both APIs
    want the person to speak first).
    """
    used = 0
    start = len(turns)
    for i in range(len(turns) - 1, -1, -1):
        c = estimate_tokens(turns[i].content)
        if start < len(turns) and used + c > keep_tokens:
            break
        used += c
        start = i
    while start < len(turns) - 1 and turns[start].role != "user":
        start += 1
    return start


def plan_compaction(
    summary: str, turns: Sequence[Turn], budget: int, keep_tokens: int
) -> Split | None:
    """The split to summarise when ``summary`` and ``turns`` overflow ``budget``; else None.

    ``turns`` ends with the new message. None also when nothing older than the kept tail is
    left to summarise (a single huge message: the caller trims and the provider says so).
    """
    if cost(summary, turns) <= budget:
        return None
    start = recent_start(turns, min(keep_tokens, budget))
    if start == 0:
        return None
    return Split(old=list(turns[:start]), recent=list(turns[start:]))


def _line(turn: Turn) -> str:
    return f"{'Person' if turn.role == 'user' else 'Assistant'}: {turn.content}"


def passes(turns: Sequence[Turn], limit_chars: int, summary_chars: int) -> list[list[Turn]]:
    """``turns`` in consecutive groups whose transcripts each fit ``limit_chars``.

    Each group is summarised with the summary of the groups before it (at most
    ``summary_chars`` long), so the oldest turns are read by the model rather than cut from
    one overlong request. A turn too long for any request is a group of its own (its start is
    cut, as ``transcript`` does).
    """
    head = len(SUMMARY_REQUEST_HEAD) + len(SUMMARY_CONTEXT_HEAD) + summary_chars + 60
    room = max(limit_chars - head, 1)
    groups: list[list[Turn]] = []
    size = 0
    for turn in turns:
        n = len(_line(turn)) + 1
        if groups and size + n <= room:
            groups[-1].append(turn)
            size += n
        else:
            groups.append([turn])
            size = n
    return groups


def transcript(summary: str, turns: Sequence[Turn], limit_chars: int) -> str:
    """The summarisation request's user message: the old summary and the turns, bounded.

    Over ``limit_chars`` the oldest turns go first (the old summary already covers the gist).
    """
    lines = [_line(t) for t in turns]
    head = SUMMARY_REQUEST_HEAD
    if summary:
        head += f"\n\n{SUMMARY_CONTEXT_HEAD}:\n{summary}"
    body = "\n".join(lines)
    room = max(limit_chars - len(head) - 40, 0)
    if len(body) > room:
        body = body[len(body) - room :]
    return f"{head}\n\nConversation:\n{body}"


def system_with_summary(persona: str, summary: str) -> str:
    """The system prompt of a reply: the persona, then the summary of compacted turns."""
    if not summary:
        return persona
    return f"{persona}\n\n{SUMMARY_CONTEXT_HEAD} (older messages were compacted):\n{summary}"
