"""The ``[discord]`` table: parsed and validated into a frozen ``DiscordConfig``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from core.config import PlatformSettings
from core.errors import ConfigError
from core.secret import Secret

DEFAULT_API_BASE: Final = "https://discord.com/api/v10"
DEFAULT_GATEWAY: Final = "wss://gateway.discord.gg"


@dataclass(frozen=True, slots=True)
class DiscordConfig:
    """Everything the Discord adapter needs; the token comes from the environment.

    ``edit_interval`` is the pause between two edits of a streamed reply in one channel
    (Discord allows about 5 message edits per 5 seconds per channel). ``defer_after`` is how
    long an interaction may wait for its first answer before the adapter defers it (Discord
    drops interactions not answered within 3 seconds).
    """

    token: Secret
    token_env: str = "DISCORD_BOT_TOKEN"  # noqa: S105 - the variable's name
    guild_ids: tuple[str, ...] = ()
    agent_channels: tuple[str, ...] = ()
    api_base_url: str = DEFAULT_API_BASE
    gateway_url: str = DEFAULT_GATEWAY
    message_content_intent: bool = True
    sync_commands: bool = True
    edit_interval: float = 1.0
    defer_after: float = 1.5


class _Options:
    """Typed reads of the raw table with errors in the project's one format."""

    def __init__(self, source: str, data: Mapping[str, Any]) -> None:
        self.source, self.data = source, data
        self.used: set[str] = set()

    def fail(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.source}: [discord] {key} {what}")

    def string(self, key: str, default: str) -> str:
        self.used.add(key)
        value = self.data.get(key, default)
        if not isinstance(value, str) or not value:
            raise self.fail(key, "must be a non-empty string")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        self.used.add(key)
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def seconds(self, key: str, default: float, *, maximum: float) -> float:
        self.used.add(key)
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, "must be a number of seconds")
        if not 0 < value <= maximum:
            raise self.fail(key, f"must be more than 0 and at most {maximum:g} (got {value!r})")
        return float(value)

    def snowflakes(self, key: str) -> tuple[str, ...]:
        self.used.add(key)
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise self.fail(key, "must be a list of ids")
        out: list[str] = []
        for item in value:
            # TOML users write ids both as numbers and as strings; both are accepted.
            text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
            if not isinstance(text, str) or not text.isdigit():
                raise self.fail(key, f"must be a list of numeric Discord ids (got {item!r})")
            out.append(text)
        return tuple(out)

    def url(self, key: str, default: str, schemes: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if not value.startswith(schemes):
            raise self.fail(key, f"must start with {' or '.join(schemes)} (got {value!r})")
        if "@" in value.split("://", 1)[1].split("/", 1)[0]:
            raise self.fail(key, "must not carry credentials")
        return value.rstrip("/")

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.fail(unknown[0], "is not a known setting")


def parse(
    settings: PlatformSettings, env: Mapping[str, str], *, source: str = "config.toml"
) -> DiscordConfig | None:
    """Validate ``[discord]``; None when the token variable is unset or empty.

    Raises:
        ConfigError: a bad value or an unknown setting, naming the file, table and setting.
    """
    t = _Options(source, settings.options)
    token_env = t.string("token_env", "DISCORD_BOT_TOKEN")
    guild_ids = t.snowflakes("guild_ids")
    agent_channels = t.snowflakes("agent_channels")
    api_base_url = t.url("api_base_url", DEFAULT_API_BASE, ("http://", "https://"))
    gateway_url = t.url("gateway_url", DEFAULT_GATEWAY, ("ws://", "wss://"))
    message_content_intent = t.boolean("message_content_intent", True)
    sync_commands = t.boolean("sync_commands", True)
    edit_interval = t.seconds("edit_interval", 1.0, maximum=60)
    defer_after = t.seconds("defer_after", 1.5, maximum=2.5)
    t.finish()
    token = env.get(token_env, "").strip()
    if not token:
        return None
    return DiscordConfig(
        token=Secret(token),
        token_env=token_env,
        guild_ids=guild_ids,
        agent_channels=agent_channels,
        api_base_url=api_base_url,
        gateway_url=gateway_url,
        message_content_intent=message_content_intent,
        sync_commands=sync_commands,
        edit_interval=edit_interval,
        defer_after=defer_after,
    )
