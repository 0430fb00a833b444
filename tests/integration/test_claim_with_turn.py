"""A turn's event claimed by the turn's first transaction (on PostgreSQL, by the statement that
takes the conversation's lease and stores the question): a redelivery still stores and says
nothing, a claim left by a dead worker is still taken over, and a question that has to wait
for its conversation is still claimed, and shown as accepted, before it waits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from bots.bootstrap import Parley, build
from core.delivery import Interval, deliver
from core.messages import Accepted, Author, ConversationKey, FinalText, Inbound, UserError
from core.settings import Settings
from core.store import schema
from core.store.models import LeaseRow, MessageRow, ProcessedEventRow
from core.store.sql import SqlStore, make_engine
from tests.fakes.memory import ScriptedModel

KEY = ConversationKey("slack", "T1", "C1", "1700000000.000100")
SENT = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
FAR = 2**62  # a lease time far ahead: that worker lives


class Screen:
    """A renderer with the record a Slack answer keeps."""

    def __init__(self) -> None:
        self.started = False
        self.final: str | None = None

    async def start(self) -> None:
        self.started = True

    async def progress(self, text: str) -> None:
        pass

    async def finish(self, text: str) -> None:
        self.final = text

    async def fail(self, text: str) -> None:
        self.final = text

    def record(self) -> dict[str, Any]:
        return {"channel": "C1", "messages": ["ts-1"]}


@pytest.fixture
async def parley(database_url: str) -> Any:
    engine = make_engine(database_url)
    await schema.upgrade(engine)
    await engine.dispose()
    llm = ScriptedModel(reply=lambda r: f"answer to {r.messages[-1].text}")
    parley = await build(Settings(_env_file=None, database_url=database_url), llm=llm)
    # A turn without an event first: the worker knows the conversation (on PostgreSQL a
    # turn's claim is folded into its first statement only then).
    assert await _final(parley, _question("warm-up", None, 0))
    assert parley.store.claims_at_once(KEY, spender=False)
    yield parley
    await parley.close()


def _question(text: str, event_id: str | None, second: int) -> Inbound:
    sent_at = SENT + timedelta(seconds=second)
    return Inbound(KEY, Author("U1", "Ada"), text, event_id=event_id, sent_at=sent_at)


async def _events(parley: Parley, inbound: Inbound) -> list[Any]:
    return [e async for e in parley.service.answer(inbound)]


async def _final(parley: Parley, inbound: Inbound) -> bool:
    return any(isinstance(e, FinalText) for e in await _events(parley, inbound))


async def _delivered(parley: Parley, inbound: Inbound) -> str:
    service = parley.service
    done = await deliver(
        service.answer(inbound), Screen(), Interval(60), journal=service.journal(inbound)
    )
    return done.outcome


async def _claim(parley: Parley, event_id: str) -> Any:
    async with parley.store.engine.connect() as conn:
        found = await conn.execute(
            select(
                ProcessedEventRow.state, ProcessedEventRow.holder, ProcessedEventRow.question_id
            ).where(ProcessedEventRow.event_id == event_id)
        )
        return found.one_or_none()


async def _questions(parley: Parley) -> list[tuple[int, str]]:
    async with parley.store.engine.connect() as conn:
        found = await conn.execute(
            select(MessageRow.id, MessageRow.content)
            .where(MessageRow.role == "user")
            .order_by(MessageRow.id)
        )
        return [(int(r[0]), str(r[1])) for r in found]


async def _put(parley: Parley, *rows: tuple[Any, dict[str, Any]]) -> None:
    async with parley.store.engine.begin() as conn:
        for table, values in rows:
            await conn.execute(insert(table).values(**values))


def _holder(parley: Parley) -> str:
    store = parley.store
    assert isinstance(store, SqlStore)
    return store.leases.holder


async def test_a_redelivered_answered_event_stores_and_says_nothing(parley):
    assert await _delivered(parley, _question("q1", "Ev1", 1)) == "answered"
    before = await _questions(parley)
    assert await _events(parley, _question("q1", "Ev1", 1)) == []
    assert await _questions(parley) == before
    assert (await _claim(parley, "Ev1"))[0] == "answered"  # not made "failed" by the repeat
    # the conversation is free for the next question (a lease taken for the repeat is given
    # back)
    assert await _final(parley, _question("q2", "Ev2", 2))


async def test_an_event_a_live_worker_is_answering_is_left_to_it(parley):
    await _put(
        parley,
        (LeaseRow, {"name": "worker:alive", "holder": "alive", "until": FAR}),
        (
            ProcessedEventRow,
            {"platform": "slack", "event_id": "Ev1", "state": "answering", "holder": "alive"},
        ),
    )
    before = await _questions(parley)
    assert await _events(parley, _question("q1", "Ev1", 1)) == []
    assert await _questions(parley) == before
    assert await _claim(parley, "Ev1") == ("answering", "alive", None)
    assert await _final(parley, _question("q2", "Ev2", 2))


async def test_an_event_left_by_a_dead_worker_is_taken_over_knowing_its_question(parley):
    await _put(
        parley,
        (
            ProcessedEventRow,
            {
                "platform": "slack",
                "event_id": "Ev1",
                "state": "answering",
                "holder": "gone",
                "conversation": str(KEY),
            },
        ),
    )
    assert await _delivered(parley, _question("q1", "Ev1", 1)) == "answered"
    state, holder, question_id = await _claim(parley, "Ev1")
    assert (state, holder) == ("answered", _holder(parley))
    assert (question_id, "q1") in await _questions(parley)


async def test_an_event_received_by_this_worker_is_taken_on(parley):
    assert await parley.service.claim_event("slack", "Ev1", received=True, request="{}")
    assert await _delivered(parley, _question("q1", "Ev1", 1)) == "answered"
    state, holder, question_id = await _claim(parley, "Ev1")
    assert (state, holder) == ("answered", _holder(parley))
    assert (question_id, "q1") in await _questions(parley)


async def test_a_new_event_is_claimed_knowing_its_question(parley):
    events = await _events(parley, _question("q1", "Ev1", 1))
    assert isinstance(events[0], Accepted) and isinstance(events[-2], FinalText)
    state, holder, question_id = await _claim(parley, "Ev1")
    assert (state, holder) == ("stored", _holder(parley))  # settled once shown
    assert (question_id, "q1") in await _questions(parley)


async def test_a_refused_question_is_told_once_with_its_event_claimed(parley):
    events = await _events(parley, _question("", "Ev1", 1))  # nothing to answer
    assert [type(e) for e in events] == [Accepted, UserError]
    assert (await _claim(parley, "Ev1"))[0] == "failed"
    assert await _events(parley, _question("", "Ev1", 1)) == []


@pytest.mark.postgres
async def test_a_question_waiting_for_its_conversation_is_claimed_and_accepted_first(
    postgres_url,
):
    engine = make_engine(postgres_url)
    await schema.upgrade(engine)
    await engine.dispose()
    model = ScriptedModel(reply=lambda r: "fine")
    settings = Settings(_env_file=None, database_url=postgres_url)
    parley = await build(settings, llm=model)
    other = SqlStore(make_engine(postgres_url))
    try:
        assert await _final(parley, _question("warm-up", None, 0))
        assert await other.leases.try_take(str(KEY))  # another worker answers in it
        seen: list[Any] = []

        async def ask() -> None:
            async for event in parley.service.answer(_question("q1", "Ev1", 1)):
                seen.append(event)

        asking = asyncio.create_task(ask())
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.05)
        assert [type(e) for e in seen] == [Accepted]  # shown as accepted while it waits
        assert await _claim(parley, "Ev1") == ("answering", _holder(parley), None)
        assert await _events(parley, _question("q1", "Ev1", 1)) == []  # a repeat meanwhile
        await other.leases.give_back(str(KEY))
        await asyncio.wait_for(asking, 30)
        assert any(isinstance(e, FinalText) for e in seen)
        assert [q for _, q in await _questions(parley)] == ["warm-up", "q1"]
    finally:
        await other.close()
        await parley.close()
