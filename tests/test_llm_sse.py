"""The SSE parser against the framing rules providers rely on."""

from __future__ import annotations

from collections.abc import AsyncIterator

from core.llm.sse import SSEEvent, iter_sse


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def _parse(*lines: str) -> list[SSEEvent]:
    return [e async for e in iter_sse(_lines(*lines))]


async def test_named_events_and_default_name() -> None:
    events = await _parse("event: ping", "data: {}", "", "data: x", "")
    assert events == [SSEEvent("ping", "{}"), SSEEvent("message", "x")]


async def test_multiline_data_is_joined_with_newlines() -> None:
    assert await _parse("data: a", "data: b", "") == [SSEEvent("message", "a\nb")]


async def test_comments_ids_and_blank_runs_are_ignored() -> None:
    events = await _parse(": keepalive", "", "", "id: 7", "retry: 10", "data:no-space", "")
    assert events == [SSEEvent("message", "no-space")]


async def test_only_one_leading_space_is_stripped_and_crlf_tolerated() -> None:
    assert await _parse("data:  two\r", "\r") == [SSEEvent("message", " two")]


async def test_unterminated_last_event_is_dispatched() -> None:
    assert await _parse("event: e", "data: tail") == [SSEEvent("e", "tail")]


async def test_event_name_without_data_dispatches_nothing() -> None:
    assert await _parse("event: lonely", "") == []
