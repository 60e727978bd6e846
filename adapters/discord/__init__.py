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
)
from adapters.discord.config import DiscordConfig, parse
from core.config import PlatformSettings

__all__ = [
    "CommandCatalog",
    "DiscordAdapter",
    "DiscordConfig",
    "DiscordError",
    "DiscordLoginError",
    "DiscordSendError",
    "build",
]

_log = logging.getLogger(__name__)


def build(
    settings: PlatformSettings,
    env: Mapping[str, str],
    *,
    catalog: CommandCatalog | None = None,
) -> DiscordAdapter | None:
    """The adapter for ``[discord]``; None (one WARNING) when the token variable is unset.

    ``catalog`` lists the providers, plans and models slash commands offer; the composition
    root passes the configured ones.

    Raises:
        ConfigError: a bad value or unknown setting in ``[discord]``.
    """
    config = parse(settings, env)
    if config is None:
        name = settings.options.get("token_env", "DISCORD_BOT_TOKEN")
        _log.warning("discord: enabled but $%s is not set; Discord stays off", name)
        return None
    return DiscordAdapter(config, catalog=catalog)
