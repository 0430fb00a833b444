"""What a model call costs, from a price table of USD per 1M input and output tokens.

Prices are looked up by the exact model name the server reported (a snapshot such as
``gpt-4o-2024-08-06`` or an alias such as ``gpt-4o``), never by prefix: models that share a
prefix (gpt-4, gpt-4.1, gpt-4.5) cost very different amounts. A model missing from the table
has no price: Parley shows its tokens and says the price is unknown, never a made-up dollar
figure. ``PARLEY_PRICES`` adds or overrides entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import TypeVar

T = TypeVar("T")

Prices = Mapping[str, tuple[float, float]]

# The model name the offline stand-in server answers as; it costs nothing.
STANDIN_MODEL = "parley-standin"

# OpenAI's standard-tier prices, USD per 1M tokens (input, output), as published on
# https://openai.com/api/pricing; checked on this date. An alias costs what the snapshot it
# points to costs today (gpt-4o is gpt-4o-2024-08-06); a snapshot keeps its own price.
PRICES_CHECKED = "2026-06-21"
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-2024-11-20": (2.5, 10.0),
    "gpt-4o-2024-08-06": (2.5, 10.0),
    "gpt-4o-2024-05-13": (5.0, 15.0),  # gpt-4o's launch price
    "chatgpt-4o-latest": (5.0, 15.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4o-mini-2024-07-18": (0.15, 0.6),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-2025-04-14": (2.0, 8.0),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1-mini-2025-04-14": (0.4, 1.6),
    "gpt-4.1-nano": (0.1, 0.4),
    "gpt-4.1-nano-2025-04-14": (0.1, 0.4),
    "gpt-4.5-preview": (75.0, 150.0),
    "gpt-4.5-preview-2025-02-27": (75.0, 150.0),
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4-turbo-2024-04-09": (10.0, 30.0),
    "gpt-4-turbo-preview": (10.0, 30.0),
    "gpt-4-0125-preview": (10.0, 30.0),
    "gpt-4-1106-preview": (10.0, 30.0),
    "gpt-4": (30.0, 60.0),
    "gpt-4-0613": (30.0, 60.0),
    "gpt-4-32k": (60.0, 120.0),
    "gpt-3.5-turbo": (0.5, 1.5),
    "gpt-3.5-turbo-0125": (0.5, 1.5),
    "o1": (15.0, 60.0),
    "o1-2024-12-17": (15.0, 60.0),
    "o1-mini": (1.1, 4.4),
    "o1-mini-2024-09-12": (1.1, 4.4),
    "o3": (2.0, 8.0),
    "o3-2025-04-16": (2.0, 8.0),
    "o3-mini": (1.1, 4.4),
    "o3-mini-2025-01-31": (1.1, 4.4),
    "o4-mini": (1.1, 4.4),
    "o4-mini-2025-04-16": (1.1, 4.4),
    # Text to speech billed by tokens: text in, audio out (checked on SPEECH_PRICES_CHECKED).
    "gpt-4o-mini-tts": (0.6, 12.0),
    "gpt-4o-mini-tts-2025-03-20": (0.6, 12.0),
    STANDIN_MODEL: (0.0, 0.0),
}

# Text to speech billed by characters of input, USD per 1M characters (tts-1, tts-1-hd), as
# published on https://openai.com/api/pricing; checked on this date.
SPEECH_PRICES_CHECKED = "2026-12-01"
SPEECH_CHARACTER_PRICES: dict[str, float] = {
    "tts-1": 15.0,
    "tts-1-1106": 15.0,
    "tts-1-hd": 30.0,
    "tts-1-hd-1106": 30.0,
}

# Context windows (input and output together) of models whose window is known; others use
# what the server reports, or PARLEY_MODEL_WINDOW.
MODEL_WINDOWS: dict[str, int] = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "chatgpt-4o-latest": 128_000,
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
    "o1": 200_000,
    "o1-mini": 128_000,
    "o3": 200_000,
    "o4-mini": 200_000,
}


def lookup(model: str, table: Mapping[str, T]) -> T | None:
    """``table``'s entry for ``model``: exact, else the longest key that prefixes it
    (so "gpt-4o-2024-08-06" finds "gpt-4o" and "gpt-4o-mini" finds itself)."""
    if model in table:
        return table[model]
    matches = [name for name in table if model.startswith(name)]
    return table[max(matches, key=len)] if matches else None


def price_for(model: str, prices: Prices) -> tuple[float, float] | None:
    """USD per 1M (input, output) tokens of exactly ``model``, if known."""
    return prices.get(model)


def speech_cost_usd(
    model: str,
    characters: int,
    tokens: tuple[int, int] | None,
    prices: Prices,
    character_prices: Mapping[str, float] = SPEECH_CHARACTER_PRICES,
) -> float | None:
    """What reading ``characters`` aloud with ``model`` cost: by character for the models
    billed that way, else by the (text in, audio out) ``tokens`` the server reported; None
    when neither price nor tokens are known (never a guess)."""
    per_character = character_prices.get(model)
    if per_character is not None:
        return characters * per_character / 1_000_000
    if tokens is None:
        return None
    return cost_usd(model, tokens[0], tokens[1], prices)


@lru_cache(maxsize=256)
def window_for(model: str, default: int) -> int:
    """Tokens ``model`` accepts for input and output together (by name; prefixes match).
    Asked several times a turn: the prefix search is made once per model."""
    return lookup(model, MODEL_WINDOWS) or default


def cost_usd(model: str, input_tokens: int, output_tokens: int, prices: Prices) -> float | None:
    """Cost in USD, or None when ``model`` has no price (never a guess)."""
    price = price_for(model, prices)
    if price is None:
        return None
    return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000


__all__ = [
    "DEFAULT_PRICES",
    "MODEL_WINDOWS",
    "PRICES_CHECKED",
    "SPEECH_CHARACTER_PRICES",
    "SPEECH_PRICES_CHECKED",
    "STANDIN_MODEL",
    "Prices",
    "cost_usd",
    "lookup",
    "price_for",
    "speech_cost_usd",
    "window_for",
]
