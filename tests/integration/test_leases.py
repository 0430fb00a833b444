"""Leases and claim states: answers hold no connection, a dead worker's question is not lost,
and a database that refuses connections for a while costs time, not messages."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from bots.bootstrap import Parley, build
from core.messages import Author, ConversationKey, FinalText, Inbound
from core.settings import Settings
from core.store import schema
from core.store.models import LeaseRow
from core.store.sql import SqlStore, _earlier_waiting, make_engine
from tests.conftest import PG_PORT
from tests.fakes.memory import ScriptedModel
from tests.fakes.tcp_proxy import Proxy

KEY = ConversationKey("slack", "T1", "C1", "1700000000.000100")


async def _store(url: str, **engine: object) -> SqlStore:
    store = SqlStore(make_engine(url, **engine), patience=30)
    await schema.upgrade(store.engine)
    return store


async def _die(store: SqlStore) -> None:
    """What a `kill -9` leaves: the worker's leases stop being renewed and run out."""
    await store.leases.close_heartbeat()
    async with store.engine.begin() as conn:
        await conn.execute(
            update(LeaseRow).where(LeaseRow.holder == store.leases.holder).values(until=0)
        )


async def test_an_unfinished_claim_is_taken_over_only_once_its_worker_is_gone(database_url):
    first, second = await _store(database_url), await _store(database_url)
    try:
        assert await first.claim_event("slack", "Ev1", settled=False)
        assert not await first.claim_event("slack", "Ev1", settled=False)  # same worker, again
        assert not await second.claim_event("slack", "Ev1", settled=False)  # its worker lives
        await _die(first)
        assert await second.claim_event("slack", "Ev1", settled=False)
        await second.settle_event("slack", "Ev1", "answered")
        third = await _store(database_url)
        try:
            await _die(second)
            assert not await third.claim_event("slack", "Ev1", settled=False)  # answered
        finally:
            await third.close()
    finally:
        await first.close()
        await second.close()


async def test_a_question_waiting_for_its_answer_stays_out_of_the_context(database_url):
    store = await _store(database_url)
    try:
        state = await store.conversation(KEY)
        answered = await store.add_message(state.id, "user", "first", 2, status="pending")
        await store.finish_turn(
            state.id, "reply", 2, "gpt-4o", KEY.channel_key, "U1", [], question_id=answered
        )
        await store.add_message(state.id, "user", "orphan", 2, status="pending")
        turns = await store.recent_messages(state.id, 0, 10**12, 10)
        assert [t.content for t in reversed(turns)] == ["first", "reply"]
    finally:
        await store.close()


async def test_a_conversation_lease_passes_on_when_its_holder_dies(postgres_url):
    first, second = await _store(postgres_url), await _store(postgres_url)
    try:
        assert await first.leases.try_take(str(KEY))
        assert not await second.leases.try_take(str(KEY))
        await _die(first)
        assert await second.leases.try_take(str(KEY))
    finally:
        await first.close()
        await second.close()


class Gathering(ScriptedModel):
    """Answers only once ``expected`` requests are inside the model at the same time."""

    def __init__(self, expected: int) -> None:
        super().__init__(reply=lambda r: f"answer to {r.messages[-1].text}")
        self.expected = expected
        self.inside = 0
        self.all_in = asyncio.Event()

    async def stream(self, request):
        self.inside += 1
        if self.inside >= self.expected:
            self.all_in.set()
        await self.all_in.wait()
        async for item in super().stream(request):
            yield item


async def _ask(parley: Parley, key: ConversationKey, text: str) -> str | None:
    events = [e async for e in parley.service.answer(Inbound(key, Author("u"), text))]
    return next((e.text for e in events if isinstance(e, FinalText)), None)


async def test_more_answers_in_flight_than_connections(postgres_url):
    """200 conversations answered at once by one worker whose pool has 3 connections: with a
    connection held per answer, the model would never see them all at once."""
    store = await _store(postgres_url, pool_size=3, max_overflow=0)
    model = Gathering(200)
    parley = await build(
        Settings(_env_file=None, database_url=postgres_url), store=store, llm=model
    )
    try:
        keys = [ConversationKey("slack", "T1", f"C{i}") for i in range(200)]
        answers = await asyncio.wait_for(
            asyncio.gather(*(_ask(parley, key, f"q{i}") for i, key in enumerate(keys))), 120
        )
        assert answers == [f"answer to q{i}" for i in range(200)]
    finally:
        await parley.close()


