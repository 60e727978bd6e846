"""The agent line protocol: every message round-trips; bad lines are refused without echo."""

from __future__ import annotations

import json

import pytest

from core.llm import ChatMessage
from core.runtime import protocol
from core.runtime.errors import ProtocolError
from core.secret import Secret

MESSAGES: list[protocol.Message] = [
    protocol.Configure(
        "anthropic", "https://api.anthropic.com", Secret("sk-x"), "/w", 120.0, 512, 256
    ),
    protocol.Request(
        "1", (ChatMessage("user", "hi\nthere"), ChatMessage("assistant", "é")), "m", "p", 99
    ),
    protocol.Cancel("1"),
    protocol.Ready(pid=42),
    protocol.Chunk("1", 'text with "quotes"\n'),
    protocol.UsageReport("1", 10, 20),
    protocol.Error("1", "rate_limited", "slow", 2.5),
    protocol.Error("1", "overloaded", "busy", None),
    protocol.Done("1"),
    protocol.TaskEvent("1", "2026-12-03T09:00", "water the cactus", "a1b2c3"),
    protocol.TaskResult("1", "a1b2c3", True, "Scheduled. Next run: …"),
    protocol.TaskResult("1", "a1b2c3", False, "Not scheduled: limit"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_is_one_line(msg: protocol.Message) -> None:
    line = protocol.encode(msg)
    assert (line.count(b"\n"), line.endswith(b"\n"), protocol.decode(line)) == (1, True, msg)


def test_configure_carries_the_key_only_on_the_wire() -> None:
    msg = MESSAGES[0]
    assert json.loads(protocol.encode(msg))["api_key"] == "sk-x"
    assert "sk-x" not in repr(msg)


def test_external_agent_lines_with_extra_fields_are_accepted() -> None:
    line = b'{"type":"chunk","id":"7","text":"a","extra":1}'
    assert protocol.decode(line) == protocol.Chunk("7", "a")


def test_a_task_event_without_ref_still_decodes() -> None:
    # Agents written before task_result send no ref; byokbot then sends them no answer.
    line = b'{"type":"task","id":"3","when":"0 8 * * *","prompt":"news"}'
    assert protocol.decode(line) == protocol.TaskEvent("3", "0 8 * * *", "news", "")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (
            b'{"type":"task_result","id":"1","ref":"r","ok":"false","message":"m"}',
            "task_result.ok must be true or false",
        ),
        (b"not json sk-secret", "line is not JSON"),
        (b"[1,2]", "line is not a JSON object"),
        (b'{"type":"launch"}', "unknown message type"),
        (b'{"type":"chunk","id":"1"}', "a message is missing a field"),
        (b'{"type":"chunk","id":1,"text":"x"}', "id must be a string"),
        (b'{"type":"usage","id":"1","input":"3","output":1}', "input must be a number"),
        (
            b'{"type":"error","id":"1","code":"x","retry_after":"soon"}',
            "error.retry_after must be a number or null",
        ),
        (
            b'{"type":"request","id":"1","messages":{},"model":"m","system":"","max_tokens":1}',
            "request.messages must be a list",
        ),
    ],
)
def test_bad_lines_are_refused_without_quoting_them(line: bytes, why: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(line)
    assert str(info.value) == why
