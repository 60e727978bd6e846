"""The ``[slack]`` table and ``build``: defaults, exact error messages, missing tokens."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from adapters.slack import SlackAdapter, build
from adapters.slack.config import SlackConfig, parse
from core.config import PlatformSettings, parse_config
from core.errors import ConfigError
from core.logs import redact_text
from tests import canaries


def settings(**options: Any) -> PlatformSettings:
    return PlatformSettings(name="slack", enabled=True, options=MappingProxyType(options))


def test_defaults() -> None:
    config = parse(settings(), {})
    assert config == SlackConfig()
    assert (config.mode, config.command, config.api_base_url) == (
        "socket",
        "/byok",
        "https://slack.com/api/",
    )
    assert config.missing_env() == "SLACK_BOT_TOKEN"


def test_tokens_come_from_the_variables_the_settings_name() -> None:
    env = {"MY_BOT": "xoxb-1", "MY_APP": "xapp-1", "SLACK_SIGNING_SECRET": " s3cr3t \n"}
    config = parse(settings(bot_token_env="MY_BOT", app_token_env="MY_APP"), env)
    assert config.bot_token is not None
    assert config.bot_token.reveal() == "xoxb-1"
    assert config.signing_secret is not None
    assert config.signing_secret.reveal() == "s3cr3t"
    assert config.user_token is None
    assert config.missing_env() is None
    assert "xoxb-1" not in repr(config)


def test_each_mode_names_the_token_it_lacks() -> None:
    env = {"SLACK_BOT_TOKEN": "xoxb-1"}
    assert parse(settings(), env).missing_env() == "SLACK_APP_TOKEN"
    assert parse(settings(mode="http"), env).missing_env() == "SLACK_SIGNING_SECRET"
    assert parse(settings(), {**env, "SLACK_APP_TOKEN": ""}).missing_env() == "SLACK_APP_TOKEN"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "x"}, "prod.toml: [slack] mode must be one of socket, http (got 'x')"),
        ({"colour": "red"}, "prod.toml: [slack] colour is not a known setting"),
        (
            {"listen_port": 70000},
            "prod.toml: [slack] listen_port must be an integer from 0 to 65535 (got 70000)",
        ),
        (
            {"listen_port": True},
            "prod.toml: [slack] listen_port must be an integer from 0 to 65535 (got True)",
        ),
        ({"command": "byok"}, "prod.toml: [slack] command must look like /byok (got 'byok')"),
        (
            {"edit_interval": "fast"},
            "prod.toml: [slack] edit_interval must be a number (got 'fast')",
        ),
        (
            {"edit_interval": 99},
            "prod.toml: [slack] edit_interval must be between 0.0 and 60.0 (got 99)",
        ),
        (
            {"max_message_chars": 5000},
            "prod.toml: [slack] max_message_chars must be an integer from 200 to 3000 (got 5000)",
        ),
        (
            {"api_base_url": "slack.com"},
            "prod.toml: [slack] api_base_url must be an http:// or https:// URL (got 'slack.com')",
        ),
        (
            {"api_base_url": "https://u:p@slack.example/api"},
            "prod.toml: [slack] api_base_url must not carry credentials",
        ),
        (
            {"bot_token_env": "xoxb-123"},
            "prod.toml: [slack] bot_token_env must name an environment variable (got 'xoxb-123')",
        ),
        ({"path": "events"}, "prod.toml: [slack] path must start with / (got 'events')"),
        ({"home_tab": "yes"}, "prod.toml: [slack] home_tab must be true or false (got 'yes')"),
        ({"listen_host": ""}, "prod.toml: [slack] listen_host must not be empty"),
    ],
)
def test_bad_settings_are_named_exactly(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(settings(**options), {}, source="prod.toml")
    assert str(caught.value) == message


def test_api_base_url_gets_its_trailing_slash() -> None:
    config = parse(settings(api_base_url="http://127.0.0.1:9/api"), {})
    assert config.api_base_url == "http://127.0.0.1:9/api/"


def test_build_without_a_token_stops_startup() -> None:
    with pytest.raises(ConfigError) as info:
        build(settings(), {"SLACK_APP_TOKEN": "xapp-1"})
    assert str(info.value) == (
        "config.toml: [slack] is enabled but SLACK_BOT_TOKEN is not set "
        "(export it, or set enabled = false)"
    )


def test_build_raises_for_bad_settings_even_without_tokens() -> None:
    with pytest.raises(ConfigError, match="mode must be one of"):
        build(settings(mode="webhook"), {})


def test_parse_names_config_toml_when_not_told_the_file() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(settings(colour="red"), {})
    assert str(caught.value) == "config.toml: [slack] colour is not a known setting"


def test_the_composition_root_passes_the_file_name(tmp_path: Path) -> None:
    from bot.app import App

    config = parse_config(
        {"slack": {"enabled": True, "listen_port": -1}}, source="c.toml", base_dir=tmp_path
    )
    with pytest.raises(ConfigError) as caught:
        App(config, env={})._build_adapters()
    assert str(caught.value) == (
        "c.toml: [slack] listen_port must be an integer from 0 to 65535 (got -1)"
    )


def test_build_registers_every_token_for_redaction() -> None:
    bot, app = canaries.slack_bot_token(), canaries.slack_app_token()
    signing, user = "0123456789abcdef0123456789abcdef", "xoxp-" + "7" * 40
    env = {
        "SLACK_BOT_TOKEN": bot,
        "SLACK_APP_TOKEN": app,
        "SLACK_SIGNING_SECRET": signing,
        "SLACK_USER_TOKEN": user,
    }
    adapter = build(settings(user_token_env="SLACK_USER_TOKEN"), env)
    assert isinstance(adapter, SlackAdapter)
    assert adapter.messenger is adapter
    for value in (bot, app, signing, user):
        assert value not in redact_text(f"token={value} end")


def test_the_documented_section_parses_to_the_defaults() -> None:
    import tomllib

    doc = Path(__file__).resolve().parents[1] / "docs" / "config-slack.toml"
    data = tomllib.loads(doc.read_text())
    config = parse_config(data, source="config.toml", base_dir=doc.parent)
    section = config.platforms["slack"]
    assert section.enabled is False
    assert parse(section, {}) == SlackConfig()
