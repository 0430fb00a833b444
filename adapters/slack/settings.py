"""Slack's section of the settings: the ``SLACK_*`` variables, from the environment and ``.env``.

Loaded by the composition root (``core.settings.load(SlackSettings)``) and handed to the
adapter; nothing in the Slack adapter reads the core's settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.settings import ENV_CONFIG


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

    @property
    def configured(self) -> bool:
        """Whether Slack is set up at all (``parley run`` starts it only then)."""
        return self.bot_token is not None
