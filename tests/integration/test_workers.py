"""Several workers on one PostgreSQL database: a conversation's turns stay in order."""

from __future__ import annotations

import asyncio
import contextlib

from bots.bootstrap import Parley, build
from core.delivery import Interval, deliver
from core.messages import Author, ConversationKey, FinalText, Inbound
from core.settings import Settings
from core.store.sql import SqlStore
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


async def worker(url: str, llm: ScriptedModel) -> Parley:
    """One worker process's core on the database at ``url``."""
    return await build(Settings(_env_file=None, database_url=url), llm=llm)


def sql_store(parley: Parley) -> SqlStore:
    assert isinstance(parley.store, SqlStore)
    return parley.store


async def test_two_workers_answer_one_conversation_in_turn(upgraded_postgres_url):
    echo = SlowEcho(reply=lambda r: f"answer to {r.messages[-1].text}")
    parleys = [await worker(upgraded_postgres_url, echo) for _ in range(2)]
    workers = [parley.service for parley in parleys]
    stores = [parley.store for parley in parleys]
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
        for parley in parleys:
            await parley.close()


async def _lock_is_free(store: SqlStore, name: str) -> bool:
    """Whether another worker could take the conversation right now (without waiting)."""
    if not await store.leases.try_take(name):
        return False
    await store.leases.give_back(name)
    return True


async def test_a_cancelled_answer_frees_its_conversation_at_once(upgraded_postgres_url):
    """An adapter delivers answers through deliver(); cancelling it must free the conversation."""
    started = asyncio.Event()

    class Hanging(ScriptedModel):
        async def stream(self, request):
            started.set()
            await asyncio.sleep(60)
            yield "never"

    parley = await worker(upgraded_postgres_url, Hanging())
    other_worker = await worker(upgraded_postgres_url, ScriptedModel())
    service = parley.service
    key = ConversationKey("test", "w", "cancelled")

    class Silent:
        async def start(self) -> None: ...
        async def progress(self, text: str) -> None: ...
        async def finish(self, text: str) -> None: ...
        async def fail(self, text: str) -> None: ...

    async def handler() -> None:
        await deliver(service.answer(Inbound(key, Author("u"), "hello")), Silent(), Interval(0.01))

    task = asyncio.create_task(handler())
    try:
        await asyncio.wait_for(started.wait(), 10)
        assert not await _lock_is_free(sql_store(other_worker), str(key))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # checked right after the handler ended, before anything else runs
        assert await _lock_is_free(sql_store(other_worker), str(key))
        assert len(service.locks) == 0
    finally:
        await parley.close()
        await other_worker.close()


async def test_a_turn_waiting_for_its_conversation_holds_no_answer_slot(upgraded_postgres_url):
    """A worker that knows a conversation's facts takes its lease with the turn's first
    statement; waiting for it meanwhile must not keep another conversation from a slot."""
    slow_started, go_on = asyncio.Event(), asyncio.Event()

    class Gated(ScriptedModel):
        async def stream(self, request):
            if request.messages[-1].text == "slow":
                slow_started.set()
                await go_on.wait()
            async for item in super().stream(request):
                yield item

    model = Gated()
    first, second = (
        await worker(upgraded_postgres_url, model),
        await worker(upgraded_postgres_url, model),
    )
    busy, other = ConversationKey("test", "w", "busy"), ConversationKey("test", "w", "other")
    slots = {id(first): asyncio.Semaphore(1), id(second): asyncio.Semaphore(1)}

    async def ask(parley: Parley, key: ConversationKey, text: str) -> list:
        answer = parley.service.answer(Inbound(key, Author("u"), text), slot=slots[id(parley)])
        return [e async for e in answer]

    try:
        await ask(first, busy, "warm-up")  # the first worker knows its facts from now on
        slow = asyncio.create_task(ask(second, busy, "slow"))  # holds the lease meanwhile
        await asyncio.wait_for(slow_started.wait(), 10)
        waiting = asyncio.create_task(ask(first, busy, "after the slow one"))
        # let it reach its wait for the lease (if it has not yet, this proves less, never
        # fails wrongly)
        await asyncio.sleep(0.2)
        assert not waiting.done()
        answered = await asyncio.wait_for(ask(first, other, "meanwhile"), 30)
        assert any(isinstance(e, FinalText) for e in answered)
        go_on.set()
        for events in (await slow, await waiting):
            assert any(isinstance(e, FinalText) for e in events), events
    finally:
        go_on.set()
        await first.close()
        await second.close()
