"""Parley installed into several Slack workspaces through OAuth (HTTP mode): real slack_bolt and
slack_sdk against the fake Slack, the installations in the real database (SQLite here;
PostgreSQL too when reachable), the stand-in model.

A browser's install is played as Slack plays it: GET /slack/install gives a state (a cookie and
Slack's authorize URL), Slack's page hands back a code, GET /slack/oauth_redirect exchanges it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from adapters.slack import SlackAdapter
from adapters.slack.installations import SqlInstallationStore
from adapters.slack.settings import BOT_SCOPES, SlackSettings
from adapters.standin.server import StandinServer
from bots.bootstrap import Parley, build
from bots.platforms import slack_adapter
from core.errors import ConfigError
from core.settings import Settings
from tests.fakes.slack_server import FakeSlack, Team

COOKIE = "slack-app-oauth-state"


@dataclass
class Installed:
    slack: FakeSlack
    standin: StandinServer
    parley: Parley
    adapter: SlackAdapter
    http: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.adapter.port}{path}"

    @property
    def store(self) -> SqlInstallationStore:
        assert self.adapter.installations is not None
        return self.adapter.installations

    async def begin(self) -> tuple[str, str]:
        """GET /slack/install: Slack's authorize URL, and the state (also its cookie)."""
        async with self.http.get(self.url("/slack/install"), allow_redirects=False) as response:
            assert response.status == 302
            location = response.headers["Location"]
            cookie = response.cookies[COOKIE].value
        state = parse_qs(urlsplit(location).query)["state"][0]
        assert cookie == state
        return location, state

    async def back(self, code: str, state: str, cookie: str | None) -> tuple[int, str]:
        """Slack sends the browser back to /slack/oauth_redirect."""
        headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else {}
        query = {"code": code, "state": state}
        async with self.http.get(
            self.url("/slack/oauth_redirect"), params=query, headers=headers, allow_redirects=False
        ) as response:
            return response.status, await response.text()

    async def install(self, team_id: str) -> None:
        _, state = await self.begin()
        status, page = await self.back(self.slack.grant(team_id), state, state)
        assert status == 200, page

    async def mention(self, team: Team, channel: str, text: str) -> str:
        """A mention of Parley in ``team``; returns the message's ts once handled."""
        message = self.slack.add_message(channel, f"<@{team.bot_user_id}> {text}")
        event = {
            "type": "app_mention",
            "user": "UALICE",
            "text": message.text,
            "ts": message.ts,
            "channel": channel,
            "team": team.team_id,
            "event_ts": message.ts,
        }
        status = await self.event(team, event)
        assert status == 200
        return message.ts

    async def event(self, team: Team, event: dict[str, Any]) -> int:
        body = self.slack.event_body(event, team=team)
        status = await self.slack.post_event(self.url("/slack/events"), body)
        await self.adapter.drain()
        return status


@contextlib.asynccontextmanager
async def installed_stack(
    tmp_path: Any, database_url: str | None = None
) -> AsyncIterator[Installed]:
    async with FakeSlack() as slack, StandinServer() as standin:
        settings = Settings(
            _env_file=None,
            openai_base_url=standin.base_url,
            openai_api_key="test",
            openai_max_retries=0,
            database_url=database_url or f"sqlite+aiosqlite:///{tmp_path}/p.db",
        )
        section = SlackSettings(
            _env_file=None,
            client_id=slack.client_id,
            client_secret=slack.client_secret,
            signing_secret=slack.signing_secret,
            mode="http",
            api_url=slack.base_url,
            authorize_url=f"{slack.url}/oauth/v2/authorize",
            update_interval=0.01,
        )
        parley = await build(settings)
        adapter = slack_adapter(parley, section, host="127.0.0.1", port=0)
        await adapter.start()
        try:
            async with aiohttp.ClientSession() as http:
                yield Installed(slack, standin, parley, adapter, http)
        finally:
            await adapter.stop()
            await parley.close()


@pytest.fixture
async def stack(tmp_path: Any) -> AsyncIterator[Installed]:
    async with installed_stack(tmp_path) as s:
        yield s


def answered_with(slack: FakeSlack, channel: str, thread_ts: str) -> set[str]:
    """The tokens of the writes that answered in a thread."""
    return {
        c.token
        for c in slack.calls
        if c.method in ("chat.startStream", "chat.postMessage")
        and c.params.get("channel") == channel
        and c.params.get("thread_ts") == thread_ts
        and c.ok
    }


