"""Discord adapter: slash commands, buttons, key modals and streamed agent replies."""

from __future__ import annotations

from collections.abc import Mapping

from adapters.discord.adapter import (
    CommandCatalog,
    DiscordAdapter,
    DiscordError,
    DiscordLoginError,
    DiscordSendError,
    catalog_from_config,
)
from adapters.discord.config import DiscordConfig, parse
from core.config import Config, PlatformSettings
from core.dedup import Deduplicator
from core.errors import ConfigError
from core.inbox import InboxPort

__all__ = [
    "CommandCatalog",
    "DiscordAdapter",
    "DiscordConfig",
    "DiscordError",
    "DiscordLoginError",
    "DiscordSendError",
    "build",
    "catalog_from_config",
]


def build(
    settings: PlatformSettings,
    env: Mapping[str, str],
    *,
    config: Config | None = None,
    catalog: CommandCatalog | None = None,
    dedup: Deduplicator | None = None,
    inbox: InboxPort | None = None,
) -> DiscordAdapter:
    """The adapter for ``[discord]``.

    Slash command choices and autocomplete offer the providers, plans and models of
    ``config`` (or an explicit ``catalog``); without either, the built-in provider names.
    ``dedup`` remembers handled interactions and messages (the app passes the database's);
    ``inbox`` keeps each turn pending until it ends (a crash leaves a note to resend).

    Raises:
        ConfigError: a bad value or unknown setting in ``[discord]``, or the token variable is
            unset: an enabled platform that cannot start stops start-up.
    """
    source = config.source if config is not None else "config.toml"
    parsed = parse(settings, env, source=source)
    if parsed is None:
        name = settings.options.get("token_env", "DISCORD_BOT_TOKEN")
        raise ConfigError(
            f"{source}: [discord] is enabled but {name} is not set "
            "(export the bot token, or set enabled = false)"
        )
    if catalog is None and config is not None:
        catalog = catalog_from_config(config)
    return DiscordAdapter(parsed, catalog=catalog, dedup=dedup, inbox=inbox)
