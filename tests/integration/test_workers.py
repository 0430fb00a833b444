"""Several workers on one database: a conversation's turns stay in order across them."""

from __future__ import annotations

import asyncio
import contextlib

from core.messages import Author, ConversationKey, FinalText, Inbound
from core.service import ConversationService
from core.settings import Settings
from core.store import schema
from core.store.sql import SqlStore, make_engine
from tests.fakes.memory import ScriptedModel


class SlowEcho(ScriptedModel):
    """Echoes the last message after a pause, recording how many answers overlap."""

    active = 0
    peak = 0

    async def stream(self, request):
        SlowEcho.active += 1
        SlowEcho.peak = max(SlowEcho.peak, SlowEcho.active)
        await asyncio.sleep(0.02)
        SlowEcho.active -= 1
        async for item in super().stream(request):
            yield item


async def test_two_workers_answer_one_conversation_in_turn(database_url):
    engine = make_engine(database_url)
    await schema.upgrade(engine)
    await engine.dispose()
    settings = Settings(_env_file=None, database_url=database_url)
    stores = [SqlStore(make_engine(database_url)) for _ in range(2)]
    workers = [
        ConversationService(
            store,
            SlowEcho(reply=lambda r: f"answer to {r.messages[-1]['content']}"),
            settings,
            shared_database=True,
        )
        for store in stores
    ]
    key = ConversationKey("test", "w", "shared")

    async def ask(i: int) -> list:
        inbound = Inbound(key, Author("u"), f"question {i}")
        return [e async for e in workers[i % 2].answer(inbound)]

    SlowEcho.active = SlowEcho.peak = 0
    try:
        runs = await asyncio.gather(*(ask(i) for i in range(12)))
        assert all(any(isinstance(e, FinalText) for e in events) for events in runs)
        assert SlowEcho.peak == 1
        state = await stores[0].conversation(key)
        turns = list(reversed(await stores[0].recent_messages(state.id, 0, 10**12, 100)))
        assert [t.role for t in turns] == ["user", "assistant"] * 12
        for question, answer in zip(turns[::2], turns[1::2], strict=True):
            assert answer.content == f"answer to {question.content}"
        # leases are released: a third worker gets the conversation at once
        assert await stores[1].take_lease(str(key), "other", 0.0, 1.0)
    finally:
        for store in stores:
            await store.close()


async def test_an_expired_lease_is_taken_over(database_url):
    store = SqlStore(make_engine(database_url))
    await schema.upgrade(store.engine)
    try:
        assert await store.take_lease("k", "crashed-worker", now=100.0, until=160.0)
        assert not await store.take_lease("k", "me", now=150.0, until=210.0)
        assert await store.take_lease("k", "me", now=161.0, until=221.0)
        await store.release_lease("k", "crashed-worker")  # not the owner: no effect
        assert not await store.take_lease("k", "third", now=170.0, until=230.0)
        await store.release_lease("k", "me")
        assert await store.take_lease("k", "third", now=170.0, until=230.0)
    finally:
        await store.close()


async def test_a_cancelled_answer_releases_its_lease(database_url):
    store = SqlStore(make_engine(database_url))
    await schema.upgrade(store.engine)
    settings = Settings(_env_file=None, database_url=database_url)
    started = asyncio.Event()

    class Hanging(ScriptedModel):
        async def stream(self, request):
            started.set()
            await asyncio.sleep(60)
            yield "never"

    worker = ConversationService(store, Hanging(), settings, shared_database=True)
    key = ConversationKey("test", "w", "cancelled")

    async def consume() -> None:
        async for _ in worker.answer(Inbound(key, Author("u"), "hello")):
            pass

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(started.wait(), 10)
        assert not await store.take_lease(str(key), "other", 0.0, 1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert await store.take_lease(str(key), "other", 0.0, 1.0)
        assert len(worker.locks) == 0
    finally:
        await store.close()
