"""Settings: names in errors, secrets out of reprs, URL spellings."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from core.settings import Settings, load_settings


def test_secrets_and_database_password_stay_out_of_repr():
    settings = Settings(
        _env_file=None,
        openai_api_key="sk-live-123",
        slack_bot_token="xoxb-999",
        discord_token="disc-777",
        database_url="postgresql://bob:hunter2@db/parley",
    )
    text = repr(settings) + str(settings)
    for secret in ("sk-live-123", "xoxb-999", "disc-777", "hunter2"):
        assert secret not in text
    assert settings.database_url == "postgresql+asyncpg://bob:hunter2@db/parley"


def test_invalid_values_name_the_variable(monkeypatch):
    monkeypatch.setenv("OPENAI_TIMEOUT", "-1")
    monkeypatch.setenv("PARLEY_PRICES", "[1, 2]")
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    assert "OPENAI_TIMEOUT" in str(info.value) and "PARLEY_PRICES" in str(info.value)


def test_lists_prices_and_empty_values_from_the_environment(monkeypatch):
    monkeypatch.setenv("PARLEY_FALLBACK_MODELS", "gpt-4o-mini, gpt-4-turbo")
    monkeypatch.setenv("DISCORD_GUILD_IDS", "1,2")
    monkeypatch.setenv("PARLEY_PRICES", '{"my-model": [1, 2]}')
    monkeypatch.setenv("OPENAI_API_KEY", "")
    settings = load_settings(_env_file=None)
    assert settings.parley_fallback_models == ["gpt-4o-mini", "gpt-4-turbo"]
    assert settings.discord_guild_ids == [1, 2]
    assert settings.parley_prices["my-model"] == (1.0, 2.0)
    assert settings.parley_prices["gpt-4o"] == (2.5, 10.0)
    assert settings.offline
