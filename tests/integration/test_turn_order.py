"""A conversation is kept in the order the platform says its messages were sent, whichever
worker got each message first, and the migration places older turns by when they were stored."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from bots.bootstrap import build
from core.messages import Author, ConversationKey, FinalText, Inbound
from core.settings import Settings
from core.store import schema
from core.store.sql import SqlStore, make_engine
from tests.conftest import upgraded
from tests.fakes.memory import ScriptedModel

SENT = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


class Echo(ScriptedModel):
    """Answers after a pause, naming the question, so answers overlap across workers."""

    async def stream(self, request):
        await asyncio.sleep(random.uniform(0, 0.02))
        async for item in super().stream(request):
            yield item


async def test_two_workers_store_a_thread_in_platform_order(postgres_url):
    await upgraded(postgres_url)
    echo = Echo(reply=lambda r: f"answer to {r.messages[-1].text}")
    settings = Settings(_env_file=None, database_url=postgres_url)
    parleys = [await build(settings, llm=echo) for _ in range(2)]
    key = ConversationKey("test", "w", "c", "thread")
    count = 30
    rng = random.Random(7)
    arrival = list(range(count))
    rng.shuffle(arrival)

    async def deliver(i: int, delay: float) -> list:
        await asyncio.sleep(delay)
        sent = SENT + timedelta(seconds=0.1 * i)
        inbound = Inbound(key, Author("u"), f"q{i:02}", event_id=f"e{i}", sent_at=sent)
        return [e async for e in parleys[i % 2].service.answer(inbound)]

    try:
        runs = await asyncio.gather(
            *(deliver(i, 0.005 * position) for position, i in enumerate(arrival))
        )
        assert all(any(isinstance(e, FinalText) for e in events) for events in runs)
        store = parleys[0].store
        state = await store.conversation(key)
        turns = list(reversed(await store.recent_messages(state.id, 0, 0, 1000)))
        questions = [t.content for t in turns[::2]]
        assert questions == [f"q{i:02}" for i in range(count)]
        assert [t.content for t in turns[1::2]] == [f"answer to {q}" for q in questions]
        # each answer saw only what was sent before its question
        for request in echo.requests:
            asked = request.messages[-1].text
            earlier = [m.text for m in request.messages[1:-1] if m.role == "user"]
            assert all(q < asked for q in earlier), (asked, earlier)
    finally:
        for parley in parleys:
            await parley.close()


async def test_the_migration_places_existing_turns_by_when_they_were_stored(database_url):
    engine = make_engine(database_url)
    await schema.upgrade(engine, "0002")
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO conversations (id, platform, workspace, channel, thread, summary,"
                " summary_tokens, context_start) VALUES (1, 't', 'w', 'c', '', '', 0, 0)"
            )
        )
        for i, second in enumerate((2, 1)):
            stored = datetime(2026, 1, 1, 10, 0, second, tzinfo=UTC)
            await conn.execute(
                text(
                    "INSERT INTO messages (conversation_id, role, author_id, author_name,"
                    " content, token_count, status, created_at)"
                    " VALUES (1, 'user', '', '', :content, 1, 'complete', :stored)"
                ),
                {"content": f"m{i + 1}", "stored": stored},
            )
    await schema.upgrade(engine)
    store = SqlStore(engine)
    try:
        turns = await store.recent_messages(1, 0, 0, 10)
        assert [t.content for t in turns] == ["m1", "m2"]  # newest first: m1 was stored last
        later = await store.add_message(1, "user", "m3", 1)
        assert [t.id for t in await store.recent_messages(1, 0, 0, 10)][0] == later
    finally:
        await store.close()
