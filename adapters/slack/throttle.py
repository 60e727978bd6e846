"""slack-sdk's 429 retry handler, counting each 429 and each retry for ``/metrics``."""

from __future__ import annotations

from typing import Any

from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler

from core.metrics import PLATFORM_RATE_LIMITED, PLATFORM_RETRIES


class CountedRateLimitRetryHandler(AsyncRateLimitErrorRetryHandler):
    """Retries as the SDK's handler does; the counts are the only difference."""

    async def _can_retry_async(self, **kwargs: Any) -> bool:
        response = kwargs.get("response")
        limited = response is not None and response.status_code == 429
        if limited:
            PLATFORM_RATE_LIMITED.labels("slack").inc()
        return bool(limited)

    async def prepare_for_next_attempt_async(self, **kwargs: Any) -> None:
        PLATFORM_RETRIES.labels("slack").inc()
        await super().prepare_for_next_attempt_async(**kwargs)
