"""Errors the agent runtime raises; all of them are ``core.errors.AgentUnavailable``.

::

    CoreError
    ├── AgentUnavailable             (core.errors) the agent cannot answer; ``reason`` is a code
    │   └── ReplyFailed              the same, plus ``retry_after`` seconds when known
    └── ProtocolError                a worker sent a line the agent protocol does not allow

``ReplyFailed.reason`` is one of the LLM error codes (``invalid_key``, ``rate_limited``,
``out_of_credit``, ``overloaded``, ``model_not_found``, ``network``, ``timeout``,
``bad_response``) or a runtime code: ``crashed`` (the agent process died mid-reply),
``restarting`` (it crashed repeatedly and is in back-off; see ``retry_after``), ``busy`` (the
live-agent bound is reached and every agent is mid-reply), ``stopped`` (paused/deleted while
answering), ``start_failed`` (the process did not come up), ``protocol`` (an external agent
broke the protocol).
"""

from __future__ import annotations

from core.errors import AgentUnavailable, CoreError


class ReplyFailed(AgentUnavailable):
    """The agent could not (finish to) answer; ``retry_after`` is in seconds, or None."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class ProtocolError(CoreError):
    """A line that is not valid agent protocol (bad JSON, unknown type, missing field)."""
