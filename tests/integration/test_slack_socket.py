"""The Slack adapter in Socket Mode: slack_bolt's real AsyncSocketModeHandler connects to the
fake Slack's websocket (found through apps.connections.open) and answers a mention."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.slack import SlackAdapter
from adapters.slack.settings import SlackSettings
from adapters.standin.server import StandinServer
from bots.bootstrap import build
from bots.platforms import slack_adapter
from core.attachments import AttachmentPolicy
from core.errors import ConfigError
from core.settings import Settings
from tests.fakes.slack_server import FakeSlack

CHANNEL = "C0GENERAL"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


POLICY = AttachmentPolicy(1000, 1000)


def settings_for(
    slack: FakeSlack, standin: StandinServer, tmp_path: Any, **extra: Any
) -> tuple[Settings, SlackSettings]:
    """The core's settings, and Slack's (``extra`` overrides Slack settings)."""
    core = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_base_url=standin.base_url,
        openai_api_key="test",  # type: ignore[arg-type]
        openai_max_retries=0,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/p.db",
    )
    values: dict[str, Any] = {
        "bot_token": slack.bot_token,
        "app_token": slack.app_token,
        "mode": "socket",
        "api_url": slack.base_url,
        "update_interval": 0.01,
        **extra,
    }
    return core, SlackSettings(_env_file=None, **values)


async def test_mention_over_socket_mode(tmp_path: Any, slack: FakeSlack) -> None:
    async with StandinServer() as standin:
        core, settings = settings_for(slack, standin, tmp_path)
        parley = await build(core)
        adapter = slack_adapter(parley, settings)
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
        _, settings = settings_for(slack, standin, tmp_path, app_token=None)
        with pytest.raises(ConfigError, match="SLACK_APP_TOKEN"):
            SlackAdapter(
                settings,
                service=None,
                attachments=POLICY,
                log_content=False,  # type: ignore[arg-type]
            )


async def test_a_rejected_bot_token_stops_start_up(tmp_path: Any, slack: FakeSlack) -> None:
    async with StandinServer() as standin:
        _, settings = settings_for(slack, standin, tmp_path, bot_token="xoxb-wrong")
        adapter = SlackAdapter(
            settings,
            service=None,
            attachments=POLICY,
            log_content=False,  # type: ignore[arg-type]
        )
        with pytest.raises(ConfigError, match="invalid_auth"):
            await adapter.start()
        assert slack.sockets == []


async def test_a_rejected_app_token_stops_start_up(tmp_path: Any, slack: FakeSlack) -> None:
    async with StandinServer() as standin:
        _, settings = settings_for(slack, standin, tmp_path, app_token="xapp-wrong")
        adapter = SlackAdapter(
            settings,
            service=None,
            attachments=POLICY,
            log_content=False,  # type: ignore[arg-type]
        )
        with pytest.raises(ConfigError, match="SLACK_APP_TOKEN"):
            await adapter.start()
        await adapter.stop()
        assert slack.sockets == []


async def test_stop_closes_the_socket_then_lets_the_answer_finish(
    tmp_path: Any, slack: FakeSlack
) -> None:
    async with StandinServer(latency=0.05) as standin:
        core, settings = settings_for(slack, standin, tmp_path)
        parley = await build(core)
        adapter = slack_adapter(parley, settings)
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
