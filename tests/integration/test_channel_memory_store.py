"""A channel's memory in the SQL store, on SQLite and on the PostgreSQL server."""

from __future__ import annotations

import pytest

from core.messages import ChannelKey
from core.store import schema
from core.store.sql import SqlStore, make_engine

CHANNEL = ChannelKey("slack", "T1", "C1")
ELSEWHERE = ChannelKey("slack", "T1", "C2")


@pytest.fixture
async def store(database_url):
    store = SqlStore(make_engine(database_url))
    await schema.upgrade(store.engine)
    yield store
    await store.close()


async def test_facts_are_kept_per_channel_in_the_order_they_were_added(store):
    assert await store.channel_memory(CHANNEL) == []
    first = await store.add_memory(CHANNEL, "we release on Thursdays", author_id="UALICE")
    second = await store.add_memory(CHANNEL, "staging is staging.example\x00")
    await store.add_memory(ELSEWHERE, "another channel's fact")
    facts = await store.channel_memory(CHANNEL)
    assert [(f.id, f.text) for f in facts] == [
        (first, "we release on Thursdays"),
        (second, "staging is staging.example"),
    ]
    assert [f.text for f in await store.channel_memory(ELSEWHERE)] == ["another channel's fact"]


async def test_a_fact_is_forgotten_once_and_only_in_its_channel(store):
    fact = await store.add_memory(CHANNEL, "one fact")
    assert not await store.remove_memory(ELSEWHERE, fact)
    assert await store.remove_memory(CHANNEL, fact)
    assert not await store.remove_memory(CHANNEL, fact)
    assert await store.channel_memory(CHANNEL) == []


async def test_the_memory_table_goes_away_on_downgrade(store):
    from alembic import command

    def down(connection) -> None:
        config = schema.alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")

    async with store.engine.begin() as conn:
        await conn.run_sync(down)
    assert await schema.current_revision(store.engine) == "0004"
    await schema.upgrade(store.engine)
    assert await store.channel_memory(CHANNEL) == []


async def test_a_turn_reads_its_channels_memory_and_settings_with_its_conversation(store):
    from core.messages import ConversationKey
    from core.ports import ChannelOverrides

    key = ConversationKey("slack", "T1", "C1", "1700000000.000100")
    assert (await store.open_turn(key)).memory == ()
    for text in ("first fact", "second fact", 'a "quoted" fact, with [brackets]'):
        await store.add_memory(CHANNEL, text)
    await store.add_memory(ELSEWHERE, "another channel's fact")
    await store.save_channel_overrides(CHANNEL, ChannelOverrides("Be brief.", json_mode=True))
    facts = await store.open_turn(key)
    assert facts.memory == ("first fact", "second fact", 'a "quoted" fact, with [brackets]')
    assert facts.overrides == ChannelOverrides("Be brief.", json_mode=True)
    assert facts.state == await store.conversation(key)
    elsewhere = await store.open_turn(ConversationKey("slack", "T1", "C2", ""))
    assert elsewhere.memory == ("another channel's fact",)
    assert elsewhere.overrides == ChannelOverrides()