@pytest.fixture
async def proxy():
    proxy = await Proxy(PG_PORT).start()
    yield proxy
    await proxy.close()


class Slow(ScriptedModel):
    """Takes a while to answer, so some answers are still being written when the database
    goes away, and finish while it is away."""

    def __init__(self) -> None:
        super().__init__(reply=lambda r: f"answer to {r.messages[-1].text}")
        self.inside = 0
        self.started = asyncio.Event()

    async def stream(self, request):
        self.inside += 1
        if self.inside >= 10:
            self.started.set()
        await asyncio.sleep(1.0)
        async for item in super().stream(request):
            yield item


async def test_a_20_second_database_outage_loses_none_of_50_conversations(postgres_url, proxy):
    """The database drops every connection and refuses new ones for 20 s in the middle of 50
    conversations: answers being written, questions asked meanwhile, are all answered, stored
    and charged once it is back."""
    url = postgres_url.replace(f":{PG_PORT}/", f":{proxy.port}/")
    store = await _store(url)
    model = Slow()
    parley = await build(Settings(_env_file=None, database_url=url), store=store, llm=model)
    keys = [ConversationKey("slack", "T1", f"C{i}") for i in range(50)]
    try:
        early = [asyncio.create_task(_ask(parley, k, f"q{i}")) for i, k in enumerate(keys[:25])]
        await asyncio.wait_for(model.started.wait(), 30)  # answers are being written
        proxy.cut()
        late = [asyncio.create_task(_ask(parley, k, f"q{i}")) for i, k in enumerate(keys[25:], 25)]
        await asyncio.sleep(20)
        assert proxy.refused > 0  # the worker kept knocking at a closed door
        assert not any(task.done() for task in early + late)
        proxy.restore()
        answers = await asyncio.wait_for(asyncio.gather(*early, *late), 90)
        assert answers == [f"answer to q{i}" for i in range(50)]
        for i, key in enumerate(keys):
            state = await store.conversation(key)
            turns = await store.recent_messages(state.id, 0, 10**12, 10)
            assert [t.content for t in reversed(turns)] == [f"q{i}", f"answer to q{i}"]
        assert (await store.user_usage("slack", "u")).turns == 50
    finally:
        await parley.close()


async def test_questions_waiting_for_a_conversation_take_turns_in_the_order_sent(postgres_url):
    """Whichever worker has them, a later question waits for an earlier one still waiting."""
    first, second = await _store(postgres_url), await _store(postgres_url)
    name, early = str(KEY), datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    late = early + timedelta(seconds=1)
    try:
        assert await first.claim_event(
            "slack", "Ev-early", settled=False, conversation=name, sent_at=early
        )
        assert await second.claim_event(
            "slack", "Ev-late", settled=False, conversation=name, sent_at=late
        )
        # Received, not taken on yet (claimed on arrival, its handler still reading it).
        await first.settle_event("slack", "Ev-early", "received")
        assert not await second.leases.try_take(name, unless=_earlier_waiting(name, late))
        await first.settle_event("slack", "Ev-early", "answering")
        assert not await second.leases.try_take(name, unless=_earlier_waiting(name, late))
        assert await first.leases.try_take(name, unless=_earlier_waiting(name, early))
        state = await first.conversation(KEY)
        await first.add_message(state.id, "user", "q", 1, event=("slack", "Ev-early"))
        await first.leases.give_back(name)  # the early question has begun, and is done
        assert await second.leases.try_take(name, unless=_earlier_waiting(name, late))
    finally:
        await first.close()
        await second.close()


async def test_a_question_received_but_not_taken_on_yet_is_not_overtaken(postgres_url):
    """A question claimed on arrival whose handler is still reading it (files, names) keeps
    its place: a later one in its conversation, already answering, waits for it."""
    first, second = await _store(postgres_url), await _store(postgres_url)
    name, early = str(KEY), datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    late = early + timedelta(seconds=1)
    order: list[str] = []

    async def turn(store: SqlStore, event: str, sent_at: datetime) -> None:
        async with store.conversation_lock(name, sent_at=sent_at):
            order.append(event)
            state = await store.conversation(KEY)
            await store.add_message(state.id, "user", event, 1, event=("slack", event))

    try:
        assert await first.claim_event(
            "slack", "Ev-early", received=True, request="{}", conversation=name, sent_at=early
        )
        assert await second.claim_event(
            "slack", "Ev-late", settled=False, conversation=name, sent_at=late
        )
        later = asyncio.create_task(turn(second, "Ev-late", late))
        await asyncio.sleep(1.0)  # the later question's worker tries the lease meanwhile
        assert order == []
        # The early question is taken on (its answer's claim) and takes its turn first.
        assert await first.claim_event(
            "slack", "Ev-early", settled=False, conversation=name, sent_at=early
        )
        await turn(first, "Ev-early", early)
        await asyncio.wait_for(later, 20)
        assert order == ["Ev-early", "Ev-late"]
    finally:
        await first.close()
        await second.close()


