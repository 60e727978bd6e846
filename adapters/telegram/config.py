"""The ``[telegram]`` table: parsed into a frozen ``TelegramConfig`` with precise errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from core.config import PlatformSettings, TableReader
from core.errors import ConfigError
from core.secret import Secret

MODES: Final = ("polling", "webhook")
DEFAULT_API_BASE_URL: Final = "https://api.telegram.org/bot"
DEFAULT_FILE_BASE_URL: Final = "https://api.telegram.org/file/bot"
# Telegram accepts 1-256 of these characters in a webhook secret token.
_WEBHOOK_SECRET: Final = re.compile(r"[A-Za-z0-9_-]{1,256}")


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
    # The flood limits the bot keeps itself (adapters/telegram/pacing.py): Telegram's
    # documented ones by default, with a margin.
    chat_burst: int = 3
    chat_seconds: float = 3.3
    group_per_minute: int = 20
    bot_per_second: int = 30


def _url(
    t: TableReader, key: str, default: str, *, https_only: bool = False, optional: bool = False
) -> str:
    """A URL, its errors worded "must be an http or https URL" as they always were here."""
    schemes = ("https://",) if https_only else ("http://", "https://")
    must = f"be an {' or '.join(s.removesuffix('://') for s in schemes)} URL"
    return t.url(key, default, schemes=schemes, must=must, optional=optional)


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
    t = TableReader(source, "telegram", settings.options)
    d = TelegramConfig()
    mode = t.choice("mode", MODES, d.mode)
    token_env = t.env_name("token_env", d.token_env)
    secret_env = t.env_name("webhook_secret_env", d.webhook_secret_env)
    path = t.string("webhook_path", d.webhook_path).strip("/")
    if not re.fullmatch(r"[A-Za-z0-9_./-]*", path):
        raise t.fail("webhook_path", f"must be a plain URL path (got {path!r})")
    # Empty means not set; webhook mode then fails below with a clearer message.
    public_url = _url(t, "webhook_public_url", d.webhook_public_url, https_only=True, optional=True)
    config = TelegramConfig(
        token_env=token_env,
        token=_env_secret(env, token_env),
        api_base_url=_url(t, "api_base_url", d.api_base_url),
        file_base_url=_url(t, "file_base_url", d.file_base_url),
        mode=mode,
        poll_timeout=t.integer("poll_timeout", d.poll_timeout, minimum=0, maximum=50),
        drop_pending_updates=t.boolean("drop_pending_updates", d.drop_pending_updates),
        webhook_listen=t.string("webhook_listen", d.webhook_listen),
        webhook_port=t.integer("webhook_port", d.webhook_port, minimum=1, maximum=65535),
        webhook_path=path,
        webhook_public_url=public_url,
        webhook_secret_env=secret_env,
        webhook_secret=_env_secret(env, secret_env),
        edit_interval=t.number("edit_interval", d.edit_interval, minimum=0.01, maximum=60),
        group_edit_interval=t.number(
            "group_edit_interval", d.group_edit_interval, minimum=0.01, maximum=60
        ),
        stream_drafts=t.boolean("stream_drafts", d.stream_drafts),
        rate_limit_retries=t.integer(
            "rate_limit_retries", d.rate_limit_retries, minimum=0, maximum=20
        ),
        sync_commands=t.boolean("sync_commands", d.sync_commands),
        chat_burst=t.integer("chat_burst", d.chat_burst, minimum=1, maximum=1000),
        chat_seconds=t.number("chat_seconds", d.chat_seconds, minimum=0.01, maximum=60),
        group_per_minute=t.integer(
            "group_per_minute", d.group_per_minute, minimum=1, maximum=60_000
        ),
        bot_per_second=t.integer("bot_per_second", d.bot_per_second, minimum=1, maximum=1000),
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
