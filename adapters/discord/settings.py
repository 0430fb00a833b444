"""Discord's section of the settings: the ``DISCORD_*`` variables, from the environment and
``.env``.

Loaded by the composition root (``core.settings.load(DiscordSettings)``) and handed to the
adapter; nothing in the Discord adapter reads the core's settings.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.settings import ENV_CONFIG, split_csv

# Comma-separated ids ("none" or empty: none).
IdList = Annotated[list[int], NoDecode]


class DiscordSettings(BaseSettings):
    """How Parley reaches Discord, and where it may answer. ``.env.example`` documents each
    variable."""

    model_config = SettingsConfigDict(**ENV_CONFIG, env_prefix="DISCORD_")

    token: SecretStr | None = None
    guild_ids: IdList = Field(default_factory=list)
    allowed_guilds: IdList = Field(default_factory=list)
    blocked_guilds: IdList = Field(default_factory=list)
    allowed_channels: IdList = Field(default_factory=list)
    blocked_channels: IdList = Field(default_factory=list)
    allowed_roles: IdList = Field(default_factory=list)
    blocked_users: IdList = Field(default_factory=list)
    settings_permission: str = "manage_messages"
    api_url: str | None = None
    gateway_url: str | None = None
    edit_interval: float = Field(1.0, ge=0.0)
    max_concurrent_answers: int = Field(32, ge=1)
    # Sharding: how many shards the bot's connection is split into (empty: one, unsharded),
    # and which of them this worker runs (empty: all of them).
    shard_count: int | None = Field(None, ge=1)
    shard_ids: IdList = Field(default_factory=list)

    @field_validator(
        "guild_ids",
        "allowed_guilds",
        "blocked_guilds",
        "allowed_channels",
        "blocked_channels",
        "allowed_roles",
        "blocked_users",
        "shard_ids",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        return split_csv(value)

    @model_validator(mode="after")
    def _check_shards(self) -> DiscordSettings:
        if self.shard_ids and self.shard_count is None:
            raise ValueError(
                "DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT (the total number of shards)"
            )
        count = self.shard_count or 1
        wrong = [i for i in self.shard_ids if not 0 <= i < count]
        if wrong:
            raise ValueError(
                f"DISCORD_SHARD_IDS: shard ids run from 0 to DISCORD_SHARD_COUNT - 1 ({count - 1}), "
                f"not {wrong[0]}"
            )
        if len(set(self.shard_ids)) != len(self.shard_ids):
            raise ValueError("DISCORD_SHARD_IDS: a shard id is listed twice")
        return self

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The shards this worker runs (None: unsharded, the whole bot on one connection)."""
        if self.shard_count is None:
            return None
        return tuple(self.shard_ids) or tuple(range(self.shard_count))

    @property
    def configured(self) -> bool:
        """Whether Discord is set up at all (``parley run`` starts it only then)."""
        return self.token is not None
