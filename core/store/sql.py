"""The Store port on SQLAlchemy 2 async: SQLite (aiosqlite) by default, PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    String,
    and_,
    delete,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from core.errors import ClaimLost
from core.messages import ChannelKey, ConversationKey
from core.ports import (
    ChannelOverrides,
    ConversationState,
    MemoryFact,
    Orphan,
    Planner,
    Role,
    StoredMessage,
    TurnFacts,
    TurnPlan,
    UsageEntry,
    UsageTotals,
)
from core.store.leases import LEASE_SECONDS, Leases, now_micros
from core.store.models import (
    ChannelMemoryRow,
    ChannelSettingsRow,
    ConversationRow,
    FeedbackRow,
    LeaseRow,
    MessageRow,
    ProcessedEventRow,
    UsageRow,
)
from core.store.retry import PATIENCE, retrying

# Claims still in progress: a redelivery may take one over when its holder is gone.
UNSETTLED = ("received", "answering")
# Claims a sweeper finishes when their holder is gone: still being answered, or answered and
# stored but maybe not shown.
RESUMABLE = ("received", "answering", "stored")


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

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    # Connections are recycled rather than pinged: a ping is one more round trip per query.
    kwargs.setdefault("pool_recycle", 1800)
    # Thousands of answers in flight share the pool: a short query waiting for a connection
    # is queueing, not failing.
    kwargs.setdefault("pool_timeout", 600)
    return create_async_engine(url, **kwargs)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def micros(moment: datetime | None) -> int:
    """``moment`` (now when None; UTC when naive) in microseconds since 1970, the unit of
    ``sent_at``."""
    moment = moment or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // MICROSECOND


def _insert(dialect: str, table: Any) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _beyond(
    conversation_id: int, message_id: int, *, later: bool, inclusive: bool = False
) -> ColumnElement[bool]:
    """Turns after (``later``) or before turn ``message_id`` in conversation order, that is
    by (sent_at, id); no bound if ``message_id`` is no turn of the conversation."""
    sent_at = (
        select(MessageRow.sent_at)
        .where(MessageRow.id == message_id, MessageRow.conversation_id == conversation_id)
        .scalar_subquery()
    )
    if later:
        tie = MessageRow.id >= message_id if inclusive else MessageRow.id > message_id
        ordered = or_(MessageRow.sent_at > sent_at, and_(MessageRow.sent_at == sent_at, tie))
    else:
        tie = MessageRow.id <= message_id if inclusive else MessageRow.id < message_id
        ordered = or_(MessageRow.sent_at < sent_at, and_(MessageRow.sent_at == sent_at, tie))
    return or_(sent_at.is_(None), ordered)


def _event(platform: str, event_id: str) -> Any:
    return update(ProcessedEventRow).where(
        ProcessedEventRow.platform == platform, ProcessedEventRow.event_id == event_id
    )


def _alive() -> Any:
    """The claim's holder still holds its worker lease."""
    return (
        select(LeaseRow.name)
        .where(
            LeaseRow.name == literal("worker:", String) + ProcessedEventRow.holder,
            LeaseRow.until >= now_micros(),
        )
        .exists()
    )


async def _orphan(session: AsyncSession, row: Any) -> Orphan:
    """A claim taken over: its pending question leaves the context (it is asked again), or
    its stored answer is read to be shown."""
    platform, event_id, state, request, delivery, question_id, answer_id = row
    answer = None
    if state == "stored" and answer_id is not None:
        stmt = select(MessageRow.content).where(MessageRow.id == answer_id)
        answer = (await session.execute(stmt)).scalar_one_or_none()
    if answer is None and question_id is not None:
        await session.execute(
            update(MessageRow)
            .where(MessageRow.id == question_id, MessageRow.status == "pending")
            .values(status="failed")
        )
    return Orphan(platform, event_id, request, delivery, answer)


