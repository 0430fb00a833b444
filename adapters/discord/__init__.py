"""The Discord adapter: slash commands, /chat threads and mentions, answers streamed by edits.

``DiscordAdapter`` is imported on first use, so the composition root can read
``adapters.discord.settings`` (to see whether Discord is configured) without loading discord.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.discord.adapter import DiscordAdapter

__all__ = ["DiscordAdapter"]


def __getattr__(name: str) -> Any:
    if name == "DiscordAdapter":
        from adapters.discord.adapter import DiscordAdapter

        return DiscordAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
