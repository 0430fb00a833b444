"""The Store port on SQLAlchemy 2 async: SQLite (aiosqlite) by default, PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from core.errors import Redelivered
from core.messages import ChannelKey, ConversationKey
from core.ports import (
    ChannelOverrides,
    ConversationState,
    EventClaim,
    MemoryFact,
    NewTurn,
    Orphan,
    Planner,
    Role,
    StoredMessage,
    TurnFacts,
    UsageEntry,
    UsageTotals,
)
from core.store import prepared, turns
from core.store.driver import SQLITE_PRAGMAS, AlchemyLink, PgLinks, SqliteLink
from core.store.leases import FIRST_WAIT, LEASE_SECONDS, LONGEST_WAIT, Leases, now_micros
from core.store.models import (
    ChannelMemoryRow,
    ChannelSettingsRow,
    ConversationRow,
    FeedbackRow,
    MessageRow,
    ProcessedEventRow,
    UsageRow,
)
from core.store.retry import PATIENCE, again, retrying
from core.store.thread import Stop, StoreThread
from core.store.turns import conversation_params as _conversation
from core.store.turns import event_params as _event
from core.store.turns import history as _history
from core.store.turns import message_params as _message
from core.store.turns import micros

# Claims a sweeper finishes when their holder is gone: still being answered, or answered and
# stored but maybe not shown.
RESUMABLE = ("received", "answering", "stored")
# How many conversations' facts a worker keeps, the most recently answered (PostgreSQL: a turn
# of one of them is planned with them, its lease taken by the statement that stores its
# question). About 0.8 KB each; more than a worker answers at once.
FACTS_KEPT = 1024
# What a conversation's lock holds on a database only one worker uses: nothing.
_UNLOCKED: AbstractAsyncContextManager[object | None] = nullcontext(None)


def make_engine(url: str, *, log_parameters: bool = False, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``; SQLite gets WAL and a busy timeout for concurrent writers.

    Query parameters (message text) stay out of error messages unless ``log_parameters``.
    """
    kwargs.setdefault("hide_parameters", not log_parameters)
    if url.startswith("sqlite"):
        # SQLite has one writer at a time: one shared connection queues writers in asyncio
        # instead of letting them spin on the file lock.
        kwargs.setdefault("pool_size", 1)
        kwargs.setdefault("max_overflow", 0)
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # A steady pool: an overflow connection would be closed on its return and opened anew
    # (with its prepared statements) at the next burst, the worker's CPU spent reconnecting.
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 0)
    # Connections are recycled rather than pinged: a ping is one more round trip per query.
    kwargs.setdefault("pool_recycle", 1800)
    # Thousands of answers in flight share the pool: a short query waiting for a connection
    # is queueing, not failing.
    kwargs.setdefault("pool_timeout", 600)
    return create_async_engine(url, **kwargs)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def _local_engine(engine: AsyncEngine) -> Engine | None:
    """For a SQLite file, a plain engine on it for the store's own thread (one connection:
    SQLite has one writer at a time); None elsewhere (an in-memory database is the async
    engine's alone)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if (url.database or "").startswith("file:"):
        return None
    local = create_engine(
        url.set(drivername="sqlite+pysqlite"),
        pool_size=1,
        max_overflow=0,
        connect_args={"timeout": 30, "check_same_thread": False},
        hide_parameters=engine.sync_engine.hide_parameters,
    )
    event.listen(local, "connect", _sqlite_pragmas)
    return local


T = TypeVar("T")


def _transaction(engine: Engine, stop: Stop, work: Callable[..., T], args: tuple[Any, ...]) -> T:
    """``work(connection, *args)`` in one transaction, in the store's thread; rolled back
    if its caller stopped waiting for it (cancelled) before it could commit."""
    with engine.connect() as conn:
        result = work(conn, *args)
        if stop.is_set():
            conn.rollback()
        else:
            conn.commit()
        return result


def _insert(dialect: str, table: Any) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _alive() -> Any:
    """The claim's holder still holds its worker lease."""
    return prepared.alive(now_micros())


def _earlier_waiting(conversation: str, sent_at: datetime | None) -> Any:
    """A question sent before ``sent_at`` is waiting for ``conversation`` (claimed by a live
    worker, received or answering, not yet begun): it goes first."""
    if sent_at is None:
        return None
    return (
        select(ProcessedEventRow.id)
        .where(
            ProcessedEventRow.conversation == conversation,
            ProcessedEventRow.state.in_(prepared.UNSETTLED),
            ProcessedEventRow.question_id.is_(None),
            ProcessedEventRow.sent_at < micros(sent_at),
            _alive(),
        )
        .exists()
    )


