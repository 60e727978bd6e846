"""LLM provider clients: Anthropic Messages and OpenAI-compatible chat completions."""

from __future__ import annotations

from core.llm.client import (
    KINDS,
    AnthropicClient,
    ChatMessage,
    LLMClient,
    OpenAICompatibleClient,
    StreamItem,
    TextDelta,
    Usage,
    classify,
    make_client,
    new_http_client,
    verify_key,
)
from core.llm.errors import (
    ERRORS_BY_CODE,
    BadResponse,
    InvalidKey,
    LLMError,
    ModelNotFound,
    ModelNotInPlan,
    NetworkError,
    OutOfCredit,
    Overloaded,
    RateLimited,
    Timeout,
    UsageCapReached,
)

__all__ = [
    "ERRORS_BY_CODE",
    "KINDS",
    "AnthropicClient",
    "BadResponse",
    "ChatMessage",
    "InvalidKey",
    "LLMClient",
    "LLMError",
    "ModelNotFound",
    "ModelNotInPlan",
    "NetworkError",
    "OpenAICompatibleClient",
    "OutOfCredit",
    "Overloaded",
    "RateLimited",
    "StreamItem",
    "TextDelta",
    "Timeout",
    "Usage",
    "UsageCapReached",
    "classify",
    "make_client",
    "new_http_client",
    "verify_key",
]
