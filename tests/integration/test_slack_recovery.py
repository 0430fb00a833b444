"""Slack answers that outlive their worker: two Slack adapters in HTTP mode (real slack_bolt
and slack_sdk) on one PostgreSQL database and one fake Slack. A worker "dies" as after
`kill -9`: what it wrote stays, its leases stop being renewed and run out; the other worker's
sweeper finishes what it left, and Slack shows one answer per question."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import text, update

from adapters.slack import SlackAdapter, translate
from adapters.slack.arrivals import Arrival, claim_on_arrival
from adapters.slack.render import ANSWER_METADATA, REPLY_METADATA
from adapters.slack.settings import SlackSettings
from adapters.standin.server import StandinServer
from bots.bootstrap import Parley, build
from bots.ops import answer_sweeper
from bots.platforms import slack_adapter
from core import recovery
from core.settings import Settings
from core.store import schema
from core.store.models import LeaseRow
from core.store.sql import SqlStore, make_engine
from tests.fakes.slack_server import FakeSlack, Message

pytestmark = [pytest.mark.postgres]

CHANNEL = "C0GENERAL"
ALICE = "UALICE"


@dataclass
class Worker:
    parley: Parley
    adapter: SlackAdapter

    @property
    def store(self) -> SqlStore:
        assert isinstance(self.parley.store, SqlStore)
        return self.parley.store

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.adapter.port}/slack/events"

    async def die(self) -> None:
        """What `kill -9` leaves: the worker's leases are no longer renewed and run out."""
        await self.store.leases.close_heartbeat()
        async with self.store.engine.begin() as conn:
            holder = LeaseRow.holder == self.store.leases.holder
            await conn.execute(update(LeaseRow).where(holder).values(until=0))

    async def sweep(self) -> int:
        """One sweep of this worker's sweeper, waiting for what it resumes."""
        sweeper = answer_sweeper(self.parley, [self.adapter])
        taken = await sweeper.sweep()
        for task in list(sweeper._running):
            await task
        return taken


@contextlib.asynccontextmanager
async def worker(url: str, slack: FakeSlack, standin: StandinServer) -> AsyncIterator[Worker]:
    store = SqlStore(make_engine(url), lease_seconds=30)
    await schema.upgrade(store.engine)
    settings = Settings(
        _env_file=None,
        database_url=url,
        openai_base_url=standin.base_url,
        openai_api_key="test",
        openai_max_retries=0,
    )
    parley = await build(settings, store=store)
    section = SlackSettings(
        _env_file=None,
        bot_token=slack.bot_token,
        signing_secret=slack.signing_secret,
        mode="http",
        api_url=slack.base_url,
        update_interval=0.01,
    )
    adapter = slack_adapter(parley, section, host="127.0.0.1", port=0)
    await adapter.start()
    try:
        yield Worker(parley, adapter)
    finally:
        await adapter.stop()
        await parley.close()
        await store.close()


@pytest.fixture
async def pair(postgres_url: str) -> AsyncIterator[tuple[FakeSlack, Worker, Worker]]:
    async with FakeSlack() as slack, StandinServer() as standin:
        async with worker(postgres_url, slack, standin) as first:
            async with worker(postgres_url, slack, standin) as second:
                yield slack, first, second


def mention(slack: FakeSlack, text_: str) -> dict[str, Any]:
    """An app_mention body for a new message (also in the fake workspace)."""
    message = slack.add_message(CHANNEL, f"<@{slack.bot_user_id}> {text_}", user=ALICE)
    event = {
        "type": "app_mention",
        "user": ALICE,
        "text": message.text,
        "ts": message.ts,
        "channel": CHANNEL,
        "team": slack.team_id,
        "event_ts": message.ts,
    }
    return slack.event_body(event)


def answers(slack: FakeSlack, thread_ts: str) -> list[Message]:
    return [m for m in slack.thread(CHANNEL, thread_ts) if m.bot_id == slack.bot_id]


async def states(store: SqlStore) -> list[str]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(text("SELECT state FROM processed_events ORDER BY id"))
        return [row[0] for row in rows]


