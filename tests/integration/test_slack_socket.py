"""The Slack adapter in Socket Mode: slack_bolt's real AsyncSocketModeHandler connects to the
fake Slack's websocket (found through apps.connections.open) and answers a mention."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.slack import SlackAdapter
from adapters.standin.server import StandinServer
from bots.bootstrap import build
from core.errors import ConfigError
from core.settings import Settings
from tests.fakes.slack_server import FakeSlack

CHANNEL = "C0GENERAL"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


def settings_for(slack: FakeSlack, standin: StandinServer, tmp_path: Any, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_base_url": standin.base_url,
        "openai_api_key": "test",
        "openai_max_retries": 0,
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/p.db",
        "slack_bot_token": slack.bot_token,
        "slack_app_token": slack.app_token,
        "slack_mode": "socket",
        "slack_api_url": slack.base_url,
        "slack_update_interval": 0.01,
        **extra,
    }
    return Settings(_env_file=None, **values)


async def test_mention_over_socket_mode(tmp_path: Any, slack: FakeSlack) -> None:
    async with StandinServer() as standin:
        settings = settings_for(slack, standin, tmp_path)
        parley = await build(settings)
        adapter = SlackAdapter(settings, parley.service)
        try:
            await adapter.start()
            opened = slack.called("apps.connections.open")
            assert len(opened) == 1 and opened[0].ok
            assert len(slack.sockets) == 1

            message = slack.add_message(CHANNEL, f"<@{slack.bot_user_id}> over the socket")
            event = {
                "type": "app_mention",
                "user": "UALICE",
                "text": message.text,
                "ts": message.ts,
                "channel": CHANNEL,
                "team": slack.team_id,
                "event_ts": message.ts,
            }
            envelope = await slack.push(slack.event_body(event))
            ack = await slack.wait_ack(envelope)
            assert ack["envelope_id"] == envelope
            await adapter.drain()

            replies = slack.bot_messages(CHANNEL, message.ts)
            assert len(replies) == 1
            assert "You said: over the socket" in replies[0].text
            assert not replies[0].streaming
        finally:
            await adapter.stop()
            await parley.close()
        await slack.wait_for(lambda: not slack.sockets)


async def test_socket_mode_needs_an_app_token(tmp_path: Any, slack: FakeSlack) -> None:
    async with StandinServer() as standin:
        settings = settings_for(slack, standin, tmp_path, slack_app_token=None)
        with pytest.raises(ConfigError, match="SLACK_APP_TOKEN"):
            SlackAdapter(settings, service=None)  # type: ignore[arg-type]


async def test_a_rejected_bot_token_stops_start_up(tmp_path: Any, slack: FakeSlack) -> None:
    async with StandinServer() as standin:
        settings = settings_for(slack, standin, tmp_path, slack_bot_token="xoxb-wrong")
        adapter = SlackAdapter(settings, service=None)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="invalid_auth"):
            await adapter.start()
        assert slack.sockets == []


async def test_a_rejected_app_token_stops_start_up(tmp_path: Any, slack: FakeSlack) -> None:
    async with StandinServer() as standin:
        settings = settings_for(slack, standin, tmp_path, slack_app_token="xapp-wrong")
        adapter = SlackAdapter(settings, service=None)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="SLACK_APP_TOKEN"):
            await adapter.start()
        await adapter.stop()
        assert slack.sockets == []


async def test_stop_closes_the_socket_then_lets_the_answer_finish(
    tmp_path: Any, slack: FakeSlack
) -> None:
    async with StandinServer(latency=0.05) as standin:
        settings = settings_for(slack, standin, tmp_path)
        parley = await build(settings)
        adapter = SlackAdapter(settings, parley.service)
        try:
            await adapter.start()
            message = slack.add_message(CHANNEL, f"<@{slack.bot_user_id}> " + "word " * 20)
            event = {
                "type": "app_mention",
                "user": "UALICE",
                "text": message.text,
                "ts": message.ts,
                "channel": CHANNEL,
                "team": slack.team_id,
                "event_ts": message.ts,
            }
            await slack.wait_ack(await slack.push(slack.event_body(event)))
            await slack.wait_for(lambda: slack.called("chat.startStream"))
            await adapter.stop()
            await slack.wait_for(lambda: not slack.sockets)
            replies = slack.bot_messages(CHANNEL, message.ts)
            assert len(replies) == 1 and not replies[0].streaming
            assert replies[0].text.rstrip().endswith("word")
            assert "restarted" not in replies[0].text
        finally:
            await adapter.stop()
            await parley.close()
