"""One deployment, three workers: one PostgreSQL database, one Redis, one Slack workspace whose
fake enforces Slack's write limits. Every event is delivered to two different workers (as a
load balancer retrying, or Socket Mode redelivering, would): each question is answered exactly
once, within the shared write budget, and each conversation is kept in the order asked."""

from __future__ import annotations

import asyncio
import random
import uuid
from contextlib import AsyncExitStack

import pytest
from redis.asyncio import Redis

from adapters.slack.render import THINKING
from adapters.slack.settings import SlackSettings
from bots.bootstrap import build
from bots.platforms import slack_adapter
from bots.shared import RedisSettings
from core.messages import ConversationKey
from core.settings import Settings
from tests.conftest import upgraded
from tests.fakes.memory import ScriptedModel
from tests.fakes.slack_tiers import TieredSlack

REDIS_URL = "redis://127.0.0.1:6379/0"
THREADS, ASKED = 50, 10  # 500 questions


class Echo(ScriptedModel):
    """Answers "answer to <question>" in two pieces, after a short pause."""

    def __init__(self) -> None:
        super().__init__(reply=lambda r: f"answer to {r.messages[-1].text.split(': ')[-1]}")

    async def stream(self, request):
        await asyncio.sleep(random.uniform(0.01, 0.05))
        async for item in super().stream(request):
            yield item


@pytest.fixture
async def redis_prefix():
    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except OSError:
        pytest.fail("Redis at 127.0.0.1:6379 is needed for several workers")
    finally:
        await client.aclose()
    return f"parley-test:{uuid.uuid4().hex}:"


def _question(slack: TieredSlack, thread: int, n: int, parent: str) -> dict:
    channel = f"C{thread:04d}"
    text = f"<@{slack.bot_user_id}> q{thread}-{n}"
    message = slack.add_message(channel, text, user="UALICE", thread_ts=parent)
    event = {
        "type": "app_mention",
        "user": "UALICE",
        "text": text,
        "ts": message.ts,
        "thread_ts": parent,
        "channel": channel,
        "team": slack.team_id,
        "event_ts": message.ts,
    }
    return slack.event_body(event)


async def test_three_workers_answer_each_event_once_in_order_within_slacks_limits(
    postgres_url, redis_prefix
):
    await _three_workers(postgres_url, redis_prefix, threads=THREADS, asked=ASKED, spread=5.0)


async def test_threads_started_at_the_same_moment_show_their_answers_in_the_order_asked(
    postgres_url, redis_prefix
):
    """Every thread's questions are asked at once with the others': the claims of the first
    ones are slow (the database is busy), yet no second answer shows above a first."""
    await _three_workers(postgres_url, redis_prefix, threads=THREADS, asked=3, spread=0.0)


async def _three_workers(
    postgres_url: str, redis_prefix: str, *, threads: int, asked: int, spread: float
) -> None:
    await upgraded(postgres_url)
    slack = await TieredSlack().start()
    rng = random.Random(11)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(slack.stop)
        urls, parleys = [], []
        for _ in range(3):
            parley = await build(
                Settings(_env_file=None, database_url=postgres_url),
                llm=Echo(),
                redis=RedisSettings(_env_file=None, url=REDIS_URL, key_prefix=redis_prefix),
            )
            stack.push_async_callback(parley.close)
            parleys.append(parley)
            section = SlackSettings(
                _env_file=None,
                bot_token=slack.bot_token,
                signing_secret=slack.signing_secret,
                mode="http",
                api_url=slack.base_url,
            )
            adapter = slack_adapter(parley, section, host="127.0.0.1", port=0)
            await adapter.start()
            stack.push_async_callback(adapter.stop)
            urls.append(f"http://127.0.0.1:{adapter.port}/slack/events")
        parents = [
            slack.add_message(f"C{t:04d}", "a topic", user="UALICE").ts for t in range(threads)
        ]

        async def ask_in(thread: int) -> None:
            await asyncio.sleep(rng.uniform(0, spread))  # conversations start over a while
            for n in range(asked):
                body = _question(slack, thread, n, parents[thread])
                first, second = rng.sample(urls, 2)
                statuses = await asyncio.gather(
                    slack.post_event(first, body), slack.post_event(second, body, retry_num=1)
                )
                assert statuses == [200, 200]
                await asyncio.sleep(rng.uniform(0.1, 0.3))  # people type; a handler may lag

        await asyncio.gather(*(ask_in(t) for t in range(threads)))

        def answers(thread: int) -> list[str]:
            channel = f"C{thread:04d}"
            return [m.text for m in slack.thread(channel, parents[thread]) if m.bot_id]

        def all_answered() -> bool:
            return all(len(answers(t)) >= asked for t in range(threads))

        await slack.wait_for(all_answered, guard=240)
        await asyncio.sleep(0.5)  # a duplicate answer would show up by now
        store = parleys[0].store
        for thread in range(threads):
            expected = [f"answer to q{thread}-{n}" for n in range(asked)]
            # each question answered exactly once (shown in Slack), shown in the order asked...
            assert answers(thread) == expected, answers(thread)
            # ...and the conversation kept in the order asked, each answer after its question
            key = ConversationKey("slack", slack.team_id, f"C{thread:04d}", parents[thread])
            state = await store.conversation(key)
            turns = list(reversed(await store.recent_messages(state.id, 0, 10**12, 100)))
            assert [t.content for t in turns[1::2]] == expected
            assert [t.content.split()[-1] for t in turns[::2]] == [
                f"q{thread}-{n}" for n in range(asked)
            ]
        assert [c.method for c in slack.calls if c.status == 429] == []
        bot = [m for messages in slack.messages.values() for m in messages if m.bot_id]
        assert not any(m.streaming or m.text == THINKING for m in bot)
