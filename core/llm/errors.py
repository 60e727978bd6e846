"""The LLM client error tree; every provider failure becomes one of these, with a stable code.

::

    LLMError                 (code "llm")
    ├── InvalidKey           401/403: the key is wrong, revoked or lacks permission ("invalid_key")
    ├── RateLimited          429: slow down; ``retry_after`` seconds when the provider said
    │                        ("rate_limited")
    ├── OutOfCredit          402, or a quota/balance error: top up or raise the limit
    │   │                    ("out_of_credit")
    │   └── UsageCapReached  the managed plan's monthly cap is used up ("cap_reached")
    ├── Overloaded           529/503 and other 5xx: the provider is busy or down ("overloaded")
    ├── ModelNotFound        404, or the provider does not serve that model ("model_not_found")
    │   └── ModelNotInPlan   the managed plan does not include the model ("model_not_in_plan")
    ├── NetworkError         no answer: connection refused, reset, DNS ("network")
    │   └── Timeout          the provider stalled past the timeout ("timeout")
    └── BadResponse          malformed body or stream, or a status we do not understand
                             ("bad_response")

Messages name the provider, the HTTP status and the provider's error *type*; they never carry
the key, a header, or the provider's free-text message (which may echo part of the key).
"""

from __future__ import annotations

from typing import ClassVar


class LLMError(Exception):
    """Root of the LLM client errors; ``code`` is a short stable string the bot maps to words."""

    code: ClassVar[str] = "llm"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class InvalidKey(LLMError):
    """The provider refused the key (401/403)."""

    code = "invalid_key"


class RateLimited(LLMError):
    """The provider asked us to slow down (429)."""

    code = "rate_limited"

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class OutOfCredit(LLMError):
    """The account behind the key has no credit or quota left."""

    code = "out_of_credit"


class UsageCapReached(OutOfCredit):
    """The metering proxy: the managed plan's monthly cap is used up."""

    code = "cap_reached"


class Overloaded(LLMError):
    """The provider is overloaded or unavailable (529/503/5xx)."""

    code = "overloaded"


class ModelNotFound(LLMError):
    """The model does not exist or the key cannot reach it."""

    code = "model_not_found"


class ModelNotInPlan(ModelNotFound):
    """The metering proxy: the tenant's plan does not include this model."""

    code = "model_not_in_plan"


class NetworkError(LLMError):
    """The provider could not be reached or the connection broke."""

    code = "network"


class Timeout(NetworkError):
    """The provider did not answer (or stopped streaming) within the timeout."""

    code = "timeout"


class BadResponse(LLMError):
    """The provider answered something we cannot parse or did not expect."""

    code = "bad_response"


ERRORS_BY_CODE: dict[str, type[LLMError]] = {
    cls.code: cls
    for cls in (
        LLMError,
        InvalidKey,
        RateLimited,
        OutOfCredit,
        Overloaded,
        ModelNotFound,
        NetworkError,
        Timeout,
        BadResponse,
    )
}
"""Code -> class, so an error can be rebuilt on the far side of the worker pipe."""
