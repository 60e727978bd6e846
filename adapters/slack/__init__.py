"""Slack: slack-bolt in Socket Mode or HTTP mode, modals for keys, an App Home tab."""

from __future__ import annotations

from adapters.slack.adapter import (
    SlackAdapter,
    SlackAdapterError,
    SlackDeliveryError,
    SlackStartError,
    build,
)

__all__ = ["SlackAdapter", "SlackAdapterError", "SlackDeliveryError", "SlackStartError", "build"]