# --- transactions: each runs whole on one connection (see ``SqlStore._run``) -------------------


def _rowcount(conn: Connection, stmt: Any, params: Any = None) -> int:
    return int(cast(CursorResult[Any], conn.execute(stmt, params)).rowcount or 0)


def _scalar(conn: Connection, stmt: Any) -> Any:
    return conn.execute(stmt).scalar_one()


def _rows(conn: Connection, stmt: Any, params: Any = None) -> list[Any]:
    return list(conn.execute(stmt, params).all())


def _orphan(conn: Connection, row: Any) -> Orphan:
    """A claim taken over: its pending question leaves the context (it is asked again), or
    its stored answer is read to be shown."""
    platform, event_id, state, request, delivery, question_id, answer_id = row
    answer = None
    if state == "stored" and answer_id is not None:
        stmt = select(MessageRow.content).where(MessageRow.id == answer_id)
        answer = conn.execute(stmt).scalar_one_or_none()
    if answer is None and question_id is not None:
        conn.execute(
            update(MessageRow)
            .where(MessageRow.id == question_id, MessageRow.status == "pending")
            .values(status="failed")
        )
    return Orphan(platform, event_id, request, delivery, answer)


def _orphans(conn: Connection, taking: Any) -> list[Orphan]:
    return [_orphan(conn, row) for row in conn.execute(taking).all()]


def _sum(conn: Connection, where: Sequence[Any]) -> UsageTotals:
    """Sums over the ledger entries matching ``where``."""
    stmt = select(
        func.coalesce(func.sum(UsageRow.input_tokens), 0),
        func.coalesce(func.sum(UsageRow.output_tokens), 0),
        func.coalesce(func.sum(UsageRow.cost_usd), 0.0),
        func.count(UsageRow.id),
        func.count(UsageRow.id).filter(UsageRow.estimated.is_(True)),
        func.count(UsageRow.id).filter(UsageRow.cost_usd.is_(None)),
    ).where(*where)
    row = conn.execute(stmt).one()
    return UsageTotals(
        int(row[0]), int(row[1]), float(row[2] or 0.0), int(row[3]), int(row[4]), int(row[5])
    )


def _channel(channel: ChannelKey) -> dict[str, str]:
    return {
        "platform": channel.platform,
        "workspace": channel.workspace,
        "channel": channel.channel,
    }


def _add_message(conn: Connection, conversation_id: int, turn: NewTurn) -> int:
    params = _message(conversation_id, turn)
    message_id = int(conn.execute(prepared.ADD_MESSAGE, params).scalar_one())
    if turn.event is not None:  # the claim knows its question, to mark it if it dies
        conn.execute(prepared.QUESTION_OF_EVENT, _event(turn.event, e_message=message_id))
    return message_id


def _usage_rows(channel: ChannelKey, user_id: str, usage: Sequence[UsageEntry]) -> list[Any]:
    return [
        {
            "platform": channel.platform,
            "workspace": channel.workspace,
            "channel": channel.channel,
            "user_id": user_id,
            "model": entry.model,
            "input_tokens": entry.input_tokens,
            "output_tokens": entry.output_tokens,
            "cost_usd": entry.cost_usd,
            "estimated": entry.estimated,
        }
        for entry in usage
    ]


def _record_usage(conn: Connection, rows: list[Any]) -> None:
    if rows:
        conn.execute(prepared.USAGE, rows)


def _reset(conn: Connection, conversation_id: int) -> int:
    removed = _rowcount(
        conn, delete(MessageRow).where(MessageRow.conversation_id == conversation_id)
    )
    conn.execute(
        update(ConversationRow)
        .where(ConversationRow.id == conversation_id)
        .values(summary="", summary_tokens=0, context_start=0)
    )
    return removed


@dataclass(slots=True)
class _Later:
    """A turn holding lease ``name`` from its first statement on (PostgreSQL): the facts that
    plan it, the waiting order's parameters (``EARLIER_WAITING``), whether it took it."""

    name: str
    facts: TurnFacts
    waiting: dict[str, Any]
    taken: bool = False


