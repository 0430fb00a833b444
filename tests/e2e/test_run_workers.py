"""`parley run` as an operator runs it: the worker process answering Slack through our fakes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from tests.fakes.slack_server import FakeSlack

_SCRIPT = Path(sys.executable).with_name("parley")
PARLEY = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "bots.cli"]
CHANNEL = "C0GENERAL"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mention(fake: FakeSlack, text: str) -> dict:
    message = fake.add_message(CHANNEL, f"<@{fake.bot_user_id}> {text}", user="UALICE")
    return {
        "type": "app_mention",
        "user": "UALICE",
        "text": message.text,
        "ts": message.ts,
        "channel": CHANNEL,
        "team": fake.team_id,
        "event_ts": message.ts,
    }


async def start_worker(tmp_path: Path, fake: FakeSlack, **env: str) -> asyncio.subprocess.Process:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DISCORD_"))}
    full.update(
        SLACK_BOT_TOKEN=fake.bot_token,
        SLACK_API_URL=fake.base_url,
        PARLEY_ALLOW_OFFLINE="true",
        **env,
    )
    return await asyncio.create_subprocess_exec(
        *PARLEY,
        "run",
        cwd=tmp_path,
        env=full,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def stop_worker(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return out.decode()


async def answered(fake: FakeSlack, event: dict) -> str:
    """The bot's final text in the thread under ``event``."""
    replies = await fake.wait_for(
        lambda: [
            m
            for m in fake.bot_messages(CHANNEL, event["ts"])
            if "offline stand-in" in m.text and not m.streaming
        ],
        guard=30,
    )
    return replies[-1].text


@pytest.mark.asyncio
async def test_http_mode_answers_a_signed_mention_once(tmp_path):
    port = free_port()
    async with FakeSlack() as fake:
        proc = await start_worker(
            tmp_path,
            fake,
            SLACK_MODE="http",
            SLACK_PORT=str(port),
            SLACK_SIGNING_SECRET=fake.signing_secret,
        )
        try:
            url = f"http://127.0.0.1:{port}/slack/events"
            for _ in range(600):  # a worker starting on a busy machine may take a while
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            event = mention(fake, "what does parley run do?")
            body = fake.event_body(event)
            assert await fake.post_event(url, body) == 200
            text = await answered(fake, event)
            assert "what does parley run do?" in text
            assert await fake.post_event(url, body, retry_num=1) == 200
            assert await fake.post_event(url, body, secret="forged") == 401
            await asyncio.sleep(0.5)
            finals = [m for m in fake.bot_messages(CHANNEL, event["ts"]) if m.text == text]
            assert len(finals) == 1, "a redelivery is not answered again"
        finally:
            out = await stop_worker(proc)
        assert proc.returncode == 0, out
        assert "Traceback" not in out
        assert fake.bot_token not in out and fake.signing_secret not in out


@pytest.mark.asyncio
async def test_socket_mode_answers_a_mention(tmp_path):
    async with FakeSlack() as fake:
        proc = await start_worker(tmp_path, fake, SLACK_APP_TOKEN=fake.app_token)
        try:
            event = mention(fake, "hello over a socket")
            envelope = await fake.push(fake.event_body(event))
            await fake.wait_ack(envelope)
            assert "hello over a socket" in await answered(fake, event)
        finally:
            out = await stop_worker(proc)
        assert proc.returncode == 0, out
        assert fake.app_token not in out


@pytest.mark.asyncio
async def test_discord_ask_through_the_worker(tmp_path):
    from tests.fakes.discord_server import FakeDiscord

    async with FakeDiscord() as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SLACK_"))}
        env.update(
            DISCORD_TOKEN="bot-token",
            DISCORD_API_URL=fake.api_url,
            DISCORD_GATEWAY_URL=fake.gateway_url,
            DISCORD_GUILD_IDS=str(fake.guild_id),
            PARLEY_ALLOW_OFFLINE="true",
        )
        proc = await asyncio.create_subprocess_exec(
            *PARLEY,
            "run",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await fake.wait_for(lambda: fake.commands)  # commands synced after login
            await asyncio.wait_for(fake.connected.wait(), 30)
            interaction = await fake.send_command("ask", {"prompt": "hello from discord"})
            shown = await fake.wait_for(
                lambda: [
                    m
                    for m in fake.interaction_messages(interaction["token"])
                    if "offline stand-in" in m and "hello from discord" in m
                ]
            )
            assert shown[-1].startswith("(offline stand-in model)")
        finally:
            out = await stop_worker(proc)
        assert proc.returncode == 0, out
        assert "bot-token" not in out and "Traceback" not in out
