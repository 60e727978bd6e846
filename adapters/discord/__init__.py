"""Discord adapter: slash commands, buttons, key modals and streamed agent replies."""

from __future__ import annotations

import logging
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

_log = logging.getLogger(__name__)


def build(
    settings: PlatformSettings,
    env: Mapping[str, str],
    *,
    config: Config | None = None,
    catalog: CommandCatalog | None = None,
    dedup: Deduplicator | None = None,
) -> DiscordAdapter | None:
    """The adapter for ``[discord]``; None (one WARNING) when the token variable is unset.

    Slash command choices and autocomplete offer the providers, plans and models of
    ``config`` (or an explicit ``catalog``); without either, the built-in provider names.
    ``dedup`` remembers handled interactions and messages (the app passes the database's).

    Raises:
        ConfigError: a bad value or unknown setting in ``[discord]``.
    """
    parsed = parse(settings, env, source=config.source if config is not None else "config.toml")
    if parsed is None:
        name = settings.options.get("token_env", "DISCORD_BOT_TOKEN")
        _log.warning("discord: enabled but $%s is not set; Discord stays off", name)
        return None
    if catalog is None and config is not None:
        catalog = catalog_from_config(config)
    return DiscordAdapter(parsed, catalog=catalog, dedup=dedup)
