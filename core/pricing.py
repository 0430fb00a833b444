"""What a model call costs, from a price table of USD per 1M input and output tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


# Context windows (input and output together) of models whose window is known; others use
# PARLEY_MODEL_WINDOW.
MODEL_WINDOWS: dict[str, int] = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4": 8_192,
    "gpt-4-0613": 8_192,
    "gpt-4-32k": 32_768,
    "gpt-4-1106": 128_000,
    "gpt-4-0125": 128_000,
    "gpt-4-vision": 128_000,
    "gpt-4.5": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-3.5-turbo": 16_385,
}


def lookup(model: str, table: Mapping[str, T]) -> T | None:
    """``table``'s entry for ``model``: exact, else the longest key that prefixes it
    (so "gpt-4o-2024-08-06" finds "gpt-4o" and "gpt-4o-mini" finds itself)."""
    if model in table:
        return table[model]
    matches = [name for name in table if model.startswith(name)]
    return table[max(matches, key=len)] if matches else None


def price_for(model: str, prices: Mapping[str, tuple[float, float]]) -> tuple[float, float] | None:
    """USD per 1M (input, output) tokens of ``model``, if known."""
    return lookup(model, prices)


def window_for(model: str, default: int) -> int:
    """Tokens ``model`` accepts for input and output together."""
    return lookup(model, MODEL_WINDOWS) or default


def cost_usd(
    model: str, input_tokens: int, output_tokens: int, prices: Mapping[str, tuple[float, float]]
) -> float:
    """Cost in USD; an unpriced model costs 0 (and /usage says so)."""
    price = price_for(model, prices)
    if price is None:
        return 0.0
    return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000
