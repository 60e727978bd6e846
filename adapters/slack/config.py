"""The ``[slack]`` table: connection mode, token variable names, HTTP listener and pacing."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from core.config import PlatformSettings, TableReader
from core.secret import Secret

MODES: Final = ("socket", "http")

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


def _integer(r: TableReader, key: str, default: int, low: int, high: int) -> int:
    """An integer, worded "must be an integer from 0 to 65535 (got ...)" for any bad value."""
    must = f"be an integer from {low} to {high}"
    return r.integer(
        key, default, minimum=low, maximum=high, must=must, show_got=True, out_of_range=must
    )


def _secret(env: Mapping[str, str], name: str) -> Secret | None:
    value = env.get(name, "").strip() if name else ""
    return Secret(value) if value else None


def parse(
    settings: PlatformSettings, env: Mapping[str, str], *, source: str = "config.toml"
) -> SlackConfig:
    """Validate ``[slack]`` and read the tokens its settings name from ``env``.

    ``source`` is the configuration file's name, for error messages.

    Raises:
        ConfigError: a bad value or an unknown setting, naming the file, table and setting.
    """
    r = TableReader(source, "slack", settings.options)
    d = SlackConfig()
    bot_env = r.env_name("bot_token_env", d.bot_token_env)
    app_env = r.env_name("app_token_env", d.app_token_env)
    signing_env = r.env_name("signing_secret_env", d.signing_secret_env)
    user_env = r.env_name("user_token_env", d.user_token_env, optional=True)
    mode = r.choice("mode", MODES, d.mode)
    host = r.string("listen_host", d.listen_host)
    if not host:
        raise r.fail("listen_host", "must not be empty")
    port = _integer(r, "listen_port", d.listen_port, 0, 65535)  # 0: any free port
    path = r.string("path", d.path)
    if not path.startswith("/"):
        raise r.fail("path", f"must start with / (got {path!r})")
    base = r.url("api_base_url", d.api_base_url, show_got=True)
    command = r.string("command", d.command)
    if not _COMMAND.match(command):
        raise r.fail("command", f"must look like /byok (got {command!r})")
    interval = r.number("edit_interval", d.edit_interval, minimum=0.0, maximum=60.0, show_got=True)
    low, high = _MAX_CHARS_RANGE
    max_chars = _integer(r, "max_message_chars", d.max_message_chars, low, high)
    home = r.boolean("home_tab", d.home_tab, show_got=True)
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
        api_base_url=base + "/",
        command=command,
        edit_interval=interval,
        max_message_chars=max_chars,
        home_tab=home,
        bot_token=_secret(env, bot_env),
        app_token=_secret(env, app_env),
        signing_secret=_secret(env, signing_env),
        user_token=_secret(env, user_env),
    )