async def test_install_into_two_workspaces_answer_in_each_and_uninstall_one(
    stack: Installed,
) -> None:
    slack = stack.slack
    one, two = slack.add_team("T0ONE"), slack.add_team("T0TWO")

    location, _ = await stack.begin()
    asked = parse_qs(urlsplit(location).query)
    assert location.startswith(f"{slack.url}/oauth/v2/authorize?")
    assert asked["client_id"] == [slack.client_id]
    assert asked["scope"] == [",".join(BOT_SCOPES)]
    await stack.install("T0ONE")
    await stack.install("T0TWO")
    for team in (one, two):
        bot = await stack.store.async_find_bot(enterprise_id=None, team_id=team.team_id)
        assert bot is not None and bot.bot_token == team.bot_token
        assert bot.bot_user_id == team.bot_user_id and bot.bot_id == team.bot_id
    # The code was exchanged with the app's credentials, never logged in a call's parameters.
    assert [c.ok for c in slack.called("oauth.v2.access")] == [True, True]

    first = await stack.mention(one, "C0ONE", "hello from one")
    second = await stack.mention(two, "C0TWO", "hello from two")
    assert answered_with(slack, "C0ONE", first) == {one.bot_token}
    assert answered_with(slack, "C0TWO", second) == {two.bot_token}
    assert "You said: hello from one" in slack.thread("C0ONE", first)[-1].text
    assert slack.thread("C0TWO", second)[-1].bot_id == two.bot_id
    # Each bot token's auth.test was asked once, however many requests came.
    await stack.mention(one, "C0ONE", "again")
    assert sorted(c.token for c in slack.called("auth.test") if c.ok) == sorted(
        [one.bot_token, two.bot_token] * 2  # once by the install, once by authorization
    )

    # Slack sends app_uninstalled (and tokens_revoked) when workspace one removes Parley.
    slack.uninstall("T0ONE")
    uninstalled = {"type": "app_uninstalled", "event_ts": slack.next_ts()}
    assert await stack.event(one, uninstalled) == 200
    revoked = {"type": "tokens_revoked", "tokens": {"bot": [one.bot_user_id]}}
    assert await stack.event(one, {**revoked, "event_ts": slack.next_ts()}) == 200
    assert await stack.store.async_find_bot(enterprise_id=None, team_id="T0ONE") is None
    assert await stack.store.async_find_bot(enterprise_id=None, team_id="T0TWO") is not None

    calls = len(slack.calls)
    ignored = await stack.mention(one, "C0ONE", "anyone there?")
    assert answered_with(slack, "C0ONE", ignored) == set()
    assert not [c for c in slack.calls[calls:] if c.token == one.bot_token]
    still = await stack.mention(two, "C0TWO", "still here?")
    assert answered_with(slack, "C0TWO", still) == {two.bot_token}


async def test_an_install_needs_its_own_unused_state(stack: Installed) -> None:
    slack = stack.slack
    slack.add_team("T0ONE")
    _, state = await stack.begin()

    # Without the browser's cookie, or with another state's: refused (400), nothing exchanged.
    assert (await stack.back(slack.grant("T0ONE"), state, None))[0] == 400
    _, other = await stack.begin()
    assert (await stack.back(slack.grant("T0ONE"), state, other))[0] == 400
    # A state Parley never issued (the cookie forged to match it): 401.
    assert (await stack.back(slack.grant("T0ONE"), "forged", "forged"))[0] == 401
    assert not slack.called("oauth.v2.access")

    # The real one works once; used again it is refused.
    assert (await stack.back(slack.grant("T0ONE"), state, state))[0] == 200
    assert (await stack.back(slack.grant("T0ONE"), state, state))[0] == 401
    assert len(slack.called("oauth.v2.access")) == 1


async def test_a_code_slack_refuses_installs_nothing(stack: Installed) -> None:
    slack = stack.slack
    slack.add_team("T0ONE")
    _, state = await stack.begin()
    status, _ = await stack.back("code-never-granted", state, state)
    assert status == 401
    assert slack.called("oauth.v2.access")[0].error == "invalid_code"
    assert await stack.store.async_find_bot(enterprise_id=None, team_id="T0ONE") is None


async def test_installations_outlive_the_worker(tmp_path: Any) -> None:
    async with installed_stack(tmp_path) as stack:
        team = stack.slack.add_team("T0ONE")
        await stack.install("T0ONE")
    async with installed_stack(tmp_path) as again:
        again.slack.teams[team.team_id] = team
        again.slack.tokens[team.bot_token] = team
        ts = await again.mention(team, "C0ONE", "after a restart")
        assert answered_with(again.slack, "C0ONE", ts) == {team.bot_token}


def test_oauth_needs_http_mode() -> None:
    socket = SlackSettings(_env_file=None, client_id="1.2", client_secret="s", mode="socket")
    assert socket.installable
    with pytest.raises(ConfigError, match="SLACK_MODE=http"):
        SlackAdapter(socket, None, attachments=None, log_content=False)  # type: ignore[arg-type]


def test_a_bot_token_keeps_one_workspace() -> None:
    both = SlackSettings(_env_file=None, bot_token="xoxb-1", client_id="1.2", client_secret="s")
    assert both.configured and not both.installable
    neither = SlackSettings(_env_file=None, client_id="1.2")
    assert not neither.configured
