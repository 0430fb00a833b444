"""The platforms `parley run` serves: each adapter gets its own settings section, and from the
core only the service, the file limits and whether message content may be logged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapters.discord.settings import DiscordSettings
from adapters.slack.settings import SlackSettings
from bots.bootstrap import Parley
from core.settings import load
from core.store.installations import InstallationRecords
from core.store.sql import SqlStore

if TYPE_CHECKING:
    from adapters.discord import DiscordAdapter
    from adapters.slack import SlackAdapter
    from bots.runtime import PlatformAdapter


@dataclass(frozen=True)
class Platforms:
    """The Slack and Discord sections of the settings, loaded once."""

    slack: SlackSettings
    discord: DiscordSettings

    @property
    def configured(self) -> bool:
        """Whether any platform has its credentials set."""
        return self.slack.configured or self.discord.configured


def load_platforms() -> Platforms:
    """Both platform sections, from the environment and ``.env`` (a wrong value: ConfigError)."""
    return Platforms(load(SlackSettings), load(DiscordSettings))


def slack_adapter(
    parley: Parley, settings: SlackSettings, *, host: str = "0.0.0.0", port: int | None = None
) -> SlackAdapter:
    """The Slack adapter on ``parley``'s core (slack-bolt is imported only now)."""
    from adapters.slack import SlackAdapter

    installations = None
    if settings.installable and isinstance(parley.store, SqlStore):
        installations = InstallationRecords(parley.store.engine, patience=parley.store.patience)
    adapter = SlackAdapter(
        settings,
        parley.service,
        attachments=parley.attachments,
        log_content=parley.settings.parley_log_content,
        host=host,
        port=port,
        installations=installations,
    )
    if parley.metrics is not None:
        from bots.metrics import watch_slack

        watch_slack(adapter.client, parley.metrics)
    return adapter


def discord_adapter(parley: Parley, settings: DiscordSettings) -> DiscordAdapter:
    """The Discord adapter on ``parley``'s core (discord.py is imported only now)."""
    from adapters.discord import DiscordAdapter

    trace = None
    if parley.metrics is not None:
        from bots.metrics import discord_trace

        trace = discord_trace(parley.metrics)
    return DiscordAdapter(
        settings,
        parley.service,
        attachments=parley.attachments,
        log_content=parley.settings.parley_log_content,
        http_trace=trace,
    )


def platform_adapters(parley: Parley, platforms: Platforms) -> list[PlatformAdapter]:
    """An adapter for each platform that is configured."""
    adapters: list[PlatformAdapter] = []
    if platforms.slack.configured:
        adapters.append(slack_adapter(parley, platforms.slack))
    if platforms.discord.configured:
        adapters.append(discord_adapter(parley, platforms.discord))
    return adapters