def _earlier_waiting(conversation: str, sent_at: datetime | None) -> Any:
    """A question sent before ``sent_at`` is waiting for ``conversation`` (claimed by a live
    worker, not yet begun): it goes first."""
    if sent_at is None:
        return None
    return (
        select(ProcessedEventRow.id)
        .where(
            ProcessedEventRow.conversation == conversation,
            ProcessedEventRow.state == "answering",
            ProcessedEventRow.question_id.is_(None),
            ProcessedEventRow.sent_at < micros(sent_at),
            _alive(),
        )
        .exists()
    )


def _take_over(
    platform: str, event_id: str, values: dict[str, Any], states: Sequence[str] = UNSETTLED
) -> Any:
    """Claim an event in one of ``states`` whose holder is a worker no longer alive (never
    one this worker or another live one is still answering: that would answer it twice)."""
    return (
        _event(platform, event_id)
        .where(ProcessedEventRow.state.in_(states), ~_alive())
        .values(**values)
    )


def _take_received(platform: str, event_id: str, holder: str, values: dict[str, Any]) -> Any:
    """Take on an event this worker received (claimed before acknowledging it) and has not
    taken on yet: its handler now answers it, or settles it."""
    return (
        _event(platform, event_id)
        .where(ProcessedEventRow.state == "received", ProcessedEventRow.holder == holder)
        .values(**values)
    )


def _recent(
    conversation_id: int, after_id: int, before_id: int, limit: int, *, through: bool = False
) -> Any:
    """Complete turns between two turns, newest first (see ``Store.recent_messages``)."""
    return (
        select(
            MessageRow.id,
            MessageRow.role,
            MessageRow.content,
            MessageRow.token_count,
            MessageRow.author_name,
            MessageRow.sent_at,
        )
        .where(
            MessageRow.conversation_id == conversation_id,
            _beyond(conversation_id, after_id, later=True),
            _beyond(conversation_id, before_id, later=False, inclusive=through),
            MessageRow.status == "complete",
        )
        .order_by(MessageRow.sent_at.desc(), MessageRow.id.desc())
        .limit(limit)
    )


def _fitting(recent: Any, tokens: int) -> Any:
    """Of ``recent`` (turns newest first), those whose running token sum fits ``tokens``,
    and the first that does not: the whole context read in one statement."""
    newest_first = (recent.c.sent_at.desc(), recent.c.id.desc())
    summed = select(
        *recent.c, func.sum(recent.c.token_count).over(order_by=newest_first).label("running")
    ).subquery()
    return (
        select(summed.c.id, summed.c.role, summed.c.content, summed.c.token_count)
        .add_columns(summed.c.author_name)
        .where(summed.c.running - summed.c.token_count <= tokens)
        .order_by(summed.c.sent_at.desc(), summed.c.id.desc())
    )


async def _sum(session: AsyncSession, where: Sequence[Any]) -> UsageTotals:
    """Sums over the ledger entries matching ``where``."""
    stmt = select(
        func.coalesce(func.sum(UsageRow.input_tokens), 0),
        func.coalesce(func.sum(UsageRow.output_tokens), 0),
        func.coalesce(func.sum(UsageRow.cost_usd), 0.0),
        func.count(UsageRow.id),
        func.count(UsageRow.id).filter(UsageRow.estimated.is_(True)),
        func.count(UsageRow.id).filter(UsageRow.cost_usd.is_(None)),
    ).where(*where)
    row = (await session.execute(stmt)).one()
    return UsageTotals(
        int(row[0]), int(row[1]), float(row[2] or 0.0), int(row[3]), int(row[4]), int(row[5])
    )


