"""The ``[telegram]`` table: parsed into a frozen ``TelegramConfig`` with precise errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from core.config import PlatformSettings
from core.errors import ConfigError
from core.secret import Secret

T = TypeVar("T")

MODES: Final = ("polling", "webhook")
DEFAULT_API_BASE_URL: Final = "https://api.telegram.org/bot"
DEFAULT_FILE_BASE_URL: Final = "https://api.telegram.org/file/bot"
# Telegram accepts 1-256 of these characters in a webhook secret token.
_WEBHOOK_SECRET: Final = re.compile(r"[A-Za-z0-9_-]{1,256}")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class TelegramConfig:
    """Everything the Telegram adapter needs, validated.

    ``token`` is None when the environment variable named by ``token_env`` is unset or empty;
    ``build`` then declines to start the adapter.
    """

    # Names of environment variables, not secrets:
    token_env: str = "TELEGRAM_BOT_TOKEN"  # noqa: S105
    token: Secret | None = field(default=None, repr=False)
    api_base_url: str = DEFAULT_API_BASE_URL
    file_base_url: str = DEFAULT_FILE_BASE_URL
    mode: str = "polling"
    poll_timeout: int = 30
    drop_pending_updates: bool = False
    webhook_listen: str = "127.0.0.1"
    webhook_port: int = 8443
    webhook_path: str = "telegram"
    webhook_public_url: str = ""
    webhook_secret_env: str = "TELEGRAM_WEBHOOK_SECRET"  # noqa: S105
    webhook_secret: Secret | None = field(default=None, repr=False)
    edit_interval: float = 1.0
    group_edit_interval: float = 3.0
    stream_drafts: bool = True
    rate_limit_retries: int = 3
    sync_commands: bool = True


class _Options:
    """Typed reads from the raw table; every error names the file, table and setting."""

    def __init__(self, source: str, data: Mapping[str, Any]) -> None:
        self.source, self.data = source, data
        self.used: set[str] = set()

    def fail(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.source}: [telegram] {key} {what}")

    def get(self, key: str, kind: type[T], default: T, noun: str) -> T:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (kind is not bool and isinstance(value, bool)) or not isinstance(value, kind):
            raise self.fail(key, f"must be {noun}")
        return value

    def text(self, key: str, default: str) -> str:
        return self.get(key, str, default, "a string")

    def flag(self, key: str, default: bool) -> bool:
        return self.get(key, bool, default, "true or false")

    def number(self, key: str, default: float, *, minimum: float, maximum: float) -> float:
        value = self.get(key, float, default, "a number")
        if not minimum <= value <= maximum:
            raise self.fail(key, f"must be between {minimum:g} and {maximum:g} (got {value:g})")
        return value

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self.get(key, int, default, "an integer")
        if not minimum <= value <= maximum:
            raise self.fail(key, f"must be between {minimum} and {maximum} (got {value})")
        return value

    def env_name(self, key: str, default: str) -> str:
        value = self.text(key, default)
        if not _ENV_NAME.fullmatch(value):
            raise self.fail(key, f"must name an environment variable (got {value!r})")
        return value

    def url(self, key: str, default: str, *, https_only: bool = False) -> str:
        value = self.text(key, default)
        schemes = ("https://",) if https_only else ("http://", "https://")
        if not value.startswith(schemes):
            raise self.fail(key, f"must be an {' or '.join(s[:-3] for s in schemes)} URL")
        if "@" in value.split("://", 1)[1].split("/", 1)[0]:
            raise self.fail(key, "must not carry credentials")
        return value.rstrip("/")

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.fail(unknown[0], "is not a known setting")


def _env_secret(env: Mapping[str, str], name: str) -> Secret | None:
    value = env.get(name, "").strip()
    return Secret(value) if value else None


def parse(
    settings: PlatformSettings, env: Mapping[str, str], *, source: str = "config.toml"
) -> TelegramConfig:
    """Validate ``settings.options`` and read the token (and webhook secret) from ``env``.

    Raises:
        ConfigError: a bad or unknown setting, or webhook mode without its public URL or secret.
    """
    t = _Options(source, settings.options)
    d = TelegramConfig()
    mode = t.text("mode", d.mode)
    if mode not in MODES:
        raise t.fail("mode", f"must be one of {', '.join(MODES)} (got {mode!r})")
    token_env = t.env_name("token_env", d.token_env)
    secret_env = t.env_name("webhook_secret_env", d.webhook_secret_env)
    path = t.text("webhook_path", d.webhook_path).strip("/")
    if not re.fullmatch(r"[A-Za-z0-9_./-]*", path):
        raise t.fail("webhook_path", f"must be a plain URL path (got {path!r})")
    public_url = t.text("webhook_public_url", d.webhook_public_url)
    if public_url:
        public_url = t.url("webhook_public_url", d.webhook_public_url, https_only=True)
    config = TelegramConfig(
        token_env=token_env,
        token=_env_secret(env, token_env),
        api_base_url=t.url("api_base_url", d.api_base_url),
        file_base_url=t.url("file_base_url", d.file_base_url),
        mode=mode,
        poll_timeout=t.integer("poll_timeout", d.poll_timeout, minimum=0, maximum=50),
        drop_pending_updates=t.flag("drop_pending_updates", d.drop_pending_updates),
        webhook_listen=t.text("webhook_listen", d.webhook_listen),
        webhook_port=t.integer("webhook_port", d.webhook_port, minimum=1, maximum=65535),
        webhook_path=path,
        webhook_public_url=public_url,
        webhook_secret_env=secret_env,
        webhook_secret=_env_secret(env, secret_env),
        edit_interval=t.number("edit_interval", d.edit_interval, minimum=0.01, maximum=60.0),
        group_edit_interval=t.number(
            "group_edit_interval", d.group_edit_interval, minimum=0.01, maximum=60.0
        ),
        stream_drafts=t.flag("stream_drafts", d.stream_drafts),
        rate_limit_retries=t.integer(
            "rate_limit_retries", d.rate_limit_retries, minimum=0, maximum=20
        ),
        sync_commands=t.flag("sync_commands", d.sync_commands),
    )
    t.finish()
    if mode == "webhook":
        if not config.webhook_public_url:
            raise t.fail("webhook_public_url", "is required when mode is webhook")
        if config.webhook_secret is None:
            raise ConfigError(
                f"{source}: [telegram] webhook_secret_env names {secret_env}, which is unset "
                "or empty; webhook mode needs a secret token"
            )
        if not _WEBHOOK_SECRET.fullmatch(config.webhook_secret.reveal()):
            raise ConfigError(
                f"{source}: [telegram] the value of {secret_env} must be 1-256 characters "
                "of A-Z, a-z, 0-9, _ and -"
            )
    return config