async def test_a_lease_left_by_a_failed_give_back_runs_out_while_held_ones_are_renewed(
    database_url,
):
    store = await _store(database_url)
    try:
        await store.leases.start()
        left = "slack:T1:C-left:"
        async with store.engine.begin() as conn:  # a give-back that never reached the database
            await conn.execute(
                LeaseRow.__table__.insert().values(name=left, holder=store.leases.holder, until=1)
            )
        async with store.leases.hold("slack:T1:C-held:"):
            async with store.engine.begin() as conn:
                await conn.execute(update(LeaseRow).values(until=1))
            await store.leases.renew()
            async with store.engine.connect() as conn:
                until = dict((await conn.execute(select(LeaseRow.name, LeaseRow.until))).all())
        assert until[left] == 1
        assert until["slack:T1:C-held:"] > 1
        assert until[f"worker:{store.leases.holder}"] > 1
    finally:
        await store.close()


async def _on_own_connection(url: str, sql: str, *args: object) -> object:
    """``sql``'s first value, on a connection of the test's own (not through the proxy)."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def _count_give_backs(url: str) -> None:
    """From now on, every lease row deleted (given back) is noted in ``given_back``."""
    for sql in (
        "CREATE TABLE given_back (name text, holder text)",
        "CREATE FUNCTION note_give_back() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO given_back VALUES (OLD.name, OLD.holder); RETURN OLD; END $$",
        "CREATE TRIGGER note_give_back AFTER DELETE ON leases FOR EACH ROW "
        "EXECUTE FUNCTION note_give_back()",
    ):
        await _on_own_connection(url, sql)


async def _given_back(url: str, name: str, holder: str) -> object:
    sql = "SELECT count(*) FROM given_back WHERE name = $1 AND holder = $2"
    return await _on_own_connection(url, sql, name, holder)


async def _waited_for(store: SqlStore, name: str) -> None:
    """Return once a turn of ``store``'s worker waits for another of its turns holding (or
    taking) ``name``."""
    assert name in store.leases._held, "the turn taking the lease reserved it"
    mine = store.leases._held[name]
    while not mine._waiters:  # type: ignore[attr-defined]  # noqa: ASYNC110 (no event says so)
        await asyncio.sleep(0)


@pytest.mark.parametrize("known", [False, True], ids=["first-turn", "facts-known"])
async def test_a_take_cut_short_once_it_took_the_lease_gives_it_back_and_lets_waiters_on(
    postgres_url, proxy, known
):
    """A turn is cancelled while the statement taking its conversation's lease is in flight:
    done in the database, its answer not back yet. The lease is given back at once (not left
    to run out) and the worker's next turn of the conversation, waiting for it, goes on.
    ``known``: the worker knows the conversation's facts (the lease is taken by the statement
    storing the question) or not (by the statement reading them)."""
    url = postgres_url.replace(f":{PG_PORT}/", f":{proxy.port}/")
    store = await _store(url)
    await _count_give_backs(postgres_url)
    model = ScriptedModel(reply=lambda r: f"answer to {r.messages[-1].text}")
    parley = await build(Settings(_env_file=None, database_url=url), store=store, llm=model)
    name, holder = str(KEY), store.leases.holder
    try:
        if known:
            assert await _ask(parley, KEY, "q1") == "answer to q1"
        given_back = await _given_back(postgres_url, name, holder)
        proxy.hold_reply(holder.encode())  # the take's answer names its holder
        cut = asyncio.create_task(_ask(parley, KEY, "q2"))
        await asyncio.wait_for(proxy.holding.wait(), 20)
        taken = "SELECT holder FROM leases WHERE name = $1"
        assert await _on_own_connection(postgres_url, taken, name) == holder  # the take is done
        waiting = asyncio.create_task(_ask(parley, KEY, "q3"))
        await asyncio.wait_for(_waited_for(store, name), 20)
        cut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cut
        assert await _given_back(postgres_url, name, holder) > given_back  # at once
        assert await asyncio.wait_for(waiting, 20) == "answer to q3"
    finally:
        await parley.close()