class SqlStore:
    """Implements ``core.ports.Store``; each method is one short transaction, tried again while
    the database is unreachable (``core.store.retry``) for up to ``patience`` seconds."""

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
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # Turns of a conversation run one at a time across workers under its lease; no
        # connection is held while the model answers.
        self.leases = Leases(engine, seconds=lease_seconds)
        self._announced = False
        self._announcing = asyncio.Lock()

    async def close(self) -> None:
        await self.leases.close()
        await self.engine.dispose()

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
        holder = self.leases.holder
        state = "received" if received else "answered" if settled else "answering"
        values: dict[str, Any] = {"holder": holder, "state": state}
        given: dict[str, Any] = {"request": request, "conversation": conversation}
        given["sent_at"] = micros(sent_at) if sent_at is not None else None
        values.update({name: value for name, value in given.items() if value is not None})
        stmt = (
            _insert(self._dialect, ProcessedEventRow)
            .values(platform=platform, event_id=event_id, **values)
            .on_conflict_do_nothing(index_elements=["platform", "event_id"])
        )
        async with self._sessions.begin() as session:
            result = await session.execute(stmt)
            if cast(CursorResult[Any], result).rowcount:
                return True
            if not received:
                own = await session.execute(_take_received(platform, event_id, holder, values))
                if cast(CursorResult[Any], own).rowcount:
                    return True
            # Received anew, an answer a dead worker began is left to the sweeper, which
            # takes down what it showed (``core.recovery``).
            states = ("received",) if received else UNSETTLED
            taken = await session.execute(_take_over(platform, event_id, values, states))
        return bool(cast(CursorResult[Any], taken).rowcount)

    async def settle_event(self, platform: str, event_id: str, state: str) -> bool:
        """Only while this worker holds the claim: once another took it over, it is theirs."""
        async with self._sessions.begin() as session:
            result = await session.execute(self._mine(platform, event_id).values(state=state))
        return bool(cast(CursorResult[Any], result).rowcount)

    async def record_delivery(self, platform: str, event_id: str, delivery: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(self._mine(platform, event_id).values(delivery=delivery))

    async def _claimed(self, session: AsyncSession, event: tuple[str, str], **values: Any) -> None:
        """Update this worker's claim of ``event``; ``ClaimLost`` (the transaction is rolled
        back) when another worker has taken it over."""
        result = await session.execute(self._mine(*event).values(**values))
        if not cast(CursorResult[Any], result).rowcount:
            raise ClaimLost(f"event {event[1]} on {event[0]} was taken over")

    def _mine(self, platform: str, event_id: str) -> Any:
        return _event(platform, event_id).where(ProcessedEventRow.holder == self.leases.holder)

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
        async with self._sessions.begin() as session:
            taken = (await session.execute(taking)).all()
            return [await _orphan(session, row) for row in taken]

    async def prune_events(self, older_than_seconds: float) -> int:
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        async with self._sessions.begin() as session:
            result = await session.execute(
                delete(ProcessedEventRow).where(ProcessedEventRow.created_at < cutoff)
            )
        return int(cast(CursorResult[Any], result).rowcount or 0)

    async def _conversation(self, session: AsyncSession, key: ConversationKey) -> ConversationRow:
        where = (
            ConversationRow.platform == key.platform,
            ConversationRow.workspace == key.workspace,
            ConversationRow.channel == key.channel,
            ConversationRow.thread == key.thread,
        )
        row = (await session.execute(select(ConversationRow).where(*where))).scalar_one_or_none()
        if row is None:
            await session.execute(
                _insert(self._dialect, ConversationRow)
                .values(
                    platform=key.platform,
                    workspace=key.workspace,
                    channel=key.channel,
                    thread=key.thread,
                    summary="",
                    summary_tokens=0,
                    context_start=0,
                )
                .on_conflict_do_nothing(
                    index_elements=["platform", "workspace", "channel", "thread"]
                )
            )
            row = (await session.execute(select(ConversationRow).where(*where))).scalar_one()
        return row

    async def conversation(self, key: ConversationKey) -> ConversationState:
        async with self._sessions.begin() as session:
            row = await self._conversation(session, key)
            return ConversationState(row.id, row.summary, row.summary_tokens, row.context_start)

    async def open_turn(
        self, key: ConversationKey, *, spender: str | None = None, plan: Planner | None = None
    ) -> TurnFacts:
        async with self._sessions.begin() as session:
            row = await self._conversation(session, key)
            state = ConversationState(row.id, row.summary, row.summary_tokens, row.context_start)
            overrides = await self._overrides(session, key.channel_key)
            memory = await self._memory(session, key.channel_key)
            spent = None
            if spender is not None:
                where = (UsageRow.platform == key.platform, UsageRow.user_id == spender)
                spent = (await _sum(session, where)).cost_usd
            facts = TurnFacts(state, overrides, tuple(fact.text for fact in memory), spent)
            if plan is None:
                return facts
            return await self._begin(session, facts, plan(facts))

    async def _begin(self, session: AsyncSession, facts: TurnFacts, plan: TurnPlan) -> TurnFacts:
        """Store the plan's question and read the history before it (same transaction)."""
        q, state = plan.question, facts.state
        question_id = await self._add_message(
            session,
            state.id,
            q.role,
            q.content,
            q.token_count,
            author_id=q.author_id,
            author_name=q.author_name,
            status=q.status,
            sent_at=q.sent_at,
        )
        if q.event is not None:  # the claim knows its question, to mark it if it dies
            await self._claimed(session, q.event, question_id=question_id)
        recent = _recent(state.id, state.context_start, question_id, plan.history_rows)
        stmt = _fitting(recent.subquery(), plan.history_tokens)
        rows = (await session.execute(stmt)).all()
        history = tuple(StoredMessage(r[0], cast(Role, r[1]), r[2], r[3], r[4]) for r in rows)
        return replace(facts, question_id=question_id, history=history)

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
        async with self._sessions.begin() as session:
            if question_id is not None:
                await session.execute(
                    update(MessageRow).where(MessageRow.id == question_id).values(status="complete")
                )
            message_id = await self._add_message(
                session,
                conversation_id,
                "assistant",
                content,
                token_count,
                model=model,
                sent_at=sent_at,
            )
            if event is not None:  # "answered" once shown (``settle_event``)
                await self._claimed(session, event, state="stored", answer_id=message_id)
            await self._record_usage(session, channel, user_id, usage)
        return message_id

    async def _add_message(
        self,
        session: AsyncSession,
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
    ) -> int:
        stmt = (
            insert(MessageRow)
            .values(
                conversation_id=conversation_id,
                role=role,
                content=content,
                token_count=token_count,
                author_id=author_id,
                author_name=author_name[:100],
                status=status,
                model=model,
                sent_at=micros(sent_at),
            )
            .returning(MessageRow.id)
        )
        return int((await session.execute(stmt)).scalar_one())

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
        async with self._sessions.begin() as session:
            message_id = await self._add_message(
                session,
                conversation_id,
                role,
                content,
                token_count,
                author_id=author_id,
                author_name=author_name,
                status=status,
                model=model,
                sent_at=sent_at,
            )
            if event is not None:  # the claim knows its question, to mark it if it dies
                await session.execute(_event(*event).values(question_id=message_id))
        return message_id

    async def set_message_status(self, message_id: int, status: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(MessageRow).where(MessageRow.id == message_id).values(status=status)
            )

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
        recent = _recent(conversation_id, after_id, before_id, limit, through=through)
        stmt = recent if tokens is None else _fitting(recent.subquery(), tokens)
        async with self._sessions() as session:
            rows = (await session.execute(stmt)).all()
        return [StoredMessage(r[0], cast(Role, r[1]), r[2], r[3], r[4]) for r in rows]

    async def set_summary(
        self, conversation_id: int, summary: str, summary_tokens: int, context_start: int
    ) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(ConversationRow)
                .where(ConversationRow.id == conversation_id)
                .values(summary=summary, summary_tokens=summary_tokens, context_start=context_start)
            )

    @asynccontextmanager
    async def conversation_lock(
        self,
        name: str,
        *,
        sent_at: datetime | None = None,
    ) -> AsyncIterator[None]:
        """The lease on ``name`` (PostgreSQL, several workers): held without a connection,
        renewed by this worker's heartbeat, expired when it dies. SQLite serves a single
        worker: the service's in-process lock is enough there."""
        if self._dialect != "postgresql":
            yield
            return
        async with self.leases.hold(name, unless=_earlier_waiting(name, sent_at)):
            yield

    async def reset_conversation(self, key: ConversationKey) -> int:
        state = await self.conversation(key)
        async with self._sessions.begin() as session:
            result = await session.execute(
                delete(MessageRow).where(MessageRow.conversation_id == state.id)
            )
            await session.execute(
                update(ConversationRow)
                .where(ConversationRow.id == state.id)
                .values(summary="", summary_tokens=0, context_start=0)
            )
        return int(cast(CursorResult[Any], result).rowcount or 0)

    def _channel_where(self, channel: ChannelKey) -> tuple[Any, ...]:
        return (
            ChannelSettingsRow.platform == channel.platform,
            ChannelSettingsRow.workspace == channel.workspace,
            ChannelSettingsRow.channel == channel.channel,
        )

    async def _overrides(self, session: AsyncSession, channel: ChannelKey) -> ChannelOverrides:
        row = (
            await session.execute(select(ChannelSettingsRow).where(*self._channel_where(channel)))
        ).scalar_one_or_none()
        if row is None:
            return ChannelOverrides()
        return ChannelOverrides(
            row.system_prompt, row.model, row.temperature, row.max_output_tokens, row.json_mode
        )

    async def channel_overrides(self, channel: ChannelKey) -> ChannelOverrides:
        async with self._sessions() as session:
            return await self._overrides(session, channel)

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
        async with self._sessions.begin() as session:
            await session.execute(stmt)

    async def _record_usage(
        self,
        session: AsyncSession,
        channel: ChannelKey,
        user_id: str,
        usage: Sequence[UsageEntry],
    ) -> None:
        if not usage:
            return
        rows = [
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
        await session.execute(insert(UsageRow), rows)

    async def record_usage(
        self, channel: ChannelKey, user_id: str, usage: Sequence[UsageEntry]
    ) -> None:
        async with self._sessions.begin() as session:
            await self._record_usage(session, channel, user_id, usage)

    async def _totals(self, *where: Any) -> UsageTotals:
        async with self._sessions() as session:
            return await _sum(session, where)

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

    async def _memory(self, session: AsyncSession, channel: ChannelKey) -> list[MemoryFact]:
        stmt = (
            select(ChannelMemoryRow.id, ChannelMemoryRow.text)
            .where(*self._memory_where(channel))
            .order_by(ChannelMemoryRow.id)
        )
        rows = (await session.execute(stmt)).all()
        return [MemoryFact(int(r[0]), str(r[1])) for r in rows]

    async def channel_memory(self, channel: ChannelKey) -> list[MemoryFact]:
        async with self._sessions() as session:
            return await self._memory(session, channel)

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
        async with self._sessions.begin() as session:
            return int((await session.execute(stmt)).scalar_one())

    async def remove_memory(self, channel: ChannelKey, fact_id: int) -> bool:
        stmt = delete(ChannelMemoryRow).where(
            ChannelMemoryRow.id == fact_id, *self._memory_where(channel)
        )
        async with self._sessions.begin() as session:
            result = await session.execute(stmt)
        return bool(cast(CursorResult[Any], result).rowcount)

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
        async with self._sessions.begin() as session:
            await session.execute(stmt)

    async def channel_feedback(self, channel: ChannelKey) -> tuple[int, int]:
        stmt = select(
            func.count(FeedbackRow.id).filter(FeedbackRow.helpful.is_(True)),
            func.count(FeedbackRow.id).filter(FeedbackRow.helpful.is_(False)),
        ).where(
            FeedbackRow.platform == channel.platform,
            FeedbackRow.workspace == channel.workspace,
            FeedbackRow.channel == channel.channel,
        )
        async with self._sessions() as session:
            row = (await session.execute(stmt)).one()
        return int(row[0]), int(row[1])


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
        return await retrying(partial(method, self, *args, **kwargs), patience=self.patience)

    return retried


_retried(SqlStore)
