"""The streaming relay's event splitting: reads cut anywhere, metering, rewrites."""

from __future__ import annotations

import json
from typing import Any, cast

from core.proxy.server import _relayed
from core.proxy.upstream import Reply
from core.proxy.wire import ANTHROPIC, OPENAI, Meter


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    body = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {body}\n\n".encode()


ANTHROPIC_STREAM = b"".join(
    [
        sse(
            {
                "type": "message_start",
                "message": {"id": "m1", "usage": {"input_tokens": 21, "output_tokens": 1}},
            },
            "message_start",
        ),
        sse(
            {"type": "content_block_start", "index": 0, "content_block": {}}, "content_block_start"
        ),
        sse({"type": "ping"}, "ping"),
        *(
            sse(
                {"type": "content_block_delta", "index": 0, "delta": {"text": f"w{i}\\n\\n"}},
                "content_block_delta",
            )
            for i in range(5)
        ),
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 9}}, "message_delta"),
        sse({"type": "message_stop"}, "message_stop"),
    ]
)


class _Upstream:
    """An upstream reply whose body arrives in the given reads."""

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = list(reads)

    async def readany(self) -> bytes:
        return self._reads.pop(0) if self._reads else b""


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def relay(
    reads: list[bytes], api: str, *, keep_usage: bool = False
) -> tuple[list[bytes], Meter]:
    meter = Meter()
    upstream = cast(Reply, _Upstream(reads))
    return [item async for item in _relayed(upstream, api, meter, keep_usage)], meter


async def test_anthropic_events_pass_unchanged_however_the_reads_cut_them() -> None:
    for size in (1, 2, 7, 64, len(ANTHROPIC_STREAM)):
        out, meter = await relay(pieces(ANTHROPIC_STREAM, size), ANTHROPIC)
        assert b"".join(out) == ANTHROPIC_STREAM
        assert all(chunk.endswith(b"\n\n") for chunk in out)
        assert (meter.input_tokens, meter.output_tokens, meter.deltas, meter.final) == (
            21,
            9,
            5,
            True,
        )


async def test_crlf_line_ends_are_normalised_even_when_split_between_reads() -> None:
    crlf = ANTHROPIC_STREAM.replace(b"\n", b"\r\n")
    cut = crlf.index(b"\r\n\r\n") + 1  # between the \r and the \n
    out, meter = await relay([crlf[:cut], crlf[cut:]], ANTHROPIC)
    assert b"".join(out) == ANTHROPIC_STREAM
    assert (meter.input_tokens, meter.output_tokens, meter.final) == (21, 9, True)


async def test_an_error_event_is_rewritten_without_the_upstreams_text() -> None:
    error = sse(
        {"type": "error", "error": {"type": "overloaded_error", "message": "sk-ant-secret"}},
        "error",
    )
    head = ANTHROPIC_STREAM[: ANTHROPIC_STREAM.index(b"event: ping")]
    out, _ = await relay([head + error], ANTHROPIC)
    sent = b"".join(out)
    assert b"sk-ant-secret" not in sent
    assert sent.startswith(head + b"event: error\ndata: {")
    assert b'"type":"overloaded_error"' in sent


OPENAI_STREAM = [
    sse({"choices": [{"index": 0, "delta": {"content": "hi"}}]}),
    sse({"choices": [{"index": 0, "delta": {"content": " there"}}]}),
    sse({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}),
    sse("[DONE]"),
]


async def test_openai_usage_chunk_is_dropped_unless_the_client_asked_for_it() -> None:
    out, meter = await relay([b"".join(OPENAI_STREAM)], OPENAI)
    assert out == [OPENAI_STREAM[0] + OPENAI_STREAM[1] + OPENAI_STREAM[3]]
    assert (meter.input_tokens, meter.output_tokens, meter.deltas) == (7, 2, 2)
    out, _ = await relay(OPENAI_STREAM, OPENAI, keep_usage=True)
    assert out == OPENAI_STREAM


async def test_a_stream_without_a_final_blank_line_is_still_metered_and_sent() -> None:
    out, meter = await relay([OPENAI_STREAM[0], OPENAI_STREAM[2][:-2]], OPENAI, keep_usage=True)
    assert out == [OPENAI_STREAM[0], OPENAI_STREAM[2]]
    assert (meter.input_tokens, meter.output_tokens, meter.final) == (7, 2, True)


async def test_the_stream_has_ended_only_at_its_last_event_even_with_running_usage() -> None:
    # Some OpenAI-compatible servers send running usage in every chunk: the settlement must
    # wait for [DONE], or it would bill the first chunk's figures.
    running = [
        sse(
            {
                "choices": [{"index": 0, "delta": {"content": f"w{i}"}}],
                "usage": {"prompt_tokens": 7, "completion_tokens": i + 1},
            }
        )
        for i in range(4)
    ]
    meter = Meter()
    upstream = cast(Reply, _Upstream([*running, sse("[DONE]")]))
    seen: list[tuple[bool, int]] = []
    async for _ in _relayed(upstream, OPENAI, meter, True):
        seen.append((meter.ended, meter.output_tokens))
    assert seen == [(False, 1), (False, 2), (False, 3), (False, 4), (True, 4)]
    _, anthropic = await relay(pieces(ANTHROPIC_STREAM, 7), ANTHROPIC)
    assert anthropic.ended
    _, cut = await relay(
        [ANTHROPIC_STREAM[: ANTHROPIC_STREAM.index(b"event: message_stop")]], ANTHROPIC
    )
    assert cut.final is False and cut.ended is False
