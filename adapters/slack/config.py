"""The ``[slack]`` table: connection mode, token variable names, HTTP listener and pacing."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from core.config import PlatformSettings
from core.errors import ConfigError
from core.secret import Secret

MODES: Final = ("socket", "http")

_SOURCE: Final = "config.toml"
_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COMMAND: Final = re.compile(r"^/[a-z0-9_-]{1,31}$")
# A section block holds at most 3000 characters; longer replies are split below that.
_MAX_CHARS_RANGE: Final = (200, 3000)


@dataclass(frozen=True, slots=True)
class SlackConfig:
    """Validated ``[slack]`` settings plus the token values read from the environment.

    ``bot_token`` is None when its variable is unset or empty (``build`` then skips Slack);
    ``app_token`` is needed in socket mode, ``signing_secret`` in http mode, ``user_token``
    only to delete other people's leaked messages.
    """

    bot_token_env: str = "SLACK_BOT_TOKEN"  # noqa: S105 - a variable name
    app_token_env: str = "SLACK_APP_TOKEN"  # noqa: S105 - a variable name
    signing_secret_env: str = "SLACK_SIGNING_SECRET"  # noqa: S105 - a variable name
    user_token_env: str = ""
    mode: str = "socket"
    listen_host: str = "127.0.0.1"
    listen_port: int = 3000
    path: str = "/slack/events"
    api_base_url: str = "https://slack.com/api/"
    command: str = "/byok"
    edit_interval: float = 1.0
    max_message_chars: int = 3000
    home_tab: bool = True
    bot_token: Secret | None = field(default=None, repr=False)
    app_token: Secret | None = field(default=None, repr=False)
    signing_secret: Secret | None = field(default=None, repr=False)
    user_token: Secret | None = field(default=None, repr=False)

    def missing_env(self) -> str | None:
        """The name of the first environment variable this mode needs but does not have."""
        if self.bot_token is None:
            return self.bot_token_env
        if self.mode == "socket" and self.app_token is None:
            return self.app_token_env
        if self.mode == "http" and self.signing_secret is None:
            return self.signing_secret_env
        return None


class _Reader:
    """Typed access to the raw table with errors in the contract's exact form."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = options
        self.used: set[str] = set()

    def fail(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{_SOURCE}: [slack] {key} {what}")

    def string(self, key: str, default: str) -> str:
        self.used.add(key)
        value = self.options.get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, "must be a string")
        return value

    def env_name(self, key: str, default: str, *, optional: bool = False) -> str:
        value = self.string(key, default)
        if optional and value == "":
            return value
        if not _ENV_NAME.match(value):
            raise self.fail(key, f"must name an environment variable (got {value!r})")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)} (got {value!r})")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        self.used.add(key)
        value = self.options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"must be an integer from {low} to {high} (got {value!r})")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        self.used.add(key)
        value = self.options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number (got {value!r})")
        if not low <= value <= high:
            raise self.fail(key, f"must be between {low} and {high} (got {value!r})")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        self.used.add(key)
        value = self.options.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false (got {value!r})")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.options) - self.used)
        if unknown:
            raise self.fail(unknown[0], "is not a known setting")


def _secret(env: Mapping[str, str], name: str) -> Secret | None:
    value = env.get(name, "").strip() if name else ""
    return Secret(value) if value else None


def parse(settings: PlatformSettings, env: Mapping[str, str]) -> SlackConfig:
    """Validate ``[slack]`` and read the tokens its settings name from ``env``.

    Raises:
        ConfigError: a bad value or an unknown setting, naming the setting.
    """
    r = _Reader(settings.options)
    d = SlackConfig()
    bot_env = r.env_name("bot_token_env", d.bot_token_env)
    app_env = r.env_name("app_token_env", d.app_token_env)
    signing_env = r.env_name("signing_secret_env", d.signing_secret_env)
    user_env = r.env_name("user_token_env", d.user_token_env, optional=True)
    mode = r.choice("mode", MODES, d.mode)
    host = r.string("listen_host", d.listen_host)
    if not host:
        raise r.fail("listen_host", "must not be empty")
    port = r.integer("listen_port", d.listen_port, 0, 65535)  # 0: any free port
    path = r.string("path", d.path)
    if not path.startswith("/"):
        raise r.fail("path", f"must start with / (got {path!r})")
    base = r.string("api_base_url", d.api_base_url)
    if not base.startswith(("http://", "https://")):
        raise r.fail("api_base_url", f"must be an http:// or https:// URL (got {base!r})")
    if "@" in base.split("://", 1)[1].split("/", 1)[0]:
        raise r.fail("api_base_url", "must not carry credentials")
    command = r.string("command", d.command)
    if not _COMMAND.match(command):
        raise r.fail("command", f"must look like /byok (got {command!r})")
    interval = r.number("edit_interval", d.edit_interval, 0.0, 60.0)
    low, high = _MAX_CHARS_RANGE
    max_chars = r.integer("max_message_chars", d.max_message_chars, low, high)
    home = r.boolean("home_tab", d.home_tab)
    r.finish()
    return SlackConfig(
        bot_token_env=bot_env,
        app_token_env=app_env,
        signing_secret_env=signing_env,
        user_token_env=user_env,
        mode=mode,
        listen_host=host,
        listen_port=port,
        path=path,
        api_base_url=base if base.endswith("/") else base + "/",
        command=command,
        edit_interval=interval,
        max_message_chars=max_chars,
        home_tab=home,
        bot_token=_secret(env, bot_env),
        app_token=_secret(env, app_env),
        signing_secret=_secret(env, signing_env),
        user_token=_secret(env, user_env),
    )