async def test_a_message_claimed_on_arrival_by_a_dead_worker_is_answered_by_another(pair):
    slack, dying, survivor = pair
    body = mention(slack, "what is a lease?")
    event = body["event"]
    # What the dying worker did before acknowledging the event, and all it did.
    arrival = Arrival(body, event, slack.bot_user_id, slack.bot_id)
    message = arrival.answerable(follow_threads=True)
    assert message is not None
    assert await claim_on_arrival(dying.parley.service, arrival, message)
    assert await states(dying.store) == ["received"]
    assert await survivor.sweep() == 0  # its worker still lives
    # A redelivery meanwhile is acknowledged and dropped: the live claim has it.
    assert await slack.post_event(survivor.url, body, retry_num=1) == 200
    await survivor.adapter.drain()
    assert answers(slack, event["ts"]) == []

    await dying.die()
    assert await survivor.sweep() == 1
    [answer] = answers(slack, event["ts"])
    assert "You said: what is a lease?" in answer.text and not answer.streaming
    assert await states(survivor.store) == ["answered"]
    # Slack delivering it once more changes nothing.
    assert await slack.post_event(survivor.url, body, retry_num=2) == 200
    await survivor.adapter.drain()
    assert await survivor.sweep() == 0
    assert len(answers(slack, event["ts"])) == 1


async def test_an_event_is_claimed_before_it_is_acknowledged(pair):
    slack, first, _ = pair
    body = mention(slack, "hello")
    assert await slack.post_event(first.url, body) == 200
    # Acknowledged: the claim is in (whatever the handler has reached since).
    assert await states(first.store) in (["received"], ["answering"], ["stored"], ["answered"])
    await first.adapter.drain()
    assert await states(first.store) == ["answered"]
    assert len(answers(slack, body["event"]["ts"])) == 1


async def test_what_a_dead_worker_wrote_and_never_recorded_is_taken_down(pair):
    slack, dying, survivor = pair
    earlier = mention(slack, "an earlier question")
    root = earlier["event"]["ts"]
    client = dying.adapter.client
    # A reply of Parley's own in the thread, and a person's: both stay.
    await client.chat_postMessage(
        channel=CHANNEL,
        thread_ts=root,
        text="a command's reply",
        metadata={"event_type": REPLY_METADATA, "event_payload": {"reply": "command"}},
    )
    person = slack.add_message(
        CHANNEL, f"<@{slack.bot_user_id}> and now?", user=ALICE, thread_ts=root
    )
    event = {
        "type": "app_mention",
        "user": ALICE,
        "text": person.text,
        "ts": person.ts,
        "thread_ts": root,
        "channel": CHANNEL,
        "team": slack.team_id,
        "event_ts": person.ts,
    }
    body = slack.event_body(event)
    # The dying worker took the question on, then wrote without recording: a stream it
    # opened and a message it posted.
    inbound = translate.parse_message(body, event).inbound("and now?")
    assert await dying.parley.service.claim_event(
        "slack",
        str(inbound.event_id),
        settled=False,
        request=recovery.request_of(inbound),
        conversation=str(inbound.key),
        sent_at=inbound.sent_at,
    )
    stream = await client.chat_startStream(
        channel=CHANNEL,
        thread_ts=root,
        markdown_text="You said: and",
        recipient_team_id=slack.team_id,
        recipient_user_id=ALICE,
    )
    posted = await client.chat_postMessage(
        channel=CHANNEL,
        thread_ts=root,
        text="You said: and now",
        metadata={"event_type": ANSWER_METADATA, "event_payload": {"event": inbound.event_id}},
    )
    await dying.die()

    assert await survivor.sweep() == 1
    left = {m.ts: m for m in answers(slack, root)}
    assert stream["ts"] not in left and posted["ts"] not in left
    assert not slack.open_streams()
    reply, answer = sorted(left.values(), key=lambda m: m.ts)
    assert reply.text == "a command's reply"
    assert "You said: and now?" in answer.text and not answer.streaming
    assert any(m.ts == person.ts for m in slack.thread(CHANNEL, root))
