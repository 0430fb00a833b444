"""What a model call costs, from a price table of USD per 1M input and output tokens."""

from __future__ import annotations

from collections.abc import Mapping


def price_for(model: str, prices: Mapping[str, tuple[float, float]]) -> tuple[float, float] | None:
    """The price of ``model``: an exact entry, else the longest entry that prefixes it
    (so "gpt-4o-2024-08-06" is priced as "gpt-4o" and "gpt-4o-mini" as itself)."""
    if model in prices:
        return prices[model]
    matches = [name for name in prices if model.startswith(name)]
    return prices[max(matches, key=len)] if matches else None


def cost_usd(
    model: str, input_tokens: int, output_tokens: int, prices: Mapping[str, tuple[float, float]]
) -> float:
    """Cost in USD; an unpriced model costs 0 (and /usage says so)."""
    price = price_for(model, prices)
    if price is None:
        return 0.0
    return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000
