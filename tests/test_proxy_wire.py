"""Wire helpers: folding streams into replies (text and tools), metering, sanitised errors."""

from __future__ import annotations

from typing import Any

from core.proxy.wire import (
    AnthropicMessage,
    Meter,
    OpenAICompletion,
    error_body,
    sanitized_error,
    status_of_stream_error,
)


def test_an_anthropic_stream_with_text_and_a_tool_call_folds_into_a_message() -> None:
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_9",
                "type": "message",
                "role": "assistant",
                "model": "claude-x",
                "content": [],
                "usage": {"input_tokens": 12, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Let me "},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "check."},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 30},
        },
        {"type": "message_stop"},
    ]
    folder, meter = AnthropicMessage(), Meter()
    for e in events:
        folder.feed(e)
        meter.feed("anthropic", e)
    assert folder.result() == {
        "id": "msg_9",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 30},
    }
    assert (meter.final, meter.billed(999)) == (True, (12, 30))


def test_openai_chunks_with_tool_calls_fold_into_a_completion() -> None:
    chunks: list[dict[str, Any]] = [
        {
            "id": "c9",
            "created": 7,
            "model": "gpt-x",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}],
        },
        {
            "id": "c9",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "weather", "arguments": ""},
                            }
                        ]
                    },
                }
            ],
        },
        {
            "id": "c9",
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
                }
            ],
        },
        {
            "id": "c9",
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
                }
            ],
        },
        {"id": "c9", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {
            "id": "c9",
            "choices": [],
            "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29},
        },
    ]
    folder, meter = OpenAICompletion(), Meter()
    for c in chunks:
        folder.feed(c)
        meter.feed("openai-compatible", c)
    assert folder.result() == {
        "object": "chat.completion",
        "id": "c9",
        "created": 7,
        "model": "gpt-x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29},
    }
    assert meter.billed(999) == (20, 9)


def test_a_stream_cut_short_is_billed_what_is_known() -> None:
    nothing = Meter()
    assert nothing.billed(500) == (0, 0)
    anthropic = Meter()
    anthropic.feed(
        "anthropic",
        {"type": "message_start", "message": {"usage": {"input_tokens": 40, "output_tokens": 1}}},
    )
    anthropic.deltas = 7
    assert anthropic.billed(500) == (40, 7)
    openai = Meter()
    openai.deltas = 3  # no usage chunk yet: the prompt is billed at the reservation's estimate
    assert openai.billed(500) == (500, 3)


def test_errors_keep_type_and_status_but_never_the_providers_text() -> None:
    key = "sk-ant-api03-" + "Z" * 93 + "AA"
    upstream = {"type": "error", "error": {"type": "overloaded_error", "message": f"busy {key}"}}
    assert sanitized_error("anthropic", upstream, 529) == {
        "type": "error",
        "error": {
            "type": "overloaded_error",
            "message": "upstream provider error (HTTP 529, overloaded_error)",
        },
    }
    openai = {
        "error": {
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
            "message": key,
        }
    }
    assert sanitized_error("openai-compatible", openai, 400) == {
        "error": {
            "message": "upstream provider error (HTTP 400, invalid_request_error)",
            "type": "invalid_request_error",
            "param": None,
            "code": "context_length_exceeded",
        }
    }
    assert (
        sanitized_error("anthropic", {"error": {"type": "x" * 80}}, 500)["error"]["type"]
        == "api_error"
    )
    assert sanitized_error("anthropic", "not json", 502)["error"]["type"] == "api_error"
    assert status_of_stream_error(upstream) == 529
    assert status_of_stream_error({"error": {"type": "something_new"}}) == 502


def test_the_proxys_own_errors_in_both_formats() -> None:
    assert error_body("anthropic", "model_not_in_plan", "m") == {
        "type": "error",
        "error": {"type": "model_not_in_plan", "message": "m"},
    }
    assert error_body("openai-compatible", "usage_cap_reached", "m") == {
        "error": {
            "message": "m",
            "type": "insufficient_quota",
            "param": None,
            "code": "usage_cap_reached",
        }
    }
    assert error_body("openai-compatible", "weird", "m")["error"]["type"] == "weird"
