"""The [proxy] table: defaults, the documented file, precise errors, platform keys from env."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from core.config import Config
from core.errors import ConfigError
from core.proxy import ModelRoute, ProxySettings, UpstreamSettings, load_upstream_keys, parse_proxy
from core.secret import Secret

DOC = Path(__file__).resolve().parents[1] / "docs" / "config-proxy.toml"


def test_the_documented_file_is_exactly_the_defaults() -> None:
    data = tomllib.loads(DOC.read_text())
    parsed = parse_proxy(data["proxy"], source="config-proxy.toml", plans=Config().plans)
    assert parsed == ProxySettings()
    assert parse_proxy(None, source="config.toml") == ProxySettings()
    assert ProxySettings().url == "http://127.0.0.1:8788"


def test_a_full_table() -> None:
    parsed = parse_proxy(
        {
            "enabled": True,
            "port": 9000,
            "public_url": "http://10.0.0.2:9000/",
            "upstreams": {
                "kimi": {"base_url": "https://api.moonshot.ai/v1", "key_env": "KIMI_KEY"},
            },
            "models": {
                "kimi-k2": {
                    "upstream": "kimi",
                    "upstream_model": "kimi-k2-0905-preview",
                    "input_usd_per_mtok": 0.6,
                    "output_usd_per_mtok": 2,
                }
            },
        },
        source="config.toml",
    )
    assert (parsed.enabled, parsed.port, parsed.url) == (True, 9000, "http://10.0.0.2:9000")
    assert dict(parsed.upstreams) == {
        "kimi": UpstreamSettings(
            "kimi", "openai-compatible", "https://api.moonshot.ai/v1", "KIMI_KEY"
        )
    }
    route = parsed.models["kimi-k2"]
    assert route == ModelRoute("kimi-k2", "kimi", 0.6, 2.0, "kimi-k2-0905-preview")
    assert route.wire_model == "kimi-k2-0905-preview"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ([], "config.toml: [proxy] must be a table"),
        ({"port": 0}, "config.toml: [proxy] port must be between 1 and 65535"),
        ({"port": "80"}, "config.toml: [proxy] port must be an integer"),
        ({"tokens_kept": 0}, "config.toml: [proxy] tokens_kept must be a positive integer"),
        (
            {"token_cache_seconds": -1},
            "config.toml: [proxy] token_cache_seconds must not be negative (0 turns the cache off)",
        ),
        ({"enabled": "yes"}, "config.toml: [proxy] enabled must be true or false"),
        ({"listen": 1}, "config.toml: [proxy] listen is not a known setting"),
        (
            {"public_url": "ftp://x"},
            "config.toml: [proxy] public_url must be an http:// or https:// URL",
        ),
        (
            {"reservation_ttl_seconds": 60},
            "config.toml: [proxy] reservation_ttl_seconds must be longer than upstream_timeout_seconds",
        ),
        ({"upstreams": {}}, "config.toml: [proxy.upstreams] must define at least one upstream"),
        ({"upstreams": {"a": 1}}, "config.toml: [proxy.upstreams.a] must be a table"),
        (
            {"upstreams": {"a": {"key_env": "K"}}},
            "config.toml: [proxy.upstreams.a] base_url is required",
        ),
        (
            {"upstreams": {"a": {"base_url": "https://x"}}},
            "config.toml: [proxy.upstreams.a] key_env is required (the environment variable holding the key)",
        ),
        (
            {"upstreams": {"a": {"base_url": "https://u:p@x", "key_env": "K"}}},
            "config.toml: [proxy.upstreams.a] base_url must not carry credentials; name an environment variable",
        ),
        *(
            (
                {"upstreams": {"a": {"base_url": url, "key_env": "K"}}},
                "config.toml: [proxy.upstreams.a] base_url must name a host (and a port from 1 to"
                " 65535, if any)",
            )
            for url in ("https://", "https://:8080/v1", "http://host:port/v1", "http://h:70000")
        ),
        (
            {"upstreams": {"a": {"base_url": "https://x", "key_env": "sk-abc def"}}},
            "config.toml: [proxy.upstreams.a] key_env must be an environment variable name",
        ),
        (
            {"upstreams": {"a": {"base_url": "https://x", "key_env": "K", "kind": "gemini"}}},
            "config.toml: [proxy.upstreams.a] kind must be one of anthropic, openai-compatible (got 'gemini')",
        ),
        (
            {"models": {"m": {"upstream": "anthropic", "input_usd_per_mtok": 1}}},
            'config.toml: [proxy.models."m"] output_usd_per_mtok is required',
        ),
        (
            {
                "models": {
                    "m": {
                        "upstream": "anthropic",
                        "input_usd_per_mtok": -1,
                        "output_usd_per_mtok": 1,
                    }
                }
            },
            'config.toml: [proxy.models."m"] input_usd_per_mtok must not be negative',
        ),
        (
            {"models": {"m": {"upstream": "x", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}}},
            "config.toml: [proxy.models.\"m\"] upstream must name a [proxy.upstreams] entry (got 'x')",
        ),
    ],
)
def test_errors_name_the_table_and_setting(table: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_proxy(table, source="config.toml")
    assert str(err.value) == message


def test_every_managed_plan_model_needs_a_route() -> None:
    only_claude = {
        "models": {
            "claude-sonnet-4-5": {
                "upstream": "anthropic",
                "input_usd_per_mtok": 3,
                "output_usd_per_mtok": 15,
            }
        }
    }
    with pytest.raises(ConfigError) as err:
        parse_proxy(only_claude, source="config.toml", plans=Config().plans)
    assert str(err.value) == (
        "config.toml: [plans.managed] models lists 'gpt-4.1-mini', which has no "
        '[proxy.models."gpt-4.1-mini"] entry (upstream and prices)'
    )


def test_platform_keys_come_from_the_named_environment_variables() -> None:
    settings = ProxySettings()
    keys = load_upstream_keys(
        settings,
        {"BYOKBOT_PROXY_ANTHROPIC_KEY": " sk-ant-x \n", "BYOKBOT_PROXY_OPENAI_KEY": "sk-o"},
    )
    assert keys == {"anthropic": Secret("sk-ant-x"), "openai": Secret("sk-o")}
    assert "sk-ant-x" not in repr(keys)
    with pytest.raises(ConfigError) as err:
        load_upstream_keys(settings, {"BYOKBOT_PROXY_ANTHROPIC_KEY": "k"})
    assert str(err.value) == (
        "config.toml: [proxy.upstreams.openai] key_env names BYOKBOT_PROXY_OPENAI_KEY, "
        "which is not set in the environment"
    )
