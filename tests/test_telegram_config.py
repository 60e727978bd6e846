"""Tests of the ``[telegram]`` table parser and ``build``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.telegram import TelegramAdapter, TelegramConfig, build, parse
from adapters.telegram.pacing import FloodLimits
from core.config import PlatformSettings, parse_config
from core.errors import ConfigError
from core.ports import Messenger
from core.secret import Secret

TOKEN = "123456789:AAH-config-test-token-0123456789abcd"


def settings(**options: Any) -> PlatformSettings:
    return PlatformSettings("telegram", True, options)


def test_defaults() -> None:
    config = parse(settings(), {"TELEGRAM_BOT_TOKEN": TOKEN})
    assert config == TelegramConfig(token=Secret(TOKEN))
    assert (config.mode, config.api_base_url, config.edit_interval) == (
        "polling",
        "https://api.telegram.org/bot",
        1.0,
    )


def test_bad_mode_names_file_table_setting_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        parse(settings(mode="x"), {})
    assert str(info.value) == (
        "config.toml: [telegram] mode must be one of polling, webhook (got 'x')"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": "red"}, "config.toml: [telegram] colour is not a known setting"),
        ({"poll_timeout": "30"}, "config.toml: [telegram] poll_timeout must be an integer"),
        (
            {"poll_timeout": 90},
            "config.toml: [telegram] poll_timeout must be between 0 and 50 (got 90)",
        ),
        ({"edit_interval": True}, "config.toml: [telegram] edit_interval must be a number"),
        (
            {"chat_burst": 0},
            "config.toml: [telegram] chat_burst must be between 1 and 1000 (got 0)",
        ),
        (
            {"api_base_url": "ftp://x"},
            "config.toml: [telegram] api_base_url must be an http or https URL",
        ),
        (
            {"api_base_url": "https://u:p@x/bot"},
            "config.toml: [telegram] api_base_url must not carry credentials",
        ),
        (
            {"token_env": "not a name"},
            "config.toml: [telegram] token_env must name an environment variable "
            "(got 'not a name')",
        ),
        (
            {"mode": "webhook"},
            "config.toml: [telegram] webhook_public_url is required when mode is webhook",
        ),
        (
            {"mode": "webhook", "webhook_public_url": "http://bot.example.org/tg"},
            "config.toml: [telegram] webhook_public_url must be an https URL",
        ),
    ],
)
def test_bad_settings(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(settings(**options), {})
    assert str(info.value) == message


def test_flood_limits_default_to_telegrams_and_can_be_set() -> None:
    d = TelegramConfig()
    assert (
        FloodLimits.of(
            chat_burst=d.chat_burst,
            chat_seconds=d.chat_seconds,
            group_per_minute=d.group_per_minute,
            bot_per_second=d.bot_per_second,
        )
        == FloodLimits()
    )
    parsed = parse(settings(chat_burst=10, chat_seconds=1, bot_per_second=100), {})
    limits = FloodLimits.of(
        chat_burst=parsed.chat_burst,
        chat_seconds=parsed.chat_seconds,
        group_per_minute=parsed.group_per_minute,
        bot_per_second=parsed.bot_per_second,
    )
    assert (limits.chat.limit, limits.chat.seconds, limits.bot.limit) == (10, 1.0, 100)


def test_webhook_needs_its_secret_from_the_environment() -> None:
    opts = {"mode": "webhook", "webhook_public_url": "https://bot.example.org/tg"}
    with pytest.raises(ConfigError) as info:
        parse(settings(**opts), {})
    assert str(info.value) == (
        "config.toml: [telegram] webhook_secret_env names TELEGRAM_WEBHOOK_SECRET, which is "
        "unset or empty; webhook mode needs a secret token"
    )
    with pytest.raises(ConfigError) as bad:
        parse(settings(**opts), {"TELEGRAM_WEBHOOK_SECRET": "has spaces!"})
    assert "has spaces" not in str(bad.value)
    config = parse(settings(**opts, webhook_path="/tg/"), {"TELEGRAM_WEBHOOK_SECRET": "s3cr-t_"})
    assert (config.webhook_secret, config.webhook_path) == (Secret("s3cr-t_"), "tg")


def test_token_comes_from_the_named_variable_and_never_shows_in_repr() -> None:
    config = parse(settings(token_env="MY_TG"), {"MY_TG": f"  {TOKEN} "})
    assert config.token == Secret(TOKEN)
    assert TOKEN not in repr(config)


def test_build_without_token_stops_startup() -> None:
    with pytest.raises(ConfigError) as info:
        build(settings(), {"TELEGRAM_BOT_TOKEN": ""})
    assert str(info.value) == (
        "config.toml: [telegram] is enabled but TELEGRAM_BOT_TOKEN is not set "
        "(export the bot token, or set enabled = false)"
    )


def test_build_rejects_bad_settings_even_without_token() -> None:
    with pytest.raises(ConfigError):
        build(settings(mode="socket"), {})


def test_build_with_token() -> None:
    adapter = build(settings(), {"TELEGRAM_BOT_TOKEN": TOKEN})
    assert isinstance(adapter, TelegramAdapter)
    assert TOKEN not in repr(adapter)


def test_build_names_the_configuration_file_in_errors(tmp_path: Path) -> None:
    config = parse_config(
        {"telegram": {"enabled": True, "mode": "hooks"}}, source="prod.toml", base_dir=tmp_path
    )
    with pytest.raises(ConfigError) as info:
        build(config.platforms["telegram"], {}, config=config)
    assert str(info.value) == (
        "prod.toml: [telegram] mode must be one of polling, webhook (got 'hooks')"
    )


def test_composition_root_builds_the_telegram_adapter(tmp_path: Path) -> None:
    from bot.app import App

    config = parse_config({"telegram": {"enabled": True}}, source="c.toml", base_dir=tmp_path)
    app = App(config, env={"TELEGRAM_BOT_TOKEN": TOKEN})
    (adapter,) = app._build_adapters()
    assert isinstance(adapter, TelegramAdapter)
    assert adapter.messenger is adapter
    assert isinstance(adapter.messenger, Messenger)
