"""Fresh random credentials of the right shapes, for leak tests (never real, never reused)."""

from __future__ import annotations

import base64
import secrets
import string

__all__ = [
    "ALL_CANARIES",
    "anthropic_key",
    "byok_token",
    "discord_token",
    "moonshot_key",
    "openai_key",
    "openai_legacy_key",
    "search_key",
    "slack_app_token",
    "slack_bot_token",
    "stripe_api_key",
    "stripe_webhook_secret",
    "telegram_token",
]

_ALNUM = string.ascii_letters + string.digits
_URLSAFE = _ALNUM + "-_"


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _digits(low: int, high: int) -> str:
    length = low + secrets.randbelow(high - low + 1)
    return str(1 + secrets.randbelow(9)) + _random(string.digits, length - 1)


def anthropic_key() -> str:
    """``sk-ant-api03-`` + 93 of ``[A-Za-z0-9_-]`` + ``AA`` (108 characters)."""
    return "sk-ant-api03-" + _random(_URLSAFE, 93) + "AA"


def openai_key() -> str:
    """A project key: ``sk-proj-`` + 74 + ``T3BlbkFJ`` + 74 (164 characters)."""
    return "sk-proj-" + _random(_URLSAFE, 74) + "T3BlbkFJ" + _random(_URLSAFE, 74)


def openai_legacy_key() -> str:
    """A legacy user key: ``sk-`` + 20 + ``T3BlbkFJ`` + 20 alphanumerics."""
    return "sk-" + _random(_ALNUM, 20) + "T3BlbkFJ" + _random(_ALNUM, 20)


def moonshot_key() -> str:
    """``sk-`` + 48 alphanumerics."""
    return "sk-" + _random(_ALNUM, 48)


def telegram_token() -> str:
    """``<bot id>:<35 of [A-Za-z0-9_-]>``; real ones start the secret part with ``AA``."""
    return f"{_digits(8, 10)}:AA{_random(_URLSAFE, 33)}"


def discord_token() -> str:
    """base64url(bot id) + ``.`` + 6 + ``.`` + 38, as discord.py receives it."""
    bot_id = _digits(18, 19)
    head = base64.urlsafe_b64encode(bot_id.encode()).decode().rstrip("=")
    return f"{head}.{_random(_URLSAFE, 6)}.{_random(_URLSAFE, 38)}"


def slack_bot_token() -> str:
    """``xoxb-<team>-<bot>-<24 alphanumerics>``."""
    return f"xoxb-{_digits(10, 13)}-{_digits(10, 13)}-{_random(_ALNUM, 24)}"


def slack_app_token() -> str:
    """``xapp-1-<app id>-<digits>-<64 hex>`` (Socket Mode app-level token)."""
    app_id = "A" + _random(string.ascii_uppercase + string.digits, 10)
    return f"xapp-1-{app_id}-{_digits(13, 13)}-{secrets.token_hex(32)}"


def byok_token() -> str:
    """A managed-plan proxy token: ``byok-`` + 43 base64url characters."""
    return "byok-" + secrets.token_urlsafe(32)


def search_key() -> str:
    """A web-search API key as Brave issues them: ``BSA`` + 28 alphanumerics (an operator's)."""
    return "BSA" + _random(_ALNUM, 28)


def stripe_api_key() -> str:
    """A Stripe secret key: ``sk_test_`` + 99 alphanumerics (the operator's, never a person's)."""
    return "sk_test_" + _random(_ALNUM, 99)


def stripe_webhook_secret() -> str:
    """A webhook endpoint's signing secret: ``whsec_`` + 32 alphanumerics."""
    return "whsec_" + _random(_ALNUM, 32)


ALL_CANARIES = {
    "anthropic": anthropic_key,
    "openai": openai_key,
    "openai-legacy": openai_legacy_key,
    "moonshot": moonshot_key,
    "telegram": telegram_token,
    "discord": discord_token,
    "slack-bot": slack_bot_token,
    "slack-app": slack_app_token,
    "byok": byok_token,
}
