"""A small Server-Sent Events parser over an async stream of text lines (WHATWG rules)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: ``event`` is "message" unless the server named it."""

    event: str
    data: str


async def iter_sse(lines: AsyncIterator[str]) -> AsyncIterator[SSEEvent]:
    """Turn lines (without their line endings) into events.

    ``data`` fields accumulate joined by newlines; a blank line dispatches; comments (``:``) and
    the ``id``/``retry`` fields are ignored. An event left without a closing blank line at the
    end of the stream is still dispatched, as browsers do.
    """
    event = ""
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield SSEEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield SSEEvent(event or "message", "\n".join(data))