class SqlStore:
    """Implements ``core.ports.Store``; each method is one short transaction, tried again while
    the database is unreachable (``core.store.retry``) for up to ``patience`` seconds.

    On a SQLite file each transaction runs whole in one call to the store's own thread (one
    thread hop per call, the calls of a worker queued there as SQLite's one writer wants);
    elsewhere on the async engine."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        patience: float = PATIENCE,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.engine = engine
        self.patience = patience
        self._dialect = engine.dialect.name
        self._statements = prepared.Dialect(self._dialect)
        self._local = _local_engine(engine)
        self._thread = StoreThread() if self._local else None
        # Turns of a conversation run one at a time across workers under its lease; no
        # connection is held while the model answers.
        self.leases = Leases(engine, seconds=lease_seconds)
        self._single = self.leases.single
        self._announced = False
        self._announcing = asyncio.Lock()
        # A turn's calls go to the driver itself (``core.store.turns``): on a SQLite file a
        # ``sqlite3`` connection of the store's thread, on PostgreSQL asyncpg connections of
        # the engine's pool.
        self._texts = prepared.Compiled(self._dialect)
        self._link = SqliteLink(str(engine.url.database)) if self._local else None
        self._links = PgLinks(engine) if self._dialect == "postgresql" else None
        self.leases.links = self._links
        # PostgreSQL, by lease name or conversation: a turn's facts read with its lease, and
        # the lease to give back with the turn's finish or its event's settling.
        self._ahead: dict[str, TurnFacts] = {}
        # PostgreSQL: the facts of the last turns of a few thousand conversations (by lease
        # name, with their channel), the newest last. A turn planned with them takes its lease
        # in the statement that stores its question, which reads them again to check them.
        self._known: OrderedDict[str, tuple[ChannelKey, TurnFacts]] = OrderedDict()
        self._leased: dict[int, str] = {}
        self._settling: dict[tuple[str, str], str] = {}

    async def close(self) -> None:
        await self.leases.close()
        if self._links is not None:
            await self._links.close()
        if self._thread is not None:
            await self._thread.close(self._close_local)
        await self.engine.dispose()

    def _close_local(self) -> None:
        if self._link is not None:
            self._link.close()
        if self._local is not None:
            self._local.dispose()

    async def _run(self, work: Callable[..., T], *args: Any, single: bool = False) -> T:
        """``work(connection, *args)`` in one transaction, committed when it returns.

        ``single``: ``work`` is one statement, a transaction of its own on PostgreSQL (no
        BEGIN and COMMIT around it: two round trips fewer)."""
        if self._thread is None:
            async with (self._single if single else self.engine).connect() as conn:
                result = await conn.run_sync(work, *args)
                await conn.commit()
                return result
        stop = Stop()  # set if cancelled: rolled back, unless committing already
        call = partial(_transaction, cast(Engine, self._local), stop, work, args)
        return await self._thread.call(stop, call)

    async def _hot(self, work: Callable[..., T], *args: Any, single: bool = False) -> T:
        """``work(link, compiled statements, *args)`` (``core.store.turns``) on SQLite: on the
        store's thread over ``sqlite3`` (one thread hop), in one transaction or (``single``)
        statements that commit themselves; over the async engine for an in-memory database."""
        if self._link is None:
            return await self._run(_over_alchemy, work, self._texts, *args, single=single)
        stop = Stop()  # set if cancelled: rolled back, unless committing already
        call = partial(self._link.transaction, stop, work, (self._texts, *args), single)
        return await cast(StoreThread, self._thread).call(stop, call)

    async def _execute(self, stmt: Any) -> int:
        """One statement in its own transaction; its row count."""
        return await self._run(_rowcount, stmt, single=True)

    async def _announce(self) -> None:
        """Make this worker's own lease exist before its first claim names it as holder
        (once: claims arriving together wait for the first to do it)."""
        if self._announced:
            return
        async with self._announcing:
            if not self._announced:
                await self.leases.start()
                self._announced = True

    async def claim_event(
        self,
        platform: str,
        event_id: str,
        *,
        settled: bool = True,
        request: str | None = None,
        conversation: str | None = None,
        sent_at: datetime | None = None,
        received: bool = False,
    ) -> bool:
        """True the first time ``event_id`` arrives, or when the claim it had was left
        unfinished by a worker that is gone, or (not ``received``) when this worker received
        it and now takes it on.

        ``settled=False`` claims it "answering" until ``settle_event`` says how it ended.
        ``received=True`` claims it "received": on arrival, before the platform is told it
        arrived; its handler takes it on with a second claim."""
        if not settled or received:
            await self._announce()
        state = "received" if received else "answered" if settled else "answering"
        params = self._claim_params(EventClaim(platform, event_id, request, conversation, sent_at))
        params["e_state"] = state
        return await self._claim(params, received)

    def _claim_params(self, claim: EventClaim) -> dict[str, Any]:
        """``claim``'s parameters, claimed "answering" by this worker."""
        sent_at = claim.sent_at
        return _event(
            (claim.platform, claim.event_id),
            e_state="answering",
            e_holder=self.leases.holder,
            e_request=claim.request,
            e_conversation=claim.conversation,
            e_sent_at=micros(sent_at) if sent_at is not None else None,
        )

    async def _claim(self, params: dict[str, Any], received: bool = False) -> bool:
        if self._links is not None:
            return await turns.pg_claim(self._links, self._texts, params, received)
        return await self._hot(turns.claim, params, received, single=True)

    def claims_at_once(self, key: ConversationKey, *, spender: bool) -> bool:
        """SQLite: always (one transaction on the store's thread). PostgreSQL: when this
        worker knows the conversation's facts (its lease then taken by the statement that
        stores the question), no turn of it holds or takes its lease, and no budget is read
        (that takes the lease on its own first)."""
        if self._links is None:
            return True
        name = str(key)
        return not spender and name in self._known and not self.leases.busy(name)

    async def claim_turn(
        self,
        key: ConversationKey,
        claim: EventClaim,
        *,
        spender: str | None = None,
        plan: Planner,
        held: object | None = None,
    ) -> TurnFacts | None:
        """SQLite: one transaction. PostgreSQL: one statement when the lease is free (the
        claim made with the lease taken); else the event is claimed on its own and the turn
        waits (``open_turn``)."""
        await self._announce()
        params = self._claim_params(claim)
        if self._links is None:
            holder = self.leases.holder
            opened = await self._hot(turns.claim_and_open, key, spender, plan, holder, params)
            if isinstance(opened, Exception):
                raise opened
            return opened
        later = held if isinstance(held, _Later) and not held.taken else None
        if later is None or spender is not None or self.leases.busy(later.name):
            await self._claimed_alone(params)
            return None
        return await self._claim_take_and_ask(key, later, plan, params)

    async def _claimed_alone(self, params: dict[str, Any]) -> None:
        """The event claimed on its own; ``Redelivered`` if it is not this worker's."""
        if not await self._claim(params):
            raise Redelivered(params["e_event"])

    async def _claim_take_and_ask(
        self, key: ConversationKey, later: _Later, planner: Planner, claim: dict[str, Any]
    ) -> TurnFacts | None:
        """PostgreSQL: ``_take_and_ask``'s first try with the event claimed by the same
        statement; None (the event claimed on its own) when the lease was not free."""
        assert self._links is not None
        facts, name = later.facts, later.name
        try:
            plan = planner(facts)
        except Exception:
            await self._claimed_alone(claim)  # refused: said with the event claimed
            raise
        params = turns.ask_params(facts, plan, self.leases.holder)
        params.update(_conversation(key), **later.waiting, **claim, e_now=now_micros())
        await self.leases.reserve(name)
        taking = self._links.fetch(
            self._texts.claim_ask_taking, params | self.leases.taking_params(name)
        )
        found = await self._taking(later, taking)
        if not found:
            await self._claimed_alone(claim)
            return None
        self._taken(later)  # given back when the turn ends, also by a redelivery
        if found[0][2] is None:
            raise Redelivered(claim["e_event"])
        asked, again = turns.taken_and_asked(found, facts, plan)
        self._leased[asked.state.id] = name
        if again:  # the claim is made: only this read is tried again, never the claim
            read = partial(turns.pg_again, self._links, self._texts, key, planner, asked, plan)
            asked = await retrying(read, patience=self.patience)
        self._keep(name, key.channel_key, asked)
        return asked

    async def _count(self, sql: Any, params: dict[str, Any]) -> int:
        """One statement of a turn that commits itself; its row count."""
        if self._links is not None:
            return await self._links.count(sql, params)
        return await self._hot(turns.count, sql, params, single=True)

    async def settle_event(
        self, platform: str, event_id: str, state: str, *, delivery: str | None = None
    ) -> bool:
        """Only while this worker holds the claim: once another took it over, it is theirs."""
        params = _event((platform, event_id), e_holder=self.leases.holder, e_state=state)
        shown = delivery is not None
        if shown:
            params["e_delivery"] = delivery
        lease = self._settling.pop((platform, event_id), None)
        if lease is None or self._links is None:
            texts = self._texts
            return bool(await self._count(texts.settle_shown if shown else texts.settle, params))
        params.update(l_name=lease, l_holder=self.leases.holder)
        releasing = self._texts.settle_shown_releasing if shown else self._texts.settle_releasing
        found = await self._links.fetch(releasing, params)
        self.leases.given_back.add(lease)
        return bool(found[0][0])

    async def record_delivery(self, platform: str, event_id: str, delivery: str) -> None:
        params = _event((platform, event_id), e_holder=self.leases.holder, e_delivery=delivery)
        await self._count(self._texts.delivery, params)

    async def orphans(self, platforms: Sequence[str], limit: int) -> list[Orphan]:
        """Take over claims left unfinished by workers that are gone (see ``Store.orphans``)."""
        await self._announce()
        stuck = (
            select(ProcessedEventRow.id)
            .where(
                ProcessedEventRow.platform.in_(platforms),
                ProcessedEventRow.state.in_(RESUMABLE),
                ProcessedEventRow.request.is_not(None),
                ~_alive(),
            )
            .order_by(ProcessedEventRow.id)
            .limit(limit)
        )
        if self._dialect == "postgresql":
            stuck = stuck.with_for_update(skip_locked=True)
        taking = (
            update(ProcessedEventRow)
            .where(ProcessedEventRow.id.in_(stuck.scalar_subquery()), ~_alive())
            .values(holder=self.leases.holder)
            .returning(
                ProcessedEventRow.platform,
                ProcessedEventRow.event_id,
                ProcessedEventRow.state,
                ProcessedEventRow.request,
                ProcessedEventRow.delivery,
                ProcessedEventRow.question_id,
                ProcessedEventRow.answer_id,
            )
        )
        return await self._run(_orphans, taking)

    async def prune_events(self, older_than_seconds: float) -> int:
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        return await self._execute(
            delete(ProcessedEventRow).where(ProcessedEventRow.created_at < cutoff)
        )

    def _conversation(self, conn: Connection, key: ConversationKey) -> ConversationState:
        params = _conversation(key)
        row = conn.execute(prepared.CONVERSATION, params).one_or_none()
        if row is None:
            conn.execute(self._statements.new_conversation, params)
            row = conn.execute(prepared.CONVERSATION, params).one()
        return ConversationState(row[0], row[1], row[2], row[3])

    async def conversation(self, key: ConversationKey) -> ConversationState:
        return await self._run(self._conversation, key)

    async def open_turn(
        self,
        key: ConversationKey,
        *,
        spender: str | None = None,
        plan: Planner | None = None,
        held: object | None = None,
    ) -> TurnFacts:
        holder = self.leases.holder
        if self._links is None:
            return await self._hot(turns.open_turn, key, spender, plan, holder)
        name = str(key)
        later = held if isinstance(held, _Later) and not held.taken else None
        # A spender's budget is read once the lease is held (a turn of the conversation
        # finishing meanwhile has spent): that turn takes the lease on its own first.
        if later is not None and plan is not None and spender is None:
            facts = await self._take_and_ask(key, later, plan)
        else:
            if later is not None:  # no question, or a budget: the lease is taken on its own
                await self._take_later(later)
            known = self._ahead.pop(name, None) if later is None else None
            facts = await turns.pg_open_turn(
                self._links, self._texts, key, spender, plan, holder, known
            )
            if known is not None or later is not None:  # given back when the turn ends
                self._leased[facts.state.id] = name
        self._keep(name, key.channel_key, facts)
        return facts

    async def _take_and_ask(
        self, key: ConversationKey, later: _Later, planner: Planner
    ) -> TurnFacts:
        """PostgreSQL, the facts ``later`` knows: the turn planned with them, its lease taken
        with its question stored and the history before it read (one statement, tried again
        after a wait while another holds the lease or should go first); the turn planned and
        read again if the facts were no longer true."""
        assert self._links is not None
        facts, name = later.facts, later.name
        plan = planner(facts)
        params = turns.ask_params(facts, plan, self.leases.holder)
        params.update(_conversation(key), **later.waiting)
        sql = self._texts.ask_taking(plan.question.event is not None)
        wait = FIRST_WAIT
        while True:
            await self.leases.reserve(name)  # this worker's holder first
            taking = self._links.fetch(sql, params | self.leases.taking_params(name))
            found = await self._taking(later, taking)
            if found:
                break
            await asyncio.sleep(wait)
            wait = min(LONGEST_WAIT, wait * 2)
        self._taken(later)
        asked, again = turns.taken_and_asked(found, facts, plan)
        self._leased[asked.state.id] = name  # given back when the turn ends
        if again:
            return await turns.pg_again(self._links, self._texts, key, planner, asked, plan)
        return asked

    async def _take_later(self, later: _Later) -> None:
        """``later``'s lease taken on its own (waiting as ``Leases.hold`` does)."""
        wait = FIRST_WAIT
        unless, name = prepared.EARLIER_WAITING, later.name
        while True:
            await self.leases.reserve(name)
            taking = self.leases.try_take(name, unless=unless, params=later.waiting)
            if await self._taking(later, taking):
                break
            await asyncio.sleep(wait)
            wait = min(LONGEST_WAIT, wait * 2)
        self._taken(later)

    async def _taking(self, later: _Later, taking: Awaitable[T]) -> T:
        """``taking``, a statement that takes ``later``'s lease (``reserve``d) when it can;
        the reservation is dropped if it did not. Cut short (cancelled, failed), it may have
        taken it all the same: it is given back at once, not left to this worker's heartbeat
        to renew for good."""
        try:
            found = await taking
        except BaseException:
            await self.leases.let_go(later.name)  # reserved: no other turn of it holds it
            raise
        if not found:
            self.leases.unreserve(later.name)
        return found

    def _taken(self, later: _Later) -> None:
        later.taken = True
        self.leases.taken(later.name)

    def _keep(self, name: str, channel: ChannelKey, facts: TurnFacts) -> None:
        """Keep ``facts`` (without what only their turn needs) as the newest known."""
        bare = replace(facts, spent_usd=None, question_id=None, history=())
        self._known[name] = (channel, bare)
        self._known.move_to_end(name)
        if len(self._known) > FACTS_KEPT:
            self._known.popitem(last=False)

    def _drop_known(self, channel: ChannelKey) -> None:
        """This worker changed ``channel``'s settings or memory: its facts are read anew."""
        for name in [n for n, (c, _) in self._known.items() if c == channel]:
            del self._known[name]

    async def finish_turn(
        self,
        conversation_id: int,
        content: str,
        token_count: int,
        model: str,
        channel: ChannelKey,
        user_id: str,
        usage: Sequence[UsageEntry],
        *,
        sent_at: datetime | None = None,
        question_id: int | None = None,
        event: tuple[str, str] | None = None,
    ) -> int:
        answer = NewTurn(
            "assistant", content, token_count, model=model, sent_at=sent_at, event=event
        )
        rows = _usage_rows(channel, user_id, usage)
        turn = turns.Finish(conversation_id, question_id, rows, self.leases.holder)
        if self._links is None:
            return await self._hot(turns.finish, answer, turn)
        lease = self._leased.pop(conversation_id, None)
        if event is not None:  # shown, then settled: the lease goes with the settling
            message_id = await turns.pg_finish(self._links, self._texts, answer, turn)
            if lease is not None:
                self._settling[event] = lease
            return message_id
        message_id = await turns.pg_finish(self._links, self._texts, answer, turn, lease)
        if lease is not None:
            self.leases.given_back.add(lease)
        return message_id

    async def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        token_count: int,
        *,
        author_id: str = "",
        author_name: str = "",
        status: str = "complete",
        model: str | None = None,
        sent_at: datetime | None = None,
        event: tuple[str, str] | None = None,
    ) -> int:
        turn = NewTurn(
            cast(Role, role),
            content,
            token_count,
            author_id=author_id,
            author_name=author_name,
            status=status,
            model=model,
            sent_at=sent_at,
            event=event,
        )
        return await self._run(_add_message, conversation_id, turn)

    async def set_message_status(self, message_id: int, status: str) -> None:
        params = {"m_id": message_id, "m_status": status}
        await self._count(self._texts.message_status, params)

    async def recent_messages(
        self,
        conversation_id: int,
        after_id: int,
        before_id: int,
        limit: int,
        *,
        through: bool = False,
        tokens: int | None = None,
    ) -> list[StoredMessage]:
        sql = self._texts.recent(through=through, fitting=tokens is not None)
        params = prepared.recent_params(conversation_id, after_id, before_id, limit, tokens)
        if self._links is not None:
            return turns.pg_history(await self._links.fetch(sql, params))
        return _history(await self._hot(turns.fitting, params, through, single=True))

    async def set_summary(
        self, conversation_id: int, summary: str, summary_tokens: int, context_start: int
    ) -> None:
        for name, (channel, facts) in list(self._known.items()):
            if facts.state.id == conversation_id:
                state = ConversationState(conversation_id, summary, summary_tokens, context_start)
                self._known[name] = (channel, replace(facts, state=state))
        await self._execute(
            update(ConversationRow)
            .where(ConversationRow.id == conversation_id)
            .values(summary=summary, summary_tokens=summary_tokens, context_start=context_start)
        )

    def conversation_lock(
        self,
        name: str,
        *,
        sent_at: datetime | None = None,
        key: ConversationKey | None = None,
    ) -> AbstractAsyncContextManager[object | None]:
        """The lease on ``name`` (PostgreSQL, several workers): see ``_lease_held``. SQLite serves
        a single worker: the service's in-process lock is enough there (nothing is held)."""
        if self._dialect != "postgresql":
            return _UNLOCKED
        return self._lease_held(name, sent_at=sent_at, key=key)

    @asynccontextmanager
    async def _lease_held(
        self,
        name: str,
        *,
        sent_at: datetime | None = None,
        key: ConversationKey | None = None,
    ) -> AsyncIterator[object | None]:
        """The lease on ``name`` (PostgreSQL): held without a connection, renewed by this
        worker's heartbeat, expired when it dies.

        For a turn (``sent_at`` and the conversation's ``key`` given), the lease is taken
        in the statement that reads the turn's facts (``open_turn`` uses them), and given
        back by the statement that finishes the turn (no event) or settles its event. When
        this worker knows the facts already, it is taken later, by the statement that stores
        the turn's question (``open_turn``, given what this yields)."""
        if sent_at is None:
            async with self.leases.hold(name):
                yield None
            return
        waiting: dict[str, Any] = {"w_conversation": name, "w_sent_at": micros(sent_at)}
        known = self._known.get(name) if key is not None else None
        if known is not None:  # the lease is taken by the turn's first statement
            later = _Later(name, known[1], waiting)
            try:
                yield later
            finally:
                if later.taken:
                    self._forget(name)
                    await self.leases.let_go(name)
            return
        also = None
        if key is not None and self._links is not None:  # its turn's facts read with it
            waiting.update(_conversation(key))
            also = self._statements.turn_facts
        unless = prepared.EARLIER_WAITING
        async with self.leases.hold(name, unless=unless, params=waiting, also=also):
            row = self.leases.read.pop(name, None)
            if row is not None and row[0] is not None:
                self._ahead[name] = turns.facts_of(row)
            try:
                yield None
            finally:
                self._forget(name)

    def _forget(self, name: str) -> None:
        """The lease on ``name`` ends: nothing read with it or to give it back with is kept."""
        self._ahead.pop(name, None)
        for conversation in [k for k, lease in self._leased.items() if lease == name]:
            del self._leased[conversation]
        for claimed in [k for k, lease in self._settling.items() if lease == name]:
            del self._settling[claimed]

    async def reset_conversation(self, key: ConversationKey) -> int:
        self._known.pop(str(key), None)
        state = await self.conversation(key)
        return await self._run(_reset, state.id)

    def _channel_where(self, channel: ChannelKey) -> tuple[Any, ...]:
        return (
            ChannelSettingsRow.platform == channel.platform,
            ChannelSettingsRow.workspace == channel.workspace,
            ChannelSettingsRow.channel == channel.channel,
        )

    def _overrides(self, conn: Connection, channel: ChannelKey) -> ChannelOverrides:
        row = conn.execute(prepared.OVERRIDES, _channel(channel)).one_or_none()
        return ChannelOverrides() if row is None else ChannelOverrides(*row)

    async def channel_overrides(self, channel: ChannelKey) -> ChannelOverrides:
        return await self._run(self._overrides, channel, single=True)

    async def save_channel_overrides(
        self, channel: ChannelKey, overrides: ChannelOverrides
    ) -> None:
        values = {
            "system_prompt": overrides.system_prompt,
            "model": overrides.model,
            "temperature": overrides.temperature,
            "max_output_tokens": overrides.max_output_tokens,
            "json_mode": overrides.json_mode,
        }
        stmt = (
            _insert(self._dialect, ChannelSettingsRow)
            .values(
                platform=channel.platform,
                workspace=channel.workspace,
                channel=channel.channel,
                **values,
            )
            .on_conflict_do_update(index_elements=["platform", "workspace", "channel"], set_=values)
        )
        self._drop_known(channel)
        await self._execute(stmt)

    async def record_usage(
        self, channel: ChannelKey, user_id: str, usage: Sequence[UsageEntry]
    ) -> None:
        if usage:
            await self._run(_record_usage, _usage_rows(channel, user_id, usage), single=True)

    async def _totals(self, *where: Any) -> UsageTotals:
        return await self._run(_sum, where, single=True)

    async def channel_usage(self, channel: ChannelKey) -> UsageTotals:
        return await self._totals(
            UsageRow.platform == channel.platform,
            UsageRow.workspace == channel.workspace,
            UsageRow.channel == channel.channel,
        )

    async def user_usage(self, platform: str, user_id: str) -> UsageTotals:
        return await self._totals(UsageRow.platform == platform, UsageRow.user_id == user_id)

    # --- channel memory -------------------------------------------------------------------

    def _memory_where(self, channel: ChannelKey) -> tuple[Any, ...]:
        return (
            ChannelMemoryRow.platform == channel.platform,
            ChannelMemoryRow.workspace == channel.workspace,
            ChannelMemoryRow.channel == channel.channel,
        )

    def _memory(self, conn: Connection, channel: ChannelKey) -> list[MemoryFact]:
        rows = conn.execute(prepared.MEMORY, _channel(channel)).all()
        return [MemoryFact(int(r[0]), str(r[1])) for r in rows]

    async def channel_memory(self, channel: ChannelKey) -> list[MemoryFact]:
        return await self._run(self._memory, channel, single=True)

    async def add_memory(self, channel: ChannelKey, text: str, *, author_id: str = "") -> int:
        stmt = (
            insert(ChannelMemoryRow)
            .values(
                platform=channel.platform,
                workspace=channel.workspace,
                channel=channel.channel,
                text=text,
                author_id=author_id[:64],
            )
            .returning(ChannelMemoryRow.id)
        )
        self._drop_known(channel)
        return int(await self._run(_scalar, stmt, single=True))

    async def remove_memory(self, channel: ChannelKey, fact_id: int) -> bool:
        stmt = delete(ChannelMemoryRow).where(
            ChannelMemoryRow.id == fact_id, *self._memory_where(channel)
        )
        self._drop_known(channel)
        return bool(await self._execute(stmt))

    # --- feedback on answers --------------------------------------------------------------

    async def record_feedback(
        self, channel: ChannelKey, message_id: str, user_id: str, helpful: bool
    ) -> None:
        stmt = (
            _insert(self._dialect, FeedbackRow)
            .values(
                platform=channel.platform,
                workspace=channel.workspace,
                channel=channel.channel,
                message_id=message_id[:64],
                user_id=user_id[:64],
                helpful=helpful,
            )
            .on_conflict_do_update(
                index_elements=["platform", "workspace", "channel", "message_id", "user_id"],
                set_={"helpful": helpful, "created_at": func.now()},
            )
        )
        await self._execute(stmt)

    async def channel_feedback(self, channel: ChannelKey) -> tuple[int, int]:
        stmt = select(
            func.count(FeedbackRow.id).filter(FeedbackRow.helpful.is_(True)),
            func.count(FeedbackRow.id).filter(FeedbackRow.helpful.is_(False)),
        ).where(
            FeedbackRow.platform == channel.platform,
            FeedbackRow.workspace == channel.workspace,
            FeedbackRow.channel == channel.channel,
        )
        row = (await self._run(_rows, stmt, single=True))[0]
        return int(row[0]), int(row[1])


def _over_alchemy(conn: Connection, work: Callable[..., T], *args: Any) -> T:
    return work(AlchemyLink(conn), *args)


def _retried(cls: type[SqlStore]) -> type[SqlStore]:
    """Every public store call, tried again while the database is unreachable."""
    for name, method in list(vars(cls).items()):
        if name.startswith("_") or name in NOT_RETRIED or not inspect.iscoroutinefunction(method):
            continue
        setattr(cls, name, _retry(method))
    return cls


# Closing is not worth waiting for; a lease is taken by its own loop (``Leases.hold``).
NOT_RETRIED = frozenset({"close", "conversation_lock"})


def _retry(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def retried(self: SqlStore, *args: Any, **kwargs: Any) -> Any:
        # ``retrying`` inlined: the first try is every call's, the wrapper made only after
        # it failed.
        since = asyncio.get_running_loop().time()
        try:
            return await method(self, *args, **kwargs)
        except Exception as exc:
            call = partial(method, self, *args, **kwargs)
            return await again(call, exc, since, self.patience)

    return retried


_retried(SqlStore)
