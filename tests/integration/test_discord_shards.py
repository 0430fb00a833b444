"""Discord sharding: workers that each run some shards of the bot (DISCORD_SHARD_COUNT,
DISCORD_SHARD_IDS) against the fake gateway, which routes every guild's events to the shard
Discord would, ``(guild_id >> 22) % count``.

Each worker has its own store and model here, so nothing but the gateway's routing keeps an
event from being answered twice: an answer's text names the worker that wrote it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

from adapters.discord import DiscordAdapter
from adapters.discord.adapter import ParleyClient, ShardedParleyClient, client_options
from adapters.discord.settings import DiscordSettings
from bots import platforms
from bots.bootstrap import build
from bots.shared import RedisSettings
from core.errors import ConfigError
from core.settings import Settings, load
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.memory import MemoryStore, ScriptedModel


async def connected(*adapters: DiscordAdapter) -> None:
    """Wait until every adapter's client is ready (all its shards), then check it says so."""
    await asyncio.wait_for(asyncio.gather(*(a.ready.wait() for a in adapters)), 30)
    assert all(a.connected for a in adapters)


def discord_settings(fake: FakeDiscord, **values: Any) -> DiscordSettings:
    return DiscordSettings(  # type: ignore[call-arg]
        _env_file=None,
        token="x",
        api_url=fake.api_url,
        gateway_url=fake.gateway_url,
        guild_ids=[int(g) for g in fake.guild_ids],
        edit_interval=0.01,
        **values,
    )


@asynccontextmanager
async def worker(
    fake: FakeDiscord, name: str, opened: AsyncExitStack, **shards: Any
) -> AsyncIterator[DiscordAdapter]:
    """One worker: its own core (a store and a model that signs with ``name``) and adapter."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    model = ScriptedModel(reply=lambda request: f"answered by {name}")
    parley = await build(settings, store=MemoryStore(), llm=model, redis=RedisSettings())
    opened.push_async_callback(parley.close)
    adapter = platforms.discord_adapter(parley, discord_settings(fake, **shards))
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.stop()


async def test_two_workers_each_answer_the_guilds_of_their_shard_once() -> None:
    async with FakeDiscord() as fake, AsyncExitStack() as opened:
        first_guild, first_channel = fake.add_guild(shard=(0, 2))
        second_guild, second_channel = fake.add_guild(shard=(1, 2))
        zero = await opened.enter_async_context(
            worker(fake, "worker 0", opened, shard_count=2, shard_ids=[0])
        )
        one = await opened.enter_async_context(
            worker(fake, "worker 1", opened, shard_count=2, shard_ids=[1])
        )
        await connected(zero, one)
        assert sorted(tuple(i["shard"]) for i in fake.identifies) == [(0, 2), (1, 2)]
        # each worker's client knows only the guilds of its shard
        assert zero.client is not None and one.client is not None
        assert int(first_guild) in {g.id for g in zero.client.guilds}
        assert int(second_guild) not in {g.id for g in zero.client.guilds}
        assert int(second_guild) in {g.id for g in one.client.guilds}

        asked = []
        for channel in (first_channel, second_channel, first_channel, second_channel):
            asked.append(await fake.send_message("hello", channel_id=channel, mention_bot=True))

        def answers(channel: str) -> list[str]:
            return fake.channel_messages(channel, author_id=fake.bot.id)

        await fake.wait_for(lambda: len(answers(first_channel)) + len(answers(second_channel)) >= 4)
        await fake.wait_for(
            lambda: all(
                "answered by" in text
                for c in (first_channel, second_channel)
                for text in answers(c)
            )
        )
        assert answers(first_channel) == ["answered by worker 0"] * 2
        assert answers(second_channel) == ["answered by worker 1"] * 2
        # every answer replies to the message it answers: each of the four once
        replied = [
            str(m["message_reference"]["message_id"])
            for c in (first_channel, second_channel)
            for m in fake.messages[c]
            if m["author"]["id"] == fake.bot.id
        ]
        assert sorted(replied) == sorted(m["id"] for m in asked)


async def test_one_worker_may_run_several_shards() -> None:
    async with FakeDiscord() as fake, AsyncExitStack() as opened:
        guilds = [fake.add_guild(shard=(i, 3)) for i in range(3)]
        both = await opened.enter_async_context(
            worker(fake, "worker", opened, shard_count=3, shard_ids=[0, 2])
        )
        assert isinstance(both.client, ShardedParleyClient)
        await connected(both)
        known = {g.id for g in both.client.guilds}
        assert {int(guilds[0][0]), int(guilds[2][0])} <= known
        assert int(guilds[1][0]) not in known
        await fake.send_message("hi", channel_id=guilds[2][1], mention_bot=True)
        await fake.wait_for(lambda: fake.channel_messages(guilds[2][1], author_id=fake.bot.id))


def test_without_shard_settings_the_client_is_unsharded() -> None:
    settings = DiscordSettings(_env_file=None, token="x")  # type: ignore[call-arg]
    assert settings.shards is None
    assert client_options(settings) == (ParleyClient, {})
    one = DiscordSettings(_env_file=None, token="x", shard_count=4, shard_ids="3")  # type: ignore[call-arg]
    assert client_options(one) == (ParleyClient, {"shard_id": 3, "shard_count": 4})
    every = DiscordSettings(_env_file=None, token="x", shard_count=2)  # type: ignore[call-arg]
    assert client_options(every) == (ShardedParleyClient, {"shard_ids": [0, 1], "shard_count": 2})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DISCORD_SHARD_IDS": "0"}, "DISCORD_SHARD_COUNT"),
        ({"DISCORD_SHARD_COUNT": "2", "DISCORD_SHARD_IDS": "2"}, "DISCORD_SHARD_IDS"),
        ({"DISCORD_SHARD_COUNT": "2", "DISCORD_SHARD_IDS": "1,1"}, "DISCORD_SHARD_IDS"),
        ({"DISCORD_SHARD_COUNT": "0"}, "DISCORD_SHARD_COUNT"),
    ],
)
def test_wrong_shard_settings_stop_start_up_naming_the_variable(
    env: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=named):
        load(DiscordSettings, _env_file=None)
