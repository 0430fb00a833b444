"""`parley chat` as a user runs it: a real process, typed into through a pseudo-terminal."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect
import pytest

from adapters.standin.server import StandinServer

# The `parley` script installed next to this interpreter (the project's venv).
_SCRIPT = Path(sys.executable).with_name("parley")
PARLEY = str(_SCRIPT) if _SCRIPT.exists() else f"{sys.executable} -m bots.cli"
PROMPT = "you>"  # prompt_toolkit moves the cursor over the space after it


def chat_env(tmp_path, **env):
    """The environment of a user with no model configured, a fresh home and no colour wishes."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "DATABASE_URL", "NO_COLOR"))
    }
    # pexpect's terminal does not answer prompt_toolkit's cursor position requests.
    full_env.update(HOME=str(tmp_path), TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1")
    full_env.update(env)
    return full_env


def spawn(tmp_path, command="chat", **env):
    return pexpect.spawn(
        f"{PARLEY} {command}",
        cwd=str(tmp_path),
        env=chat_env(tmp_path, **env),
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 120),
    )


def test_offline_chat_streams_answers_runs_commands_and_remembers(tmp_path):
    child = spawn(tmp_path)
    child.expect("offline stand-in model")
    child.expect_exact(PROMPT)
    child.sendline("my favourite fruit is the mango")
    child.expect_exact("parley>")
    child.expect("You said: my favourite fruit is the mango")
    child.expect(r"\[parley-standin \(offline stand-in\): \d+ in / \d+ out tokens\]")
    child.expect_exact(PROMPT)
    child.sendline("/temperature lots")
    child.expect("not a number")
    child.expect_exact(PROMPT)
    child.sendline("/usage")
    child.expect(r"This channel: 1 model call,")
    child.expect_exact(PROMPT)
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (tmp_path / "parley.db").exists()

    again = spawn(tmp_path)
    again.expect_exact(PROMPT)
    again.sendline("/summarize")
    again.expect("Summary")
    again.expect("mango")
    again.expect_exact(PROMPT)
    again.sendeof()
    again.expect(pexpect.EOF)
    again.close()
    assert again.exitstatus == 0


@pytest.mark.asyncio
async def test_chat_against_a_server_given_as_openai_base_url(tmp_path):
    async with StandinServer() as server:
        child = spawn(
            tmp_path,
            OPENAI_BASE_URL=server.base_url,
            OPENAI_API_KEY="sk-test",
            OPENAI_MAX_RETRIES="0",
        )
        await _expect(child, "Parley on gpt-4o")
        await _expect(child, PROMPT)
        child.sendline("hello over http")
        await _expect(child, "You said: hello over http")
        await _expect(child, PROMPT)
        child.sendline("this one fails [[fault:server_error]]")
        await _expect(child, "⚠️ ")
        await _expect(child, "try again")
        await _expect(child, PROMPT)
        child.sendline("a long one [[fault:long_answer:3000]]")
        await _expect(child, "cut off at the output token limit")
        child.sendline("/quit")
        await _expect(child, pexpect.EOF)
        assert "Traceback" not in child.before
        assert any("hello over http" in str(r["messages"]) for r in server.requests)


async def _expect(child, pattern):
    if pattern is pexpect.EOF:
        return await child.expect(pexpect.EOF, async_=True)
    return await child.expect_exact(pattern, async_=True)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PARLEY_TEMPERATURE": "hot"}, "PARLEY_TEMPERATURE"),
        ({"PARLEY_PRICES": "{not json"}, "PARLEY_PRICES"),
        ({"DATABASE_URL": "mysql://db/parley"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://bob:hunter2@127.0.0.1:9/x"}, "cannot open the database"),
    ],
)
def test_bad_setting_stops_start_with_the_variable_name(tmp_path, env, named):
    child = spawn(tmp_path, **env)
    child.expect_exact(named)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2
    assert "Traceback" not in child.before
    assert "hunter2" not in child.before


def test_run_refuses_to_serve_users_with_the_offline_stand_in(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["DISCORD_TOKEN"] = "x"
    child = pexpect.spawn(f"{PARLEY} run", cwd=str(tmp_path), env=env, encoding="utf-8")
    child.expect("PARLEY_ALLOW_OFFLINE")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2


def test_run_without_platforms_names_the_variables(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_"))}
    child = pexpect.spawn(f"{PARLEY} run", cwd=str(tmp_path), env=env, encoding="utf-8")
    child.expect("SLACK_BOT_TOKEN")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2


def test_postgres_schema_must_be_upgraded_first(tmp_path, postgres_url):
    child = spawn(tmp_path, DATABASE_URL=postgres_url)
    child.expect("parley db upgrade")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2

    upgrade = pexpect.spawn(
        f"{PARLEY} db upgrade",
        cwd=str(tmp_path),
        env={**os.environ, "DATABASE_URL": postgres_url},
        encoding="utf-8",
    )
    upgrade.expect("database at revision")
    upgrade.expect(pexpect.EOF)
    upgrade.close()
    assert upgrade.exitstatus == 0

    chat = spawn(tmp_path, DATABASE_URL=postgres_url)
    chat.expect_exact(PROMPT)
    chat.sendline("stored in postgres")
    chat.expect("You said: stored in postgres")
    chat.expect_exact(PROMPT)
    chat.sendline("/quit")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0


@pytest.mark.asyncio
async def test_run_exits_non_zero_when_discord_ends_the_connection_for_good(tmp_path):
    from tests.fakes.discord_server import FakeDiscord

    async with FakeDiscord(identify_close_code=4004) as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SLACK_"))}
        env.update(
            DISCORD_TOKEN="bot-token",
            DISCORD_API_URL=fake.api_url,
            DISCORD_GATEWAY_URL=fake.gateway_url,
            PARLEY_ALLOW_OFFLINE="true",
        )
        child = pexpect.spawn(
            f"{PARLEY} run", cwd=str(tmp_path), env=env, encoding="utf-8", timeout=30
        )
        await child.expect("stopped for good", async_=True)
        await child.expect(pexpect.EOF, async_=True)
        child.close()
        assert child.exitstatus == 1
        assert "bot-token" not in child.before
