"""Slack installations and OAuth states in the SQL database (slack_sdk's store interfaces on
Parley's own tables), on SQLite and on the PostgreSQL server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from slack_sdk.oauth.installation_store import Installation

from adapters.slack.installations import SqlInstallationStore, SqlOAuthStateStore
from adapters.slack.settings import BOT_SCOPES
from core.store import schema
from core.store.installations import InstallationRecords
from core.store.sql import make_engine


@pytest.fixture
async def records(database_url):
    engine = make_engine(database_url)
    await schema.upgrade(engine)
    yield InstallationRecords(engine)
    await engine.dispose()


def installation(team: str, token: str, **extra: object) -> Installation:
    return Installation(
        app_id="A0PARLEY",
        team_id=team,
        team_name=f"Team {team}",
        bot_token=token,
        bot_id=f"B{team}",
        bot_user_id=f"U{team}",
        bot_scopes=["chat:write", "app_mentions:read"],
        user_id="UALICE",
        **extra,  # type: ignore[arg-type]
    )


async def test_installations_are_kept_per_workspace_and_replaced_by_a_reinstall(records):
    store = SqlInstallationStore(records)
    await store.async_save(installation("T1", "xoxb-one", user_token="xoxp-alice"))
    await store.async_save(installation("T2", "xoxb-two", bot_token_expires_at=2_000_000_000))
    await store.async_save(installation("T1", "xoxb-one-again"))

    one = await store.async_find_installation(enterprise_id=None, team_id="T1")
    assert one is not None and one.bot_token == "xoxb-one-again" and one.user_token is None
    assert one.bot_scopes == ["chat:write", "app_mentions:read"] and one.team_name == "Team T1"
    bot = await store.async_find_bot(enterprise_id=None, team_id="T2")
    assert bot is not None and bot.bot_token == "xoxb-two" and bot.bot_user_id == "UT2"
    assert bot.bot_token_expires_at == 2_000_000_000
    assert await store.async_find_bot(enterprise_id=None, team_id="T3") is None
    # Asked for another person's installation: none.
    assert (
        await store.async_find_installation(enterprise_id=None, team_id="T1", user_id="U9") is None
    )


async def test_revoking_a_person_keeps_the_bot_and_uninstalling_forgets_the_workspace(records):
    store = SqlInstallationStore(records)
    await store.async_save(installation("T1", "xoxb-one", user_token="xoxp-alice"))
    await store.async_save(installation("T2", "xoxb-two"))

    await store.async_delete_installation(enterprise_id=None, team_id="T1", user_id="UALICE")
    kept = await store.async_find_installation(enterprise_id=None, team_id="T1")
    assert kept is not None and kept.bot_token == "xoxb-one" and kept.user_token is None

    await store.async_delete_all(enterprise_id=None, team_id="T1")
    assert await store.async_find_installation(enterprise_id=None, team_id="T1") is None
    assert await store.async_find_bot(enterprise_id=None, team_id="T2") is not None
    await store.async_delete_bot(enterprise_id=None, team_id="T2")
    assert await store.async_find_bot(enterprise_id=None, team_id="T2") is None


async def test_a_state_is_good_once_until_it_expires(records):
    states = SqlOAuthStateStore(records, expiration_seconds=600)
    first, second = await states.async_issue(), await states.async_issue()
    assert first != second and len(first) >= 40
    assert await states.async_consume(first)
    assert not await states.async_consume(first)
    assert not await states.async_consume("never-issued")

    stale = SqlOAuthStateStore(records, expiration_seconds=-1)
    expired = await stale.async_issue()
    assert not await states.async_consume(expired)
    assert await states.async_consume(second)


async def test_two_workers_consuming_one_state_get_it_once(records):
    states = SqlOAuthStateStore(records, expiration_seconds=600)
    state = await states.async_issue()
    results = await asyncio.gather(*(states.async_consume(state) for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]


def test_default_scopes_are_the_manifests() -> None:
    manifest = (Path(__file__).parents[2] / "slack-app-manifest.yaml").read_text()
    bot = manifest.split("    bot:\n", 1)[1].split("settings:", 1)[0]
    listed = [line.split("#")[0].strip()[2:].strip() for line in bot.splitlines() if "- " in line]
    assert tuple(listed) == BOT_SCOPES
