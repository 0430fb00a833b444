"""Parley's core settings, and the loader every section of settings goes through.

Each platform adapter keeps its own section (``adapters.slack.settings``,
``adapters.discord.settings``); all read the same environment and ``.env``. Only the
composition root (``bots/``) loads them. A field's environment variable is the section's prefix
plus the field name (case-insensitive); secrets are ``SecretStr`` so they never show in logs or
reprs.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.errors import ConfigError
from core.pricing import DEFAULT_PRICES

# How every section reads its variables: the environment first, then ``.env``; an empty value
# counts as unset; variables of other sections are ignored.
ENV_CONFIG = SettingsConfigDict(
    env_file=".env",
    env_file_encoding="utf-8",
    extra="ignore",
    case_sensitive=False,
    env_ignore_empty=True,
)

SectionT = TypeVar("SectionT", bound=BaseSettings)


def split_csv(value: Any) -> Any:
    """A comma-separated environment value as a list; "none" is the empty list."""
    if isinstance(value, str):
        if value.strip().lower() == "none":
            return []
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """The core's knobs: model, conversations, limits, storage, logging. ``.env.example``
    documents each with its default."""

    model_config = SettingsConfigDict(**ENV_CONFIG)

    # --- OpenAI ---------------------------------------------------------------------------
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_organization: str | None = None
    openai_timeout: float = Field(60.0, gt=0)
    openai_max_retries: int = Field(2, ge=0, le=10)
    # Deadlines the core puts on every model call, retries included: the first piece of the
    # answer, and the whole answer. A stalled model is noticed after the first, not after
    # the client's timeout times its attempts.
    parley_first_token_timeout: float = Field(20.0, gt=0)
    parley_answer_timeout: float = Field(300.0, gt=0)

    # --- model and conversation defaults --------------------------------------------------
    parley_model: str = "gpt-4o"
    parley_fallback_models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["gpt-4o-mini"]
    )
    parley_system_prompt: str = (
        "You are Parley, a helpful assistant in a team chat. Answer concisely and use Markdown."
    )
    parley_temperature: float = Field(0.7, ge=0.0, le=2.0)
    parley_max_output_tokens: int = Field(1024, ge=16, le=16384)
    parley_input_budget: int = Field(16000, ge=256, le=128000)
    parley_model_window: int = Field(128000, ge=1024)
    parley_summarize_overflow: bool = True
    parley_prices: Annotated[dict[str, tuple[float, float]], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES)
    )
    # Voice answers (``speak``): OpenAI's speech model and voice, and the audio file format.
    parley_tts_model: str = "gpt-4o-mini-tts"
    parley_tts_voice: str = "alloy"
    parley_tts_format: Literal["mp3", "opus"] = "mp3"
    parley_max_image_bytes: int = Field(5_000_000, ge=1)
    parley_max_text_file_bytes: int = Field(100_000, ge=1)
    parley_user_budget_usd: float | None = Field(None, ge=0)
    parley_user_messages_per_minute: int | None = Field(None, ge=1)
    parley_log_content: bool = False
    parley_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # The event loop `parley run` runs on: uvloop's (less CPU per turn; where it is installed)
    # or the standard library's.
    parley_event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # `parley run` with no OpenAI key refuses to answer real users with the offline stand-in
    # unless this is set.
    parley_allow_offline: bool = False

    # --- storage --------------------------------------------------------------------------
    # Left out of reprs: a PostgreSQL URL may carry a password.
    database_url: str = Field("sqlite+aiosqlite:///parley.db", repr=False)
    # How long a store call waits for an unreachable database (refusing connections,
    # restarting, failing over) before the message it serves fails.
    database_retry_seconds: float = Field(60.0, ge=0, le=3600)
    # How long a worker's claims and conversations stay held after it stops renewing them
    # (it died): then another worker finishes its answers. Renewed every third of it.
    database_lease_seconds: float = Field(30.0, ge=1, le=3600)

    @field_validator("parley_fallback_models", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        return split_csv(value)

    @field_validator("parley_log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("openai_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. http://localhost:11434/v1")
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        """Accept the usual URL spellings and pick Parley's async drivers."""
        for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
            if value.startswith(prefix):
                return "postgresql+asyncpg://" + value[len(prefix) :]
        if value.startswith("sqlite://"):
            return "sqlite+aiosqlite://" + value[len("sqlite://") :]
        if value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            return value
        raise ValueError(
            "must be a SQLite URL (sqlite+aiosqlite:///parley.db) or a PostgreSQL URL "
            "(postgresql+asyncpg://user:password@host:5432/db)"
        )

    @field_validator("parley_prices", mode="before")
    @classmethod
    def _merge_prices(cls, value: Any) -> Any:
        """PARLEY_PRICES is JSON like {"gpt-4o": [2.5, 10]}: USD per 1M input and output tokens
        by exact model name; it adds to or overrides the defaults of ``core.pricing``."""
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f'must be JSON like {{"gpt-4o": [5, 15]}} ({exc.msg})') from exc
        if not isinstance(value, dict):
            raise ValueError('must be a JSON object like {"gpt-4o": [5, 15]}')
        return {**DEFAULT_PRICES, **value}

    @property
    def offline(self) -> bool:
        """No key and no endpoint: Parley runs against its built-in offline stand-in model."""
        return self.openai_api_key is None and not self.openai_base_url


def load(cls: type[SectionT], **overrides: Any) -> SectionT:
    """Build the settings section ``cls``; a wrong value raises one ConfigError sentence that
    names each variable at fault with its prefix (``SLACK_PORT: ...``)."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix") or "")
        problems = []
        for err in exc.errors():
            name = f"{prefix}{err['loc'][0]}".upper() if err["loc"] else "settings"
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None


def load_settings(**overrides: Any) -> Settings:
    """The core settings (see ``load``)."""
    return load(Settings, **overrides)
