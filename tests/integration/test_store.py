"""The SQL store and its migrations on SQLite and on the PostgreSQL server."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text, update

from bots.bootstrap import prepare_schema
from core.context import newest_turns
from core.errors import ClaimLost, SchemaOutOfDate
from core.messages import ChannelKey, ConversationKey
from core.ports import ChannelOverrides, NewTurn, TurnPlan, UsageEntry
from core.settings import Settings
from core.store import schema
from core.store.models import ProcessedEventRow
from core.store.sql import SqlStore, make_engine
from tests.fakes.counting import Counting

KEY = ConversationKey("slack", "T1", "C1", "1700000000.000100")


@pytest.fixture
async def store(database_url):
    store = SqlStore(make_engine(database_url))
    await schema.upgrade(store.engine)
    yield store
    await store.close()


async def test_migrations_reach_head_and_check_detects_old_schema(database_url):
    store = SqlStore(make_engine(database_url))
    try:
        assert await schema.current_revision(store.engine) is None
        assert not await schema.is_up_to_date(store.engine)
        settings = Settings(_env_file=None, database_url=database_url)
        if database_url.startswith("postgresql"):
            with pytest.raises(SchemaOutOfDate, match="parley db upgrade"):
                await prepare_schema(store, settings, auto_upgrade=True)
            await schema.upgrade(store.engine)
        else:
            await prepare_schema(store, settings, auto_upgrade=True)
        assert await schema.current_revision(store.engine) == schema.head_revision()
    finally:
        await store.close()


async def test_event_ids_are_claimed_once_even_concurrently(store):
    results = await asyncio.gather(*(store.claim_event("slack", "Ev1") for _ in range(10)))
    assert results.count(True) == 1
    assert await store.claim_event("discord", "Ev1")


async def test_messages_round_trip_newest_first_and_skip_failed(store):
    state = await store.conversation(KEY)
    assert (await store.conversation(KEY)).id == state.id
    ids = [
        await store.add_message(state.id, "user", f"m{i}", i + 1, author_name="alice")
        for i in range(5)
    ]
    await store.add_message(state.id, "assistant", "partial", 3, status="failed")
    recent = await store.recent_messages(state.id, ids[0], 10**12, 3)
    assert [m.content for m in recent] == ["m4", "m3", "m2"]
    assert recent[0].token_count == 5 and recent[0].author_name == "alice"
    other = await store.conversation(ConversationKey("slack", "T1", "C1"))
    assert await store.recent_messages(other.id, 0, 10**12, 10) == []
    await store.set_summary(state.id, "short summary", 7, ids[2])
    state = await store.conversation(KEY)
    assert (state.summary, state.summary_tokens, state.context_start) == (
        "short summary",
        7,
        ids[2],
    )
    assert await store.reset_conversation(KEY) == 6
    state = await store.conversation(KEY)
    assert state.summary == "" and await store.recent_messages(state.id, 0, 10**12, 10) == []


async def test_channel_overrides_and_usage(store):
    channel = ChannelKey("discord", "G1", "C9")
    assert await store.channel_overrides(channel) == ChannelOverrides()
    await store.save_channel_overrides(channel, ChannelOverrides(model="gpt-4o-mini"))
    await store.save_channel_overrides(
        channel, ChannelOverrides(model="gpt-4o-mini", temperature=0.2, json_mode=True)
    )
    got = await store.channel_overrides(channel)
    assert (got.model, got.temperature, got.json_mode, got.system_prompt) == (
        "gpt-4o-mini",
        0.2,
        True,
        None,
    )
    await store.record_usage(channel, "u1", [UsageEntry("gpt-4o", 100, 50, 0.00125)])
    await store.record_usage(channel, "u2", [UsageEntry("gpt-4o", 10, 5, 0.000125)])
    await store.record_usage(
        ChannelKey("discord", "G1", "C2"), "u1", [UsageEntry("gpt-4o", 1, 1, 0.00002)]
    )
    here = await store.channel_usage(channel)
    assert (here.turns, here.input_tokens, here.output_tokens) == (2, 110, 55)
    assert here.cost_usd == pytest.approx(0.001375)
    mine = await store.user_usage("discord", "u1")
    assert (mine.turns, mine.input_tokens) == (2, 101)


async def test_a_turn_opens_and_finishes_in_single_transactions(store):
    channel = ChannelKey("slack", "T1", "C1")
    await store.save_channel_overrides(channel, ChannelOverrides(temperature=1.5))
    facts = await store.open_turn(KEY)
    state, overrides = facts.state, facts.overrides
    assert overrides.temperature == 1.5 and state.id == (await store.conversation(KEY)).id
    user_id = await store.add_message(state.id, "user", "q", 4)
    answer_id = await store.finish_turn(
        state.id,
        "a",
        4,
        "gpt-4o",
        channel,
        "u1",
        [UsageEntry("gpt-4o", 10, 2, 0.1), UsageEntry("gpt-4o-mini", 5, 1, 0.01)],
    )
    assert answer_id > user_id
    turns = await store.recent_messages(state.id, 0, 10**12, 10)
    assert [t.role for t in turns] == ["assistant", "user"]
    totals = await store.channel_usage(channel)
    assert (totals.turns, totals.input_tokens) == (2, 15)


async def test_old_event_ids_are_pruned(store):
    assert await store.claim_event("slack", "old")
    assert await store.prune_events(3600) == 0
    assert await store.prune_events(-60) == 1  # everything is "older" than a minute from now
    assert await store.claim_event("slack", "old")


async def test_a_context_of_many_short_turns_is_read_in_one_statement(store):
    """However short the turns, the context that fits is one query, not a page at a time."""
    state = await store.conversation(KEY)
    for i in range(600):
        await store.add_message(state.id, "user" if i % 2 == 0 else "assistant", f"t{i}", 3)
    with Counting() as counting:
        picked, cut_at = await newest_turns(store, state.id, 0, 10**12, 1000)
    assert [m.content for m in picked] == [f"t{i}" for i in range(267, 600)]
    assert cut_at is not None
    assert counting.statements == 1


async def test_the_context_walk_keeps_conversation_order_and_its_bounds(store):
    """The context read walks turns newest first by (sent_at, id): turns sent at the same
    moment, turns not complete, the conversation's start and the token limit all hold; the
    answer equals the same choice made over every stored turn."""
    import random
    from datetime import UTC, datetime, timedelta

    state = await store.conversation(KEY)
    other = await store.conversation(ConversationKey("slack", "T1", "C1", "other"))
    rng = random.Random(7)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    stored = []  # (sent_at, id, tokens, complete, content)
    for i in range(300):
        sent_at = start + timedelta(seconds=rng.randrange(120))  # many ties, out of order
        complete = rng.random() > 0.1
        tokens = rng.randrange(1, 40)
        status = "complete" if complete else "pending"
        role = "user" if i % 2 == 0 else "assistant"
        content = f"t{i}"
        turn_id = await store.add_message(
            state.id, role, content, tokens, status=status, sent_at=sent_at
        )
        await store.add_message(other.id, role, "elsewhere", 1, sent_at=sent_at)
        stored.append((sent_at, turn_id, tokens, complete, content))
    ordered = sorted(stored)
    after_id = ordered[40][1]  # the conversation starts after this turn
    before_id = ordered[-30][1]  # and the context ends before this one
    for limit in (1, 50, 700, 10**6):
        expected, remaining, cut = [], limit, None
        for _sent_at, turn_id, tokens, complete, content in reversed(ordered[41:-30]):
            if not complete:
                continue
            if tokens > remaining:
                cut = turn_id
                break
            remaining -= tokens
            expected.append(content)
        picked, cut_at = await newest_turns(store, state.id, after_id, before_id, limit)
        assert [m.content for m in picked] == expected[::-1], limit
        assert cut_at == cut, limit


async def test_a_claim_received_on_arrival_is_taken_on_by_its_own_worker_only(store, database_url):
    other = SqlStore(make_engine(database_url))
    try:
        assert await store.claim_event("slack", "Ev-r", settled=False, received=True)
        assert not await store.claim_event("slack", "Ev-r", settled=False, received=True)
        assert not await other.claim_event("slack", "Ev-r", settled=False)  # its worker lives
        assert await store.claim_event("slack", "Ev-r", settled=False, request="{}")
        assert not await store.claim_event("slack", "Ev-r", settled=False)  # taken on once
        assert not await other.settle_event("slack", "Ev-r", "answered")
        assert await store.settle_event("slack", "Ev-r", "answered")
    finally:
        await other.close()


async def _lose(store, event_id):
    """The claim of ``event_id`` now names another worker as its holder."""
    async with store.engine.begin() as conn:
        stmt = update(ProcessedEventRow).where(ProcessedEventRow.event_id == event_id)
        await conn.execute(stmt.values(holder="someone-else"))


async def test_a_question_or_answer_whose_claim_was_taken_over_stores_nothing(store):
    channel = ChannelKey("slack", "T1", "C1")
    event = ("slack", "Ev-lost")
    assert await store.claim_event(*event, settled=False, request="{}")
    question = NewTurn("user", "q", 4, status="pending", event=event)
    facts = await store.open_turn(KEY, plan=lambda facts: TurnPlan(question, 1000, 10))
    usage = [UsageEntry("gpt-4o", 10, 2, 0.1)]
    args = (facts.state.id, "a", 4, "gpt-4o", channel, "u1", usage)
    await _lose(store, "Ev-lost")
    with pytest.raises(ClaimLost):
        await store.finish_turn(*args, question_id=facts.question_id, event=event)
    turns = await store.recent_messages(facts.state.id, 0, 10**12, 10)
    assert turns == []  # the question is still pending, no answer was stored
    assert (await store.channel_usage(channel)).turns == 0
    assert await store.claim_event("slack", "Ev-lost-2", settled=False, request="{}")
    await _lose(store, "Ev-lost-2")
    question = NewTurn("user", "q2", 4, status="pending", event=("slack", "Ev-lost-2"))
    with pytest.raises(ClaimLost):
        await store.open_turn(KEY, plan=lambda facts: TurnPlan(question, 1000, 10))
    async with store.engine.connect() as conn:
        count = await conn.execute(text("SELECT count(*) FROM messages"))
        assert count.scalar_one() == 1  # the first question alone


async def test_every_sqlite_connection_of_the_store_keeps_a_small_page_cache(tmp_path):
    from core.store.driver import SQLITE_CACHE_KIB

    store = SqlStore(make_engine(f"sqlite+aiosqlite:///{tmp_path}/parley.db"))
    try:
        await schema.upgrade(store.engine)
        await store.conversation(KEY)  # a turn's statements: the store thread's own connection
        async with store.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA cache_size")).scalar() == -SQLITE_CACHE_KIB
        local = store._local
        assert local is not None and store._link is not None
        with local.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -SQLITE_CACHE_KIB
        link = store._link.db.execute("PRAGMA cache_size").fetchone()
        assert link == (-SQLITE_CACHE_KIB,)
    finally:
        await store.close()
