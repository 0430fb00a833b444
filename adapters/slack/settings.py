"""Slack's section of the settings: the ``SLACK_*`` variables, from the environment and ``.env``.

Loaded by the composition root (``core.settings.load(SlackSettings)``) and handed to the
adapter; nothing in the Slack adapter reads the core's settings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.settings import ENV_CONFIG, split_csv

# Comma-separated Slack ids ("none" or empty: none).
IdList = Annotated[list[str], NoDecode]


class SlackSettings(BaseSettings):
    """How Parley reaches one Slack workspace. ``.env.example`` documents each variable."""

    model_config = SettingsConfigDict(**ENV_CONFIG, env_prefix="SLACK_")

    bot_token: SecretStr | None = None
    app_token: SecretStr | None = None
    signing_secret: SecretStr | None = None
    mode: Literal["socket", "http"] = "socket"
    port: int = Field(3000, ge=1, le=65535)
    api_url: str = "https://slack.com/api/"
    command: str = "/parley"
    follow_threads: bool = False
    update_interval: float = Field(1.0, ge=0.0)
    # 👍/👎 buttons under each answer (needs interactivity in the app's settings).
    feedback_buttons: bool = True
    # Who may change a channel's settings or reset it, besides workspace admins and owners.
    admin_users: IdList = Field(default_factory=list)
    admin_groups: IdList = Field(default_factory=list)
    channel_creator_is_admin: bool = False
    # Work in flight: answers run at once per worker (more wait their turn); the HTTP edge.
    max_concurrent_answers: int = Field(32, ge=1)
    http_max_body: int = Field(1_000_000, ge=1024)
    http_read_timeout: float = Field(10.0, gt=0.0)

    @field_validator("admin_users", "admin_groups", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        return split_csv(value)

    @property
    def configured(self) -> bool:
        """Whether Slack is set up at all (``parley run`` starts it only then)."""
        return self.bot_token is not None
