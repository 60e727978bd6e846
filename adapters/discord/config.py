"""The ``[discord]`` table: parsed and validated into a frozen ``DiscordConfig``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from core.config import PlatformSettings, TableReader
from core.secret import Secret

DEFAULT_API_BASE: Final = "https://discord.com/api/v10"
DEFAULT_GATEWAY: Final = "wss://gateway.discord.gg"


@dataclass(frozen=True, slots=True)
class DiscordConfig:
    """Everything the Discord adapter needs; the token comes from the environment.

    ``edit_interval`` is the least pause between two edits of one streamed reply (the
    adapter's scheduler keeps under Discord's 5 edits per 5 seconds per channel whatever it
    is). ``defer_after`` is how
    long an interaction may wait for its first answer before the adapter defers it (Discord
    drops interactions not answered within 3 seconds). ``shard_ids`` of ``shard_count`` are
    the gateway shards this process serves (replicas split them; empty: unsharded).
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
    shard_ids: tuple[int, ...] = ()
    shard_count: int = 1

    @property
    def serves_dms(self) -> bool:
        """Discord delivers DMs (and their interactions) to shard 0 only."""
        return not self.shard_ids or 0 in self.shard_ids


def _snowflakes(t: TableReader, key: str) -> tuple[str, ...]:
    """A list of Discord ids, written as numbers or as strings of digits."""
    value: list[Any] = t.get(key, list, [], must="be a list of ids")
    out: list[str] = []
    for item in value:
        # TOML users write ids both as numbers and as strings; both are accepted.
        text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
        if not isinstance(text, str) or not text.isdigit():
            raise t.fail(key, f"must be a list of numeric Discord ids (got {item!r})")
        out.append(text)
    return tuple(out)


def _shards(t: TableReader) -> tuple[tuple[int, ...], int]:
    """``shard_ids`` and ``shard_count``: both or neither, each id below the count."""
    count = t.integer("shard_count", 1, minimum=1, maximum=65_536, must="be a number of shards")
    raw: list[Any] = t.get("shard_ids", list, [], must="be a list of shard numbers")
    ids: list[int] = []
    for item in raw:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < count:
            raise t.fail("shard_ids", f"must be numbers from 0 to {count - 1} (got {item!r})")
        if item in ids:
            raise t.fail("shard_ids", f"names shard {item} twice")
        ids.append(item)
    if count > 1 and not ids:
        raise t.fail("shard_ids", f"must name the shards of the {count} this process serves")
    return tuple(ids), count


def _url(t: TableReader, key: str, default: str, schemes: tuple[str, ...]) -> str:
    """A URL, its scheme error worded "must start with ws:// or wss:// (got ...)"."""
    must = f"start with {' or '.join(schemes)}"
    return t.url(key, default, schemes=schemes, must=must, show_got=True)


def _seconds(t: TableReader, key: str, default: float, *, maximum: float) -> float:
    """A pause in seconds, more than 0 and at most ``maximum``."""
    return t.number(key, default, above=0, maximum=maximum, must="be a number of seconds")


def parse(
    settings: PlatformSettings, env: Mapping[str, str], *, source: str = "config.toml"
) -> DiscordConfig | None:
    """Validate ``[discord]``; None when the token variable is unset or empty.

    Raises:
        ConfigError: a bad value or an unknown setting, naming the file, table and setting.
    """
    t = TableReader(source, "discord", settings.options)
    token_env = t.string("token_env", "DISCORD_BOT_TOKEN", non_empty=True)
    guild_ids = _snowflakes(t, "guild_ids")
    agent_channels = _snowflakes(t, "agent_channels")
    api_base_url = _url(t, "api_base_url", DEFAULT_API_BASE, ("http://", "https://"))
    gateway_url = _url(t, "gateway_url", DEFAULT_GATEWAY, ("ws://", "wss://"))
    message_content_intent = t.boolean("message_content_intent", True)
    sync_commands = t.boolean("sync_commands", True)
    edit_interval = _seconds(t, "edit_interval", 1.0, maximum=60)
    defer_after = _seconds(t, "defer_after", 1.5, maximum=2.5)
    shard_ids, shard_count = _shards(t)
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
        shard_ids=shard_ids,
        shard_count=shard_count,
    )
