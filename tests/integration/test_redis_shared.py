"""Several workers, one deployment: write budgets and the per-user message limit shared
through the Redis server on 127.0.0.1:6379 (each test uses keys of its own)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from redis.asyncio import Redis

from adapters.budget_redis import RedisBudget, RedisMessageRate
from bots.bootstrap import build
from bots.shared import RedisSettings
from core import budget
from core.budget import Rate, admit
from core.messages import Accepted, Author, ConversationKey, Inbound, ReplyEvent, UserError
from core.service import ConversationService
from core.settings import Settings
from tests.fakes.memory import MemoryStore, ScriptedModel

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> str:
    return f"parley-test:{uuid.uuid4().hex}:"


@pytest.fixture
async def workers() -> AsyncIterator[tuple[Redis, Redis]]:
    """Two connections, as two worker processes would have."""
    first, second = Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)
    try:
        await first.ping()
    except OSError:
        if os.environ.get("CI"):
            pytest.fail("Redis at 127.0.0.1:6379 is not reachable (required in CI)")
        pytest.skip("no Redis server on 127.0.0.1:6379")
    yield first, second
    await first.aclose()
    await second.aclose()


async def test_two_workers_share_one_write_budget(workers: tuple[Redis, Redis], prefix: str):
    one, two = RedisBudget(workers[0], prefix), RedisBudget(workers[1], prefix)
    rate = Rate(per_second=0.01, burst=4, reserve=1)  # refills far slower than the test runs
    taken = [await worker.take("slack:T1:chat.update", rate, 0.0) == 0 for worker in (one, two) * 3]
    assert taken == [True, True, True, True, False, False]
    # Another place has a bucket of its own.
    assert await two.take("slack:T1:chat.startStream", rate, 0.0) == 0


async def test_progress_writes_of_one_worker_leave_the_reserve_to_the_others_final_writes(
    workers: tuple[Redis, Redis], prefix: str
):
    one, two = RedisBudget(workers[0], prefix), RedisBudget(workers[1], prefix)
    rate = Rate(per_second=0.01, burst=3, reserve=1)
    progress = [await admit(one, "discord:c1", rate, final=False) for _ in range(3)]
    assert progress == [True, True, False]
    assert await admit(two, "discord:c1", rate, final=True)


async def test_the_message_limit_counts_a_user_across_workers(
    workers: tuple[Redis, Redis], prefix: str
):
    one = RedisMessageRate(workers[0], 3, prefix=prefix)
    two = RedisMessageRate(workers[1], 3, prefix=prefix)
    waits = [await rate.check("slack", "U1") for rate in (one, two, one, two)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0 < waits[3] <= 60
    assert await one.check("slack", "U2") == 0.0
    assert await two.check("discord", "U1") == 0.0


def inbound(text: str, event: str) -> Inbound:
    key = ConversationKey("slack", "T1", "C1")
    return Inbound(key, Author("U1", "Ada"), text, event_id=event)


async def events(service: ConversationService, text: str) -> list[ReplyEvent]:
    return [event async for event in service.answer(inbound(text, uuid.uuid4().hex))]


async def test_two_services_share_the_per_user_limit(workers: tuple[Redis, Redis], prefix: str):
    """Two workers (two services, one store as one database) built with REDIS_URL: the second
    message of a user limited to 1 a minute is refused by the other worker."""
    store = MemoryStore()
    settings = Settings(_env_file=None, parley_user_messages_per_minute=1)
    redis = RedisSettings(_env_file=None, url=REDIS_URL, key_prefix=prefix)
    async with AsyncExitStack() as stack:
        first = await build(settings, store=store, llm=ScriptedModel(), redis=redis)
        stack.push_async_callback(first.close)
        assert isinstance(budget.shared(), RedisBudget)
        second = await build(settings, store=store, llm=ScriptedModel(), redis=redis)
        stack.push_async_callback(second.close)

        answered = await events(first.service, "hello")
        assert isinstance(answered[0], Accepted)
        refused = await events(second.service, "again")
        assert len(refused) == 1 and isinstance(refused[0], UserError)
        assert refused[0].code == "user_rate_limited"
    assert isinstance(budget.shared(), budget.LocalBudget)  # closing restored the budget


async def test_without_redis_each_worker_counts_on_its_own():
    settings = Settings(_env_file=None, parley_user_messages_per_minute=1)
    store = MemoryStore()
    first = await build(
        settings, store=store, llm=ScriptedModel(), redis=RedisSettings(_env_file=None)
    )
    second = await build(
        settings, store=store, llm=ScriptedModel(), redis=RedisSettings(_env_file=None)
    )
    try:
        assert isinstance((await events(first.service, "hello"))[0], Accepted)
        assert isinstance((await events(second.service, "hello"))[0], Accepted)
    finally:
        await first.close()
        await second.close()
