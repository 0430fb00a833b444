"""Several workers on one PostgreSQL database: a conversation's turns stay in order."""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy import text

from core.messages import Author, ConversationKey, FinalText, Inbound
from core.service import ConversationService
from core.settings import Settings
from core.store import schema
from core.store.sql import SqlStore, lock_key, make_engine
from core.streaming import paced
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


async def migrated_store(url: str) -> SqlStore:
    store = SqlStore(make_engine(url))
    await schema.upgrade(store.engine)
    return store


async def test_two_workers_answer_one_conversation_in_turn(postgres_url):
    settings = Settings(_env_file=None, database_url=postgres_url)
    stores = [await migrated_store(postgres_url) for _ in range(2)]
    workers = [
        ConversationService(
            store,
            SlowEcho(reply=lambda r: f"answer to {r.messages[-1].text}"),
            settings,
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
    finally:
        for store in stores:
            await store.close()


async def _lock_is_free(store: SqlStore, name: str) -> bool:
    """Whether another worker could take the conversation right now (without waiting)."""
    async with store.engine.begin() as conn:
        query = text("SELECT pg_try_advisory_xact_lock(:key)")
        return bool((await conn.execute(query, {"key": lock_key(name)})).scalar())


async def test_a_cancelled_answer_frees_its_conversation_at_once(postgres_url):
    """An adapter reads answers through paced(); cancelling it must free the conversation."""
    store = await migrated_store(postgres_url)
    other_worker = await migrated_store(postgres_url)
    settings = Settings(_env_file=None, database_url=postgres_url)
    started = asyncio.Event()

    class Hanging(ScriptedModel):
        async def stream(self, request):
            started.set()
            await asyncio.sleep(60)
            yield "never"

    worker = ConversationService(store, Hanging(), settings)
    key = ConversationKey("test", "w", "cancelled")

    async def handler() -> None:
        async for _ in paced(worker.answer(Inbound(key, Author("u"), "hello")), 0.01):
            pass

    task = asyncio.create_task(handler())
    try:
        await asyncio.wait_for(started.wait(), 10)
        assert not await _lock_is_free(other_worker, str(key))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # checked right after the handler ended, before anything else runs
        assert await _lock_is_free(other_worker, str(key))
        assert len(worker.locks) == 0
    finally:
        await store.close()
        await other_worker.close()
