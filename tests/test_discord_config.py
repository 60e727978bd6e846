"""The [discord] table: defaults, overrides, precise errors, token from the environment."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from adapters.discord import DiscordAdapter, build
from adapters.discord.config import DiscordConfig, parse
from core.config import PlatformSettings
from core.errors import ConfigError
from core.secret import Secret


def settings(**options: Any) -> PlatformSettings:
    return PlatformSettings(name="discord", enabled=True, options=MappingProxyType(options))


def test_defaults_with_token_from_environment() -> None:
    cfg = parse(settings(), {"DISCORD_BOT_TOKEN": "abc.def.ghi"})
    assert cfg == DiscordConfig(token=Secret("abc.def.ghi"))
    assert cfg is not None
    assert (cfg.api_base_url, cfg.gateway_url, cfg.edit_interval) == (
        "https://discord.com/api/v10",
        "wss://gateway.discord.gg",
        1.0,
    )


def test_overrides() -> None:
    cfg = parse(
        settings(
            token_env="MY_DISCORD",
            guild_ids=[123, "456"],
            agent_channels=["789"],
            api_base_url="http://127.0.0.1:9/api/v10/",
            gateway_url="ws://127.0.0.1:9/gw",
            message_content_intent=False,
            sync_commands=False,
            edit_interval=2,
            defer_after=0.5,
        ),
        {"MY_DISCORD": "tok"},
    )
    assert cfg == DiscordConfig(
        token=Secret("tok"),
        token_env="MY_DISCORD",
        guild_ids=("123", "456"),
        agent_channels=("789",),
        api_base_url="http://127.0.0.1:9/api/v10",
        gateway_url="ws://127.0.0.1:9/gw",
        message_content_intent=False,
        sync_commands=False,
        edit_interval=2.0,
        defer_after=0.5,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": "blue"}, "config.toml: [discord] colour is not a known setting"),
        ({"token": "x"}, "config.toml: [discord] token is not a known setting"),
        (
            {"guild_ids": ["abc"]},
            "config.toml: [discord] guild_ids must be a list of numeric Discord ids (got 'abc')",
        ),
        ({"guild_ids": "123"}, "config.toml: [discord] guild_ids must be a list of ids"),
        (
            {"api_base_url": "ftp://x"},
            "config.toml: [discord] api_base_url must start with http:// or https:// (got 'ftp://x')",
        ),
        (
            {"gateway_url": "https://x"},
            "config.toml: [discord] gateway_url must start with ws:// or wss:// (got 'https://x')",
        ),
        (
            {"api_base_url": "https://u:p@x"},
            "config.toml: [discord] api_base_url must not carry credentials",
        ),
        (
            {"defer_after": 3},
            "config.toml: [discord] defer_after must be more than 0 and at most 2.5 (got 3)",
        ),
        (
            {"edit_interval": "fast"},
            "config.toml: [discord] edit_interval must be a number of seconds",
        ),
        ({"sync_commands": "yes"}, "config.toml: [discord] sync_commands must be true or false"),
        ({"token_env": ""}, "config.toml: [discord] token_env must be a non-empty string"),
        (
            {"shard_count": 2},
            "config.toml: [discord] shard_ids must name the shards of the 2 this process serves",
        ),
        (
            {"shard_count": 2, "shard_ids": [2]},
            "config.toml: [discord] shard_ids must be numbers from 0 to 1 (got 2)",
        ),
        (
            {"shard_count": 3, "shard_ids": [1, 1]},
            "config.toml: [discord] shard_ids names shard 1 twice",
        ),
        (
            {"shard_ids": [0, "1"]},
            "config.toml: [discord] shard_ids must be numbers from 0 to 0 (got '1')",
        ),
    ],
)
def test_bad_settings_are_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(settings(**options), {"DISCORD_BOT_TOKEN": "tok"})
    assert str(info.value) == message


def test_build_without_token_stops_startup() -> None:
    with pytest.raises(ConfigError) as info:
        build(settings(token_env="NOPE"), {"NOPE": "  "})
    assert str(info.value) == (
        "config.toml: [discord] is enabled but NOPE is not set "
        "(export the bot token, or set enabled = false)"
    )


def test_build_with_token_returns_adapter() -> None:
    adapter = build(settings(), {"DISCORD_BOT_TOKEN": "tok"})
    assert isinstance(adapter, DiscordAdapter)
    assert adapter.messenger is adapter


def test_bad_settings_raise_even_without_token() -> None:
    with pytest.raises(ConfigError):
        build(settings(colour="blue"), {})


def test_documented_section_parses_to_the_defaults() -> None:
    import tomllib
    from pathlib import Path

    from core.config import parse_config

    doc = Path(__file__).resolve().parent.parent / "docs" / "config-discord.toml"
    config = parse_config(tomllib.loads(doc.read_text()), source="x.toml", base_dir=doc.parent)
    assert parse(config.platforms["discord"], {"DISCORD_BOT_TOKEN": "t"}) == DiscordConfig(
        token=Secret("t")
    )


def test_build_takes_choices_from_the_configuration() -> None:
    from core.config import Config
    from core.proxy.config import ProxySettings

    adapter = build(settings(), {"DISCORD_BOT_TOKEN": "tok"}, config=Config())
    assert adapter is not None
    catalog = adapter._catalog
    assert catalog.providers == ("anthropic", "openai", "moonshot")
    assert catalog.plans == ("byok",)  # managed only with the metering proxy on
    on = build(
        settings(), {"DISCORD_BOT_TOKEN": "tok"}, config=Config(proxy=ProxySettings(enabled=True))
    )
    assert on is not None and on._catalog.plans == ("byok", "managed")
    assert catalog.models == (
        "claude-sonnet-4-5",
        "gpt-4.1-mini",
        "kimi-k2-0905-preview",
    )


def test_shards_are_read_and_shard_0_serves_dms() -> None:
    cfg = parse(settings(shard_count=4, shard_ids=[2, 3]), {"DISCORD_BOT_TOKEN": "tok"})
    assert cfg is not None
    assert (cfg.shard_ids, cfg.shard_count, cfg.serves_dms) == ((2, 3), 4, False)
    plain = parse(settings(), {"DISCORD_BOT_TOKEN": "tok"})
    assert plain is not None and plain.serves_dms and plain.shard_ids == ()
