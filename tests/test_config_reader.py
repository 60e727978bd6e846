"""``core.config.TableReader``: typed reads, bounds, wording, unknown settings; file names."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.config import TableReader, parse_config
from core.errors import ConfigError


def reader(**data: Any) -> TableReader:
    return TableReader("bot.toml", "demo", data)


def error(read: Callable[[TableReader], object], **data: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        read(reader(**data))
    return str(caught.value)


def test_absent_settings_give_the_defaults_and_finish_passes() -> None:
    r = reader()
    assert r.string("s", "x") == "x"
    assert r.boolean("b", True) is True
    assert r.integer("i", 3, minimum=0, maximum=5) == 3
    assert r.number("n", 1.5, above=0) == 1.5
    assert r.choice("c", ("a", "b"), "b") == "b"
    assert r.env_name("e", "MY_VAR") == "MY_VAR"
    assert r.url("u", "https://example.com/") == "https://example.com"
    assert r.strings("l", ("p", "q")) == ("p", "q")
    r.finish()


def test_present_settings_are_read_and_converted() -> None:
    r = reader(s="hi", b=False, i=4, n=2, e="MY_VAR", u="http://127.0.0.1:9/api/", l=["x"])
    assert r.string("s", "") == "hi"
    assert r.boolean("b", True) is False
    assert r.integer("i", 0, minimum=0, maximum=5) == 4
    number = r.number("n", 0.0, minimum=0, maximum=5)
    assert (number, type(number)) == (2.0, float)
    assert r.env_name("e", "X") == "MY_VAR"
    assert r.url("u", "") == "http://127.0.0.1:9/api"
    assert r.strings("l", ()) == ("x",)
    r.finish()


@pytest.mark.parametrize(
    ("read", "data", "message"),
    [
        (lambda r: r.string("k", ""), {"k": 1}, "bot.toml: [demo] k must be a string"),
        (
            lambda r: r.string("k", "x", non_empty=True),
            {"k": ""},
            "bot.toml: [demo] k must be a non-empty string",
        ),
        (
            lambda r: r.string("k", "x", non_empty=True),
            {"k": 5},
            "bot.toml: [demo] k must be a non-empty string",
        ),
        (lambda r: r.boolean("k", True), {"k": 1}, "bot.toml: [demo] k must be true or false"),
        (
            lambda r: r.boolean("k", True, show_got=True),
            {"k": "yes"},
            "bot.toml: [demo] k must be true or false (got 'yes')",
        ),
        (lambda r: r.integer("k", 1), {"k": True}, "bot.toml: [demo] k must be an integer"),
        (lambda r: r.integer("k", 1), {"k": 1.5}, "bot.toml: [demo] k must be an integer"),
        (lambda r: r.number("k", 1.0), {"k": False}, "bot.toml: [demo] k must be a number"),
        (
            lambda r: r.integer("k", 1, minimum=0, maximum=50),
            {"k": 90},
            "bot.toml: [demo] k must be between 0 and 50 (got 90)",
        ),
        (
            lambda r: r.number("k", 1.0, minimum=0.0, maximum=60.0),
            {"k": 99},
            "bot.toml: [demo] k must be between 0.0 and 60.0 (got 99)",
        ),
        (
            lambda r: r.number("k", 1.0, above=0, maximum=2.5),
            {"k": 0},
            "bot.toml: [demo] k must be more than 0 and at most 2.5 (got 0)",
        ),
        (
            lambda r: r.integer("k", 1, minimum=1),
            {"k": 0},
            "bot.toml: [demo] k must be at least 1 (got 0)",
        ),
        (
            lambda r: r.number("k", 1.0, maximum=60),
            {"k": 61.5},
            "bot.toml: [demo] k must be at most 60 (got 61.5)",
        ),
        (
            lambda r: r.number("k", 1.0, above=0, must="be a number of seconds"),
            {"k": "1s"},
            "bot.toml: [demo] k must be a number of seconds",
        ),
        (
            lambda r: r.number("k", 1.0, show_got=True),
            {"k": "fast"},
            "bot.toml: [demo] k must be a number (got 'fast')",
        ),
        (
            lambda r: r.integer(
                "k", 1, minimum=0, maximum=9, out_of_range="be a single digit", show_got=True
            ),
            {"k": 10},
            "bot.toml: [demo] k must be a single digit (got 10)",
        ),
        (
            lambda r: r.positive_int("k", 1),
            {"k": 0},
            "bot.toml: [demo] k must be a positive integer",
        ),
        (
            lambda r: r.optional_positive("k", float),
            {"k": -1},
            "bot.toml: [demo] k must be a positive number",
        ),
        (
            lambda r: r.strings("k", ()),
            {"k": ["a", ""]},
            "bot.toml: [demo] k must be a list of non-empty strings",
        ),
        (
            lambda r: r.choice("k", ("a", "b"), "a"),
            {"k": "c"},
            "bot.toml: [demo] k must be one of a, b (got 'c')",
        ),
        (
            lambda r: r.env_name("k", "X"),
            {"k": "sk-123"},
            "bot.toml: [demo] k must name an environment variable (got 'sk-123')",
        ),
        (
            lambda r: r.env_name("k", "X"),
            {"k": "NAME\n"},
            "bot.toml: [demo] k must name an environment variable (got 'NAME\\n')",
        ),
        (
            lambda r: r.env_name("k", "X", optional=True),
            {"k": "1X"},
            "bot.toml: [demo] k must name an environment variable (got '1X')",
        ),
        (
            lambda r: r.url("k", ""),
            {"k": "ftp://x"},
            "bot.toml: [demo] k must be an http:// or https:// URL",
        ),
        (
            lambda r: r.url("k", "", schemes=("ws://", "wss://"), show_got=True),
            {"k": "http://x"},
            "bot.toml: [demo] k must be an ws:// or wss:// URL (got 'http://x')",
        ),
        (
            lambda r: r.url("k", "", must="start with a scheme"),
            {"k": "x"},
            "bot.toml: [demo] k must start with a scheme",
        ),
        (
            lambda r: r.url("k", ""),
            {"k": "https://u:p@example.com/v1"},
            "bot.toml: [demo] k must not carry credentials",
        ),
        (
            lambda r: r.url("k", "", hint="; name a variable"),
            {"k": "https://token@example.com"},
            "bot.toml: [demo] k must not carry credentials; name a variable",
        ),
        (
            lambda r: r.url("k", "https://x"),
            {"k": ""},
            "bot.toml: [demo] k must be an http:// or https:// URL",
        ),
    ],
)
def test_errors_name_the_file_table_and_setting(
    read: Callable[[TableReader], object], data: dict[str, Any], message: str
) -> None:
    assert error(read, **data) == message


def test_optional_env_name_and_url_accept_the_empty_string() -> None:
    r = reader(e="", u="")
    assert r.env_name("e", "X", optional=True) == ""
    assert r.url("u", "https://x", optional=True) == ""
    r.finish()


def test_finish_names_the_first_unknown_setting_alphabetically() -> None:
    r = reader(known=1, zebra=2, apple=3)
    assert r.integer("known", 0) == 1
    with pytest.raises(ConfigError) as caught:
        r.finish()
    assert str(caught.value) == "bot.toml: [demo] apple is not a known setting"


def test_a_setting_read_twice_is_known_once() -> None:
    r = reader(u="https://example.com")
    assert r.string("u", "") == "https://example.com"
    assert r.url("u", "") == "https://example.com"
    r.finish()


@pytest.mark.parametrize("platform", ["telegram", "discord", "slack"])
def test_every_adapter_names_the_configuration_file(platform: str, tmp_path: Path) -> None:
    config = parse_config(
        {platform: {"enabled": True, "colour": "red"}}, source="prod.toml", base_dir=tmp_path
    )
    build = importlib.import_module(f"adapters.{platform}").build
    with pytest.raises(ConfigError) as caught:
        build(config.platforms[platform], {}, config=config)
    assert str(caught.value) == f"prod.toml: [{platform}] colour is not a known setting"
