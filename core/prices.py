"""Estimated list prices (USD per million tokens) for the cost line of the usage chart.

For BYOK the provider bills the person; byokbot only estimates, from this table, and says so.
Managed models are priced by the operator's ``[proxy.models]`` instead. A model is matched by
the longest entry its name starts with; unknown models have no estimate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

# (input, output) USD per million tokens; public list prices, rounded, as of late 2025.
BYOK_PRICES: Final[Mapping[str, tuple[float, float]]] = {
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-haiku-4": (1.0, 5.0),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1-nano": (0.1, 0.4),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4o": (2.5, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5": (1.25, 10.0),
    "o4-mini": (1.1, 4.4),
    "kimi-k2": (0.6, 2.5),
}


def price_of(
    model: str, table: Mapping[str, tuple[float, float]] = BYOK_PRICES
) -> tuple[float, float] | None:
    """``(input, output)`` USD per million tokens for ``model``, or None when unknown."""
    best = max((k for k in table if model.startswith(k)), key=len, default=None)
    return table[best] if best is not None else None


def cost_usd(
    model: str,
    input_tokens: int,
    output_tokens: int,
    table: Mapping[str, tuple[float, float]] = BYOK_PRICES,
) -> float | None:
    price = price_of(model, table)
    if price is None:
        return None
    return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000
