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

# The bot scopes of slack-app-manifest.yaml (a test keeps the two the same): what an OAuth
# install asks for unless SLACK_SCOPES says otherwise.
BOT_SCOPES = (
    "app_mentions:read",
    "assistant:write",
    "channels:history",
    "groups:history",
    "im:history",
    "mpim:history",
    "chat:write",
    "commands",
    "files:read",
    "files:write",
    "users:read",
    "usergroups:read",
    "channels:read",
    "groups:read",
)


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
    # Installing into many workspaces (HTTP mode, no SLACK_BOT_TOKEN): Slack's OAuth flow.
    client_id: str | None = None
    client_secret: SecretStr | None = None
    scopes: IdList = Field(default_factory=lambda: list(BOT_SCOPES))
    install_path: str = "/slack/install"
    redirect_path: str = "/slack/oauth_redirect"
    # The full redirect URL registered with the app (empty: the app's one registered URL).
    redirect_uri: str | None = None
    authorize_url: str = "https://slack.com/oauth/v2/authorize"

    @field_validator("admin_users", "admin_groups", "scopes", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        return split_csv(value)

    @property
    def configured(self) -> bool:
        """Whether Slack is set up at all (``parley run`` starts it only then)."""
        return self.bot_token is not None or self.installable

    @property
    def installable(self) -> bool:
        """Whether Parley installs into workspaces through OAuth (no ``SLACK_BOT_TOKEN``, and
        the app's client id and secret are set); with a bot token it serves that one workspace."""
        return self.bot_token is None and bool(self.client_id) and self.client_secret is not None
