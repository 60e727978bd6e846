"""``[tools]``, ``[plans.<id>.tools]``, ``[agent] max_tool_steps`` and protocol version 2 lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.agent_data import offered_tools
from core.config import parse_config
from core.errors import ConfigError
from core.llm import ChatMessage
from core.runtime import protocol
from core.runtime.errors import ProtocolError
from core.secret import Secret


def parse(data: dict[str, Any]) -> Any:
    return parse_config(data, source="config.toml", base_dir=Path("/tmp"))


def test_defaults_offer_fetch_and_notes_but_no_search_without_a_backend() -> None:
    config = parse({})
    assert config.agent.max_tool_steps == 8
    assert config.tools.web_fetch.allow_networks == ()
    assert offered_tools(config, config.plans["byok"]) == (
        "web_fetch",
        "remember",
        "recall",
        "forget",
        "schedule_task",
    )


def test_plan_switches_and_a_search_backend() -> None:
    config = parse(
        {
            "plans": {"byok": {"tools": {"notes": False}}},
            "tools": {"web_search": {"backend": "searxng", "url": "https://searx.example.org/"}},
        }
    )
    assert offered_tools(config, config.plans["byok"]) == (
        "web_fetch",
        "web_search",
        "schedule_task",
    )
    assert config.tools.web_search.url == "https://searx.example.org"
    assert offered_tools(parse({"agent": {"max_tool_steps": 0}}), config.plans["byok"]) == ()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (
            {"plans": {"byok": {"tools": {"shell": True}}}},
            "[plans.byok.tools] shell is not a known setting",
        ),
        (
            {"plans": {"byok": {"tools": {"web_fetch": "yes"}}}},
            "[plans.byok.tools] web_fetch must be true or false",
        ),
        ({"tools": {"web_fetch": {"allow_networks": ["localhost"]}}}, "entries must be CIDRs"),
        ({"tools": {"web_fetch": {"max_redirects": 99}}}, "max_redirects must be between 0 and 20"),
        ({"tools": {"web_search": {"backend": "google"}}}, "backend must be one of"),
        ({"tools": {"web_search": {"backend": "searxng"}}}, "[tools.web_search] url is required"),
        (
            {"tools": {"web_search": {"backend": "brave", "url": "https://api.search.brave.com"}}},
            "key_env is required",
        ),
        ({"tools": {"browser": {}}}, "[tools] browser is not a known setting"),
        ({"agent": {"max_tool_steps": -1}}, "max_tool_steps must be between 0 and 50"),
    ],
)
def test_bad_tool_settings_are_named(data: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(data)
    assert error in str(exc.value)


def test_the_catalog_marks_models_without_tools() -> None:
    config = parse(
        {
            "proxy": {
                "models": {
                    "m": {
                        "upstream": "anthropic",
                        "input_usd_per_mtok": 1,
                        "output_usd_per_mtok": 1,
                        "tools": False,
                    }
                }
            },
            "plans": {"managed": {"models": ["m"]}},
        }
    )
    assert config.proxy.models["m"].tools is False


def test_version_2_lines_round_trip() -> None:
    cfg = protocol.Configure(
        "anthropic",
        "http://x",
        Secret("k"),
        "/w",
        5.0,
        1,
        1,
        tools=protocol.ToolConfig(allow_networks=("127.0.0.2/32",), search_key=Secret("s")),
    )
    back = protocol.decode(protocol.encode(cfg))
    assert isinstance(back, protocol.Configure)
    assert back.tools.allow_networks == ("127.0.0.2/32",)
    assert back.tools.search_key == Secret("s")
    req = protocol.Request(
        "1", (ChatMessage("user", "hi"),), "m", "", 9, ("recall",), (protocol.Note("a1", "x"),)
    )
    assert protocol.decode(protocol.encode(req)) == req
    for msg in (
        protocol.ToolEvent("1", "c", "web_fetch", "start", "example.com"),
        protocol.NoteEvent("1", "add", "a1", "text"),
    ):
        assert protocol.decode(protocol.encode(msg)) == msg


def test_version_1_lines_still_parse() -> None:
    line = (
        '{"type":"configure","version":1,"provider_kind":"anthropic","base_url":"http://x",'
        '"api_key":"k","workdir":"/w","request_timeout":5,"memory_limit_mb":1,"max_open_files":1}'
    )
    cfg = protocol.decode(line)
    assert isinstance(cfg, protocol.Configure) and cfg.tools == protocol.ToolConfig()
    req = protocol.decode(
        '{"type":"request","id":"1","messages":[],"model":"m","system":"","max_tokens":1}'
    )
    assert isinstance(req, protocol.Request) and req.tools == () and req.notes == ()
    assert protocol.decode('{"type":"ready","version":1,"pid":3}') == protocol.Ready(3, 1)


@pytest.mark.parametrize(
    "line",
    [
        '{"type":"tool","id":"1","name":"x","state":"maybe"}',
        '{"type":"note","id":"1","op":"edit","note":"a"}',
        '{"type":"request","id":"1","messages":[],"model":"m","system":"","max_tokens":1,"tools":"x"}',
        '{"type":"configure","version":2,"provider_kind":"a","base_url":"b","api_key":"k","workdir":"w","request_timeout":1,"memory_limit_mb":1,"max_open_files":1,"tools":{"max_steps":"x"}}',
    ],
)
def test_bad_version_2_lines_are_protocol_errors(line: str) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode(line)
