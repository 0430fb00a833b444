"""The Discord adapter: slash commands, /chat threads and mentions, answers streamed by edits."""

from adapters.discord.adapter import DiscordAdapter

__all__ = ["DiscordAdapter"]
