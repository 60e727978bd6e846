"""Telegram adapter on python-telegram-bot 22: ``build`` makes it from ``[telegram]``."""

from __future__ import annotations

from adapters.telegram.adapter import (
    ChatUnreachable,
    MessageGone,
    TelegramAdapter,
    TelegramAdapterError,
    TelegramLoginError,
    TelegramPollingConflict,
    TelegramRateLimited,
    TelegramRequestRejected,
    TelegramUnavailable,
    build,
)
from adapters.telegram.config import TelegramConfig, parse

__all__ = [
    "ChatUnreachable",
    "MessageGone",
    "TelegramAdapter",
    "TelegramAdapterError",
    "TelegramConfig",
    "TelegramLoginError",
    "TelegramPollingConflict",
    "TelegramRateLimited",
    "TelegramRequestRejected",
    "TelegramUnavailable",
    "build",
    "parse",
]
