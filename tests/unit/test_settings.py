"""Settings: the core's section and each platform's, names in errors, secrets out of reprs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from adapters.discord.settings import DiscordSettings
from adapters.slack.settings import SlackSettings
from bots.cli import main
from core.errors import ConfigError
from core.settings import Settings, load, load_settings

SECTIONS = (Settings, SlackSettings, DiscordSettings)


def test_secrets_and_database_password_stay_out_of_repr():
    settings = Settings(
        _env_file=None,
        openai_api_key="sk-live-123",
        database_url="postgresql://bob:hunter2@db/parley",
    )
    slack = SlackSettings(
        _env_file=None, bot_token="xoxb-999", app_token="xapp-1", signing_secret="sig-5"
    )
    discord = DiscordSettings(_env_file=None, token="disc-777")
    text = "".join(repr(s) + str(s) for s in (settings, slack, discord))
    for secret in ("sk-live-123", "xoxb-999", "xapp-1", "sig-5", "disc-777", "hunter2"):
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
    monkeypatch.setenv("PARLEY_PRICES", '{"my-model": [1, 2]}')
    monkeypatch.setenv("OPENAI_API_KEY", "")
    settings = load_settings(_env_file=None)
    assert settings.parley_fallback_models == ["gpt-4o-mini", "gpt-4-turbo"]
    assert settings.parley_prices["my-model"] == (1.0, 2.0)
    assert settings.parley_prices["gpt-4o"] == (2.5, 10.0)
    assert settings.offline


@pytest.mark.parametrize(
    ("section", "variable", "value"),
    [
        (SlackSettings, "SLACK_PORT", "http"),
        (SlackSettings, "SLACK_PORT", "70000"),
        (SlackSettings, "SLACK_MODE", "webhook"),
        (DiscordSettings, "DISCORD_GUILD_IDS", "123,my-server"),
        (DiscordSettings, "DISCORD_EDIT_INTERVAL", "-1"),
    ],
)
def test_a_wrong_platform_value_is_one_sentence_naming_the_variable(
    monkeypatch, section, variable, value
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load(section, _env_file=None)
    message = str(info.value)
    assert message.startswith(f"invalid settings: {variable}: ")
    assert "\n" not in message


def test_platform_variables_keep_their_names(monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    monkeypatch.setenv("SLACK_MODE", "http")
    monkeypatch.setenv("SLACK_PORT", "8080")
    monkeypatch.setenv("DISCORD_TOKEN", "d-1")
    monkeypatch.setenv("DISCORD_GUILD_IDS", "1, 2")
    monkeypatch.setenv("DISCORD_BLOCKED_USERS", "none")
    monkeypatch.setenv("DISCORD_ALLOWED_ROLES", "")
    slack = load(SlackSettings, _env_file=None)
    discord = load(DiscordSettings, _env_file=None)
    assert slack.configured and slack.mode == "http" and slack.port == 8080
    assert slack.bot_token is not None and slack.bot_token.get_secret_value() == "xoxb-1"
    assert discord.configured and discord.guild_ids == [1, 2]
    assert discord.blocked_users == [] and discord.allowed_roles == []


def test_nothing_is_configured_without_tokens(monkeypatch):
    for variable in ("SLACK_BOT_TOKEN", "DISCORD_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    assert not load(SlackSettings, _env_file=None).configured
    assert not load(DiscordSettings, _env_file=None).configured


def test_one_env_file_feeds_every_section(tmp_path, monkeypatch):
    for variable in (
        "PARLEY_MODEL",
        "SLACK_BOT_TOKEN",
        "SLACK_COMMAND",
        "DISCORD_TOKEN",
        "DISCORD_ALLOWED_GUILDS",
    ):
        monkeypatch.delenv(variable, raising=False)
    env = tmp_path / ".env"
    env.write_text(
        "PARLEY_MODEL=gpt-4o-mini\n"
        "SLACK_BOT_TOKEN=xoxb-from-file\n"
        "SLACK_COMMAND=/ask-parley\n"
        "DISCORD_TOKEN=disc-from-file\n"
        "DISCORD_ALLOWED_GUILDS=7,8\n"
    )
    monkeypatch.chdir(tmp_path)
    core, slack, discord = (load(section) for section in SECTIONS)
    assert core.parley_model == "gpt-4o-mini"
    assert slack.bot_token is not None and slack.bot_token.get_secret_value() == "xoxb-from-file"
    assert slack.command == "/ask-parley"
    assert discord.token is not None and discord.token.get_secret_value() == "disc-from-file"
    assert discord.allowed_guilds == [7, 8]


def test_a_wrong_value_in_the_env_file_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("SLACK_PORT", raising=False)
    (tmp_path / ".env").write_text("SLACK_PORT=three thousand\n")
    monkeypatch.chdir(tmp_path)
    load(Settings)  # other sections do not read SLACK_*
    with pytest.raises(ConfigError, match=r"^invalid settings: SLACK_PORT: "):
        load(SlackSettings)


def test_core_settings_have_no_platform_fields():
    platform = [name for name in Settings.model_fields if name.startswith(("slack", "discord"))]
    assert platform == []
    assert not hasattr(Settings(_env_file=None), "slack_configured")


@pytest.mark.parametrize("section", SECTIONS)
def test_env_example_lists_every_variable_with_its_default(section):
    example = Path(__file__).parents[2] / ".env.example"
    names = {line.split("=", 1)[0] for line in example.read_text().splitlines() if "=" in line}
    prefix = section.model_config.get("env_prefix", "")
    missing = [
        f"{prefix}{f}".upper() for f in section.model_fields if f"{prefix}{f}".upper() not in names
    ]
    assert missing == []
    assert section(_env_file=example).model_dump() == section(_env_file=None).model_dump()


@pytest.fixture
def log_levels():
    """Put back the logger levels ``main`` sets for the process, so later tests see all logs."""
    names = logging.root.manager.loggerDict
    before = {name: logging.getLogger(name).level for name in names}
    yield
    for name in list(names):
        logging.getLogger(name).setLevel(before.get(name, logging.NOTSET))


def test_parley_run_stops_on_a_wrong_platform_value_with_one_sentence(
    tmp_path, monkeypatch, capsys, log_levels
):
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    monkeypatch.setenv("DISCORD_GUILD_IDS", "my-server")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parley: invalid settings: DISCORD_GUILD_IDS: ")
    assert err.count("\n") == 1
