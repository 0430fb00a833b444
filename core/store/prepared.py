"""The statements of a turn, built once with bound parameters.

A store call passes values only: SQLAlchemy neither builds the statement again nor works out
its cache key again (building them took most of a turn's CPU in the store), and finds it
compiled in its cache.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    Text,
    and_,
    bindparam,
    cast,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy import delete as _delete
from sqlalchemy import update as _update
from sqlalchemy.dialects import postgresql, sqlite

from core.store.driver import Sql, compile_sql
from core.store.leases import lease_taking
from core.store.models import (
    ChannelMemoryRow,
    ChannelSettingsRow,
    ConversationRow,
    LeaseRow,
    MessageRow,
    ProcessedEventRow,
    UsageRow,
)

# Claims still in progress: a redelivery may take one over when its holder is gone.
UNSETTLED = ("received", "answering")


def alive(now: Any) -> Any:
    """The claim's holder still held its worker lease at ``now`` (microseconds)."""
    return (
        select(LeaseRow.name)
        .where(
            LeaseRow.name == literal("worker:", String) + ProcessedEventRow.holder,
            LeaseRow.until >= now,
        )
        .exists()
    )


def event_update() -> Any:
    """An update of the claim of (``e_platform``, ``e_event``)."""
    return _update(ProcessedEventRow).where(
        ProcessedEventRow.platform == bindparam("e_platform"),
        ProcessedEventRow.event_id == bindparam("e_event"),
    )


CONVERSATION = select(
    ConversationRow.id,
    ConversationRow.summary,
    ConversationRow.summary_tokens,
    ConversationRow.context_start,
).where(
    ConversationRow.platform == bindparam("platform"),
    ConversationRow.workspace == bindparam("workspace"),
    ConversationRow.channel == bindparam("channel"),
    ConversationRow.thread == bindparam("thread"),
)

OVERRIDES = select(
    ChannelSettingsRow.system_prompt,
    ChannelSettingsRow.model,
    ChannelSettingsRow.temperature,
    ChannelSettingsRow.max_output_tokens,
    ChannelSettingsRow.json_mode,
).where(
    ChannelSettingsRow.platform == bindparam("platform"),
    ChannelSettingsRow.workspace == bindparam("workspace"),
    ChannelSettingsRow.channel == bindparam("channel"),
)

MEMORY = (
    select(ChannelMemoryRow.id, ChannelMemoryRow.text)
    .where(
        ChannelMemoryRow.platform == bindparam("platform"),
        ChannelMemoryRow.workspace == bindparam("workspace"),
        ChannelMemoryRow.channel == bindparam("channel"),
    )
    .order_by(ChannelMemoryRow.id)
)

ADD_MESSAGE = (
    insert(MessageRow)
    .values(
        conversation_id=bindparam("m_conversation"),
        role=bindparam("m_role"),
        content=bindparam("m_content"),
        token_count=bindparam("m_tokens"),
        author_id=bindparam("m_author_id"),
        author_name=bindparam("m_author_name"),
        status=bindparam("m_status"),
        model=bindparam("m_model"),
        sent_at=bindparam("m_sent_at"),
    )
    .returning(MessageRow.id)
)

MESSAGE_STATUS = (
    _update(MessageRow)
    .where(MessageRow.id == bindparam("m_id"))
    .values(status=bindparam("m_status"))
)

USAGE = insert(UsageRow)

QUESTION_OF_EVENT = event_update().values(question_id=bindparam("e_message"))

_MINE = ProcessedEventRow.holder == bindparam("e_holder")

# The claim told its question or its stored answer only while this worker (``e_holder``)
# still holds it: no row updated means another worker took it over (``ClaimLost``).
QUESTION_CLAIMED = event_update().where(_MINE).values(question_id=bindparam("e_message"))

ANSWER_CLAIMED = (
    event_update().where(_MINE).values(state="stored", answer_id=bindparam("e_message"))
)

SETTLE = event_update().where(_MINE).values(state=bindparam("e_state"))

# Settled with what the answer showed in the end (``DELIVERY``), in one statement.
SETTLE_SHOWN = SETTLE.values(delivery=bindparam("e_delivery"))

DELIVERY = event_update().where(_MINE).values(delivery=bindparam("e_delivery"))


def _taking() -> Any:
    """A claim update made this worker's (``e_holder``, state ``e_state``), keeping its
    request, conversation and time unless new ones are given."""
    row = ProcessedEventRow
    return event_update().values(
        holder=bindparam("e_holder"),
        state=bindparam("e_state"),
        request=func.coalesce(bindparam("e_request", type_=Text), row.request),
        conversation=func.coalesce(
            bindparam("e_conversation", type_=row.conversation.type), row.conversation
        ),
        sent_at=func.coalesce(bindparam("e_sent_at", type_=row.sent_at.type), row.sent_at),
    )


_DEAD = ~alive(bindparam("e_now"))

# The handler's claim: it takes on an event this worker received (claimed on arrival, before
# acknowledging it) and has not taken on yet, or takes over an unsettled claim whose holder
# is a worker no longer alive (never one a live worker is still answering: that would answer
# it twice).
TAKE_OVER = _taking().where(
    or_(
        and_(ProcessedEventRow.state == "received", _MINE),
        and_(ProcessedEventRow.state.in_(UNSETTLED), _DEAD),
    )
)

# A claim on arrival takes over only what a dead worker received and never took on: an
# answer it began is left to the sweeper, which takes down what it showed.
TAKE_OVER_RECEIVED = _taking().where(ProcessedEventRow.state == "received", _DEAD)


# ``TAKE_OVER`` knowing the claim's question (``e_question``), stored just before it.
TAKE_OVER_ASKED = TAKE_OVER.values(question_id=bindparam("e_question"))

CLAIM_FIELDS = (
    ("platform", "e_platform"),
    ("event_id", "e_event"),
    ("state", "e_state"),
    ("holder", "e_holder"),
    ("request", "e_request"),
    ("conversation", "e_conversation"),
    ("sent_at", "e_sent_at"),
)


def _claim_values() -> dict[str, Any]:
    """A new claim's columns: its parameters (``claim_event``'s)."""
    return {
        column: bindparam(name, type_=ProcessedEventRow.__table__.c[column].type)
        for column, name in CLAIM_FIELDS
    }


def _mine_locked() -> Any:
    """PostgreSQL: the claim of (``e_platform``, ``e_event``) if this worker (``e_holder``)
    still holds it, locked until the statement's end (a take-over waits for it)."""
    return (
        select(ProcessedEventRow.id)
        .where(
            ProcessedEventRow.platform == bindparam("e_platform"),
            ProcessedEventRow.event_id == bindparam("e_event"),
            _MINE,
        )
        .with_for_update()
        .cte("mine")
    )


MESSAGE_FIELDS = (
    ("conversation_id", "m_conversation"),
    ("role", "m_role"),
    ("content", "m_content"),
    ("token_count", "m_tokens"),
    ("author_id", "m_author_id"),
    ("author_name", "m_author_name"),
    ("status", "m_status"),
    ("model", "m_model"),
    ("sent_at", "m_sent_at"),
)


def _add_message_if(mine: Any, message_id: Any = None) -> Any:
    """``ADD_MESSAGE`` only if ``mine`` has a row (the claim is still this worker's, the
    lease taken); with the id ``message_id`` if given."""
    columns = [column for column, _ in MESSAGE_FIELDS]
    values = [
        bindparam(name, type_=MessageRow.__table__.c[column].type)
        for column, name in MESSAGE_FIELDS
    ]
    if message_id is not None:
        columns, values = ["id", *columns], [message_id, *values]
    chosen = select(*values).select_from(mine)
    return insert(MessageRow).from_select(columns, chosen).returning(MessageRow.id)


def _memory_json(name: str) -> Any:
    """The channel's memory, oldest fact first, as a JSON array of texts (or NULL)."""
    where = (
        ChannelMemoryRow.platform == ConversationRow.platform,
        ChannelMemoryRow.workspace == ConversationRow.workspace,
        ChannelMemoryRow.channel == ConversationRow.channel,
    )
    if name == "postgresql":
        ordered = postgresql.aggregate_order_by(ChannelMemoryRow.text, ChannelMemoryRow.id)
        return select(cast(func.json_agg(ordered), Text)).where(*where).scalar_subquery()
    facts = (
        select(ChannelMemoryRow.text)
        .where(*where)
        .order_by(ChannelMemoryRow.id)
        .correlate(ConversationRow)
        .subquery()
    )
    return select(func.json_group_array(facts.c.text)).scalar_subquery()


def _turn_facts(name: str) -> Any:
    """A conversation, its channel's settings and memory: one statement."""
    settings = ChannelSettingsRow
    return (
        select(
            ConversationRow.id,
            ConversationRow.summary,
            ConversationRow.summary_tokens,
            ConversationRow.context_start,
            settings.system_prompt,
            settings.model,
            settings.temperature,
            settings.max_output_tokens,
            settings.json_mode,
            _memory_json(name),
        )
        .outerjoin(
            settings,
            and_(
                settings.platform == ConversationRow.platform,
                settings.workspace == ConversationRow.workspace,
                settings.channel == ConversationRow.channel,
            ),
        )
        .where(
            ConversationRow.platform == bindparam("platform"),
            ConversationRow.workspace == bindparam("workspace"),
            ConversationRow.channel == bindparam("channel"),
            ConversationRow.thread == bindparam("thread"),
        )
    )


USAGE_FIELDS = (
    "platform",
    "workspace",
    "channel",
    "user_id",
    "model",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "estimated",
)


def _giving_back() -> Any:
    """PostgreSQL: lease ``l_name`` given back by ``l_holder``, as a CTE of a turn's statement."""
    return (
        _delete(LeaseRow)
        .where(LeaseRow.name == bindparam("l_name"), LeaseRow.holder == bindparam("l_holder"))
        .returning(LeaseRow.name)
        .cte("given_back")
    )


@lru_cache(maxsize=64)
def finish_in_one(question: bool, event: bool, usage: int, release: bool = False) -> Any:
    """PostgreSQL: an answer stored (``ADD_MESSAGE``'s parameters), its question
    ``f_question`` made complete, its claim (``e_platform``, ``e_event``) told, and ``usage``
    ledger entries (``u0_platform``, ...) recorded: one statement, one round trip.
    ``release``: the conversation's lease given back too (``l_name``, ``l_holder``)."""
    stmt = _finish(question, event, usage)
    return stmt.add_cte(_giving_back()) if release else stmt


# A claim settled (``SETTLE``) and the lease of its conversation given back (``l_name``,
# ``l_holder``) in one statement (PostgreSQL); its one row counts the claims settled.
def _settle_releasing(settle: Any = SETTLE) -> Any:
    settled = settle.returning(ProcessedEventRow.id).cte("settled")
    return select(func.count()).select_from(settled).add_cte(_giving_back())


def _finish(question: bool, event: bool, usage: int) -> Any:
    if not event:
        return _finish_unclaimed(question, usage)
    # The claim (``e_holder``'s) is checked first: when another worker took it over, nothing
    # is stored and the statement returns no row (``ClaimLost``).
    mine = _mine_locked()
    answer = _add_message_if(mine).cte("answer")
    ours = select(mine.c.id)
    ctes = []
    if question:
        complete = (
            _update(MessageRow)
            .where(MessageRow.id == bindparam("f_question"), ours.exists())
            .values(status="complete")
            .returning(MessageRow.id)
        )
        ctes.append(complete.cte("question"))
    stored = (
        _update(ProcessedEventRow)
        .where(ProcessedEventRow.id.in_(ours.scalar_subquery()))
        .values(state="stored", answer_id=select(answer.c.id).scalar_subquery())
    )
    ctes.append(stored.returning(ProcessedEventRow.id).cte("claim"))
    for i in range(usage):
        fields = USAGE_FIELDS
        values = [
            bindparam(f"u{i}_{name}", type_=UsageRow.__table__.c[name].type) for name in fields
        ]
        entry = insert(UsageRow).from_select(list(fields), select(*values).select_from(mine))
        ctes.append(entry.returning(UsageRow.id).cte(f"usage{i}"))
    return select(answer.c.id).add_cte(mine, *ctes)


def _finish_unclaimed(question: bool, usage: int) -> Any:
    """``finish_in_one`` for an answer to no claimed event."""
    answer = ADD_MESSAGE.cte("answer")
    ctes = []
    if question:
        complete = (
            _update(MessageRow)
            .where(MessageRow.id == bindparam("f_question"))
            .values(status="complete")
            .returning(MessageRow.id)
        )
        ctes.append(complete.cte("question"))
    for i in range(usage):
        values: dict[str, Any] = {name: bindparam(f"u{i}_{name}") for name in USAGE_FIELDS}
        entry = insert(UsageRow).values(**values).returning(UsageRow.id)
        ctes.append(entry.cte(f"usage{i}"))
    return select(answer.c.id).add_cte(*ctes)


# A question sent before ``w_sent_at`` is waiting for conversation ``w_conversation``
# (claimed by a live worker at ``l_now``, received or answering, not yet begun): it goes first.
EARLIER_WAITING = (
    select(ProcessedEventRow.id)
    .where(
        ProcessedEventRow.conversation == bindparam("w_conversation"),
        ProcessedEventRow.state.in_(UNSETTLED),
        ProcessedEventRow.question_id.is_(None),
        ProcessedEventRow.sent_at < bindparam("w_sent_at"),
        alive(bindparam("l_now")),
    )
    .exists()
)


class Dialect:
    """The statements that differ by database (its INSERT ... ON CONFLICT, JSON)."""

    def __init__(self, name: str) -> None:
        insert_ = postgresql.insert if name == "postgresql" else sqlite.insert
        self.insert = insert_
        self.turn_facts = _turn_facts(name)
        self.claim = (
            insert_(ProcessedEventRow)
            .values(**_claim_values())
            .on_conflict_do_nothing(index_elements=["platform", "event_id"])
        )
        # The claim made knowing its question (``e_question``), stored just before it.
        self.claim_asked = (
            insert_(ProcessedEventRow)
            .values(**_claim_values(), question_id=bindparam("e_question"))
            .on_conflict_do_nothing(index_elements=["platform", "event_id"])
        )
        self.new_conversation = (
            insert_(ConversationRow)
            .values(
                platform=bindparam("platform"),
                workspace=bindparam("workspace"),
                channel=bindparam("channel"),
                thread=bindparam("thread"),
                summary="",
                summary_tokens=0,
                context_start=0,
            )
            .on_conflict_do_nothing(index_elements=["platform", "workspace", "channel", "thread"])
        )


def beyond(
    conversation_id: Any,
    message_id: Any,
    *,
    later: bool,
    inclusive: bool = False,
    rows: Any = None,
) -> Any:
    """Turns of ``rows`` (the messages table or an alias of it) after (``later``) or before
    turn ``message_id`` in conversation order, that is by (sent_at, id); no bound if
    ``message_id`` is no turn of the conversation."""
    table = MessageRow.__table__ if rows is None else rows
    sent_at = (
        select(MessageRow.sent_at)
        .where(MessageRow.id == message_id, MessageRow.conversation_id == conversation_id)
        .scalar_subquery()
    )
    ordered: ColumnElement[bool]
    if later:
        tie = table.c.id >= message_id if inclusive else table.c.id > message_id
        ordered = or_(table.c.sent_at > sent_at, and_(table.c.sent_at == sent_at, tie))
    else:
        tie = table.c.id <= message_id if inclusive else table.c.id < message_id
        ordered = or_(table.c.sent_at < sent_at, and_(table.c.sent_at == sent_at, tie))
    return or_(sent_at.is_(None), ordered)


# A stored turn's columns in ``StoredMessage``'s order: SQLite's history rows are made into
# turns as they come (``turns.history``).
STORED_COLUMNS = (
    MessageRow.id,
    MessageRow.role,
    MessageRow.content,
    MessageRow.token_count,
    MessageRow.author_name,
)
TURN_COLUMNS = (*STORED_COLUMNS, MessageRow.sent_at)


def _recent(before: Any, *columns: Any) -> Any:
    """``columns`` of the complete turns of ``r_conversation`` after turn ``r_after`` and
    ``before``, newest first, at most ``r_limit``."""
    conversation: Any = bindparam("r_conversation")
    return (
        select(*columns)
        .where(
            MessageRow.conversation_id == conversation,
            beyond(conversation, bindparam("r_after"), later=True),
            before,
            MessageRow.status == "complete",
        )
        .order_by(MessageRow.sent_at.desc(), MessageRow.id.desc())
        .limit(bindparam("r_limit"))
    )


def _fitting(before: Any, numbered: bool = False) -> Any:
    """Of the turns ``_recent`` would read, those whose running token sum (newest first)
    fits ``r_tokens``, and the first that does not: the whole context read in one statement.

    The statement walks the conversation's index from the newest turn back, one index step
    per turn, and stops at the first turn that does not fit (or after ``r_limit`` turns):
    its cost follows the turns that fit, not the length of the conversation."""
    conversation: Any = bindparam("r_conversation")
    newest = _recent(before, MessageRow.id).limit(1).scalar_subquery().correlate(None)
    walk = (
        select(
            MessageRow.id,
            MessageRow.sent_at,
            MessageRow.token_count.label("running"),
            literal(1).label("n"),
        )
        .where(MessageRow.id == newest)
        .cte("walk", recursive=True)
    )
    older = MessageRow.__table__.alias("older")
    following = (
        select(older.c.id)
        .where(
            older.c.conversation_id == conversation,
            older.c.status == "complete",
            tuple_(older.c.sent_at, older.c.id) < tuple_(walk.c.sent_at, walk.c.id),
            beyond(conversation, bindparam("r_after"), later=True, rows=older),
        )
        .order_by(older.c.sent_at.desc(), older.c.id.desc())
        .limit(1)
        .scalar_subquery()
        .correlate(walk)
    )
    turn = MessageRow.__table__.alias("turn")
    step = (
        select(turn.c.id, turn.c.sent_at, walk.c.running + turn.c.token_count, walk.c.n + 1)
        .select_from(walk)
        .join(turn, turn.c.id == following)
        .where(walk.c.running <= bindparam("r_tokens"), walk.c.n < bindparam("r_limit"))
    )
    walk = walk.union_all(step)
    # ``numbered``: each turn's place from the newest (1) on, as column ``n``.
    number = (walk.c.n,) if numbered else ()
    return (
        select(*TURN_COLUMNS, *number)
        .join(walk, walk.c.id == MessageRow.id)
        .order_by(MessageRow.sent_at.desc(), MessageRow.id.desc())
    )


@lru_cache(maxsize=4)
def recent(*, through: bool, fitting: bool) -> Any:
    """The history read (see ``Store.recent_messages``): parameters ``r_conversation``,
    ``r_after``, ``r_before``, ``r_limit`` and, ``fitting``, ``r_tokens``."""
    before = beyond(
        bindparam("r_conversation"), bindparam("r_before"), later=False, inclusive=through
    )
    return _fitting(before) if fitting else _recent(before, *TURN_COLUMNS)


# Below and above every ``sent_at``: the bound of a turn that is none of the conversation's.
_EARLIEST = -(2**63)
_LATEST = 2**63 - 1


def _edge(conversation_id: Any, message_id: Any, *, later: bool, inclusive: bool) -> Any:
    """``beyond`` as one range over (``sent_at``, id), the conversation's index order: the
    turn's time is read once per statement (not per row), and an id that names no turn of
    the conversation bounds nothing (a time before or after every turn)."""
    sent_at = (
        select(MessageRow.sent_at)
        .where(MessageRow.id == message_id, MessageRow.conversation_id == conversation_id)
        .scalar_subquery()
    )
    edge = tuple_(func.coalesce(sent_at, _EARLIEST if later else _LATEST), message_id)
    order = tuple_(MessageRow.sent_at, MessageRow.id)
    if later:
        return order >= edge if inclusive else order > edge
    return order <= edge if inclusive else order < edge


@lru_cache(maxsize=2)
def newest_first(*, through: bool) -> Any:
    """SQLite: the history read (``recent``'s parameters but ``r_tokens``) as one walk of the
    conversation's index from the newest turn back, at most ``r_limit`` rows: the store
    steps through it and stops at the first turn that does not fit (``turns.fitting``), so
    its cost follows the turns that fit, not the length of the conversation."""
    conversation: Any = bindparam("r_conversation")
    return (
        select(*STORED_COLUMNS)
        .where(
            MessageRow.conversation_id == conversation,
            _edge(conversation, bindparam("r_after"), later=True, inclusive=False),
            _edge(conversation, bindparam("r_before"), later=False, inclusive=through),
            MessageRow.status == "complete",
        )
        .order_by(MessageRow.sent_at.desc(), MessageRow.id.desc())
        .limit(bindparam("r_limit"))
    )


def _claim_told(stmt: Any, mine: Any, question: Any) -> Any:
    """``stmt`` also telling the claim ``mine`` (a CTE) the id of ``question`` (a CTE)."""
    told = (
        _update(ProcessedEventRow)
        .where(ProcessedEventRow.id.in_(select(mine.c.id).scalar_subquery()))
        .values(question_id=select(question.c.id).scalar_subquery())
    )
    return stmt.add_cte(mine, told.returning(ProcessedEventRow.id).cte("claim"))


@lru_cache(maxsize=2)
def ask_in_one(event: bool) -> Any:
    """PostgreSQL: a question stored (``ADD_MESSAGE``'s parameters), its claim told
    (``e_platform``, ``e_event``) and the history that fits before it read (``recent``'s
    parameters, ``r_sent_at`` the question's time for ``r_before``): one statement, one
    round trip. Its rows: the question's id, then a turn of the history (NULL if none).

    The statement sees the table as it was before the question came in, so the history is
    every turn sent up to the question's time (under the conversation's lease no other turn
    of it is being stored)."""
    mine = _mine_locked() if event else None
    # With a claim, the question is stored only while the claim is this worker's
    # (``e_holder``): else no row (``ClaimLost``).
    question = (ADD_MESSAGE if mine is None else _add_message_if(mine)).cte("question")
    fit = _fitting(MessageRow.sent_at <= bindparam("r_sent_at")).subquery("fit")
    stmt = (
        select(question.c.id, fit.c.id, fit.c.role, fit.c.content, fit.c.token_count)
        .add_columns(fit.c.author_name)
        .select_from(question)
        .outerjoin(fit, true())
        .order_by(fit.c.sent_at.desc(), fit.c.id.desc())
    )
    return stmt if mine is None else _claim_told(stmt, mine, question)


@lru_cache(maxsize=2)
def ask_taking(event: bool) -> Any:
    """PostgreSQL: ``ask_in_one`` with the conversation's lease taken by the same statement
    (``Leases.try_take``'s parameters, ``EARLIER_WAITING``'s as ``unless``) and the turn's
    facts (``turn_facts``' parameters) read as they are now: the question is stored only
    once the lease is taken. Its rows: none if the lease was not taken; else the lease's
    holder, its holder before the statement (NULL if none), the question's id (NULL if the
    claim is no longer this worker's), the facts (with the newest turn only), a turn of the
    history (NULL if none).

    Every part reads the database as it was when the statement began: a lease taken the
    moment another worker's statement gave it back (its holder before was that worker) may
    not see what that statement stored, and the caller reads again."""
    lease = lease_taking(EARLIER_WAITING).cte("lease")
    mine = _mine_locked() if event else None
    source = lease if mine is None else lease.join(mine, true())
    question = _add_message_if(source).cte("question")
    stmt = _taken_and_asked(lease, question)
    return stmt if mine is None else _claim_told(stmt, mine, question)


def _taken_and_asked(lease: Any, question: Any) -> Any:
    """PostgreSQL: the rows of ``ask_taking`` and ``claim_ask_taking`` once ``lease`` and
    ``question`` (CTEs) are made: the lease's holder, its holder before, the question's id,
    the turn's facts (with the newest turn only), a turn of the history before it."""
    fit = _fitting(MessageRow.sent_at <= bindparam("r_sent_at"), numbered=True).subquery("fit")
    facts = _turn_facts("postgresql").subquery("facts")
    was = select(LeaseRow.holder).where(LeaseRow.name == bindparam("l_name")).scalar_subquery()
    turn = (fit.c.id, fit.c.role, fit.c.content, fit.c.token_count, fit.c.author_name)
    return (
        select(lease.c.holder, was, question.c.id, *facts.c, *turn)
        .select_from(lease)
        .outerjoin(question, true())
        .outerjoin(fit, question.c.id.is_not(None))
        .outerjoin(facts, or_(fit.c.n.is_(None), fit.c.n == 1))
        .order_by(fit.c.sent_at.desc(), fit.c.id.desc())
    )


def _claimed_now(lease: Any, question_id: Any) -> Any:
    """PostgreSQL: the claim of (``e_platform``, ``e_event``) made this worker's, knowing its
    question ``question_id``, once ``lease`` (a CTE) has a row: made (``claim_event``'s
    parameters), or taken on or over (``TAKE_OVER``'s, ``e_now``). A CTE with the claim's
    id; no row if the event is not this worker's to answer."""
    row = ProcessedEventRow
    values = select(*_claim_values().values(), question_id).select_from(lease)
    columns = [column for column, _ in CLAIM_FIELDS] + ["question_id"]
    made = (
        postgresql.insert(row)
        .from_select(columns, values)
        .on_conflict_do_nothing(index_elements=["platform", "event_id"])
        .returning(row.id)
        .cte("made")
    )
    taken = (
        TAKE_OVER.values(question_id=question_id)
        .where(select(lease.c.holder).exists())
        .returning(row.id)
        .cte("taken")
    )
    return union_all(select(made.c.id), select(taken.c.id)).cte("mine")


@lru_cache(maxsize=1)
def claim_ask_taking() -> Any:
    """PostgreSQL: ``ask_taking`` with the turn's event claimed by the same statement, once
    the lease is taken (``claim_event(settled=False)``'s parameters, ``e_now``): its rows as
    ``ask_taking``'s, the question's id NULL when the event is not this worker's to answer
    (nothing stored then, but the lease is taken). The question's id is drawn first, so
    the claim knows it as it is made."""
    lease = lease_taking(EARLIER_WAITING).cte("lease")
    drawn = select(func.nextval(f"{MessageRow.__tablename__}_id_seq").label("id")).cte("drawn")
    question_id = select(drawn.c.id).scalar_subquery()
    mine = _claimed_now(lease, question_id)
    question = _add_message_if(mine, question_id).cte("question")
    return _taken_and_asked(lease, question)


# A question stored before its turn was planned anew: its text and tokens as planned now.
QUESTION_FIXED = (
    _update(MessageRow)
    .where(MessageRow.id == bindparam("m_id"))
    .values(content=bindparam("m_content"), token_count=bindparam("m_tokens"))
)


def recent_params(
    conversation_id: int, after_id: int, before_id: int, limit: int, tokens: int | None
) -> dict[str, Any]:
    params = {
        "r_conversation": conversation_id,
        "r_after": after_id,
        "r_before": before_id,
        "r_limit": limit,
    }
    if tokens is not None:
        params["r_tokens"] = tokens
    return params


# What a user has spent (``s_platform``, ``s_user``): the budget check of a turn.
SPENT = select(func.coalesce(func.sum(UsageRow.cost_usd), 0.0)).where(
    UsageRow.platform == bindparam("s_platform"), UsageRow.user_id == bindparam("s_user")
)


class Compiled:
    """A turn's statements compiled for the driver of database ``name`` (``driver.Sql``),
    once per store."""

    def __init__(self, name: str) -> None:
        self.name = name
        statements = Dialect(name)
        self.facts = compile_sql(statements.turn_facts, name)
        self.new_conversation = compile_sql(statements.new_conversation, name)
        self.claim = compile_sql(statements.claim, name)
        self.take_over = compile_sql(TAKE_OVER, name)
        self.take_over_received = compile_sql(TAKE_OVER_RECEIVED, name)
        self.claim_asked = compile_sql(statements.claim_asked, name)
        self.take_over_asked = compile_sql(TAKE_OVER_ASKED, name)
        self.settle = compile_sql(SETTLE, name)
        self.settle_shown = compile_sql(SETTLE_SHOWN, name)
        self.delivery = compile_sql(DELIVERY, name)
        self.add_message = compile_sql(ADD_MESSAGE, name)
        self.question_claimed = compile_sql(QUESTION_CLAIMED, name)
        self.answer_claimed = compile_sql(ANSWER_CLAIMED, name)
        self.message_status = compile_sql(MESSAGE_STATUS, name)
        usage: dict[str, Any] = {field: bindparam(field) for field in USAGE_FIELDS}
        self.usage = compile_sql(insert(UsageRow).values(**usage), name)
        self.spent = compile_sql(SPENT, name)
        # SQLite reads every history with ``newest_first`` (the store stops at the first
        # turn that does not fit); PostgreSQL in one statement that stops there itself.
        self._recent = {
            (through, fitting): compile_sql(
                newest_first(through=through)
                if name == "sqlite"
                else recent(through=through, fitting=fitting),
                name,
            )
            for through in (False, True)
            for fitting in (False, True)
        }
        self._finish: dict[tuple[bool, bool, int, bool], Sql] = {}
        if name == "postgresql":
            self.settle_releasing = compile_sql(_settle_releasing(), name)
            self.settle_shown_releasing = compile_sql(_settle_releasing(SETTLE_SHOWN), name)
            self.facts_select = statements.turn_facts
        self._ask: dict[bool, Sql] = {}
        self._ask_taking: dict[bool, Sql] = {}
        self._claim_ask_taking: Sql | None = None
        self.question_fixed = compile_sql(QUESTION_FIXED, name)

    def recent(self, *, through: bool, fitting: bool) -> Sql:
        return self._recent[through, fitting]

    def ask(self, event: bool) -> Sql:
        """``ask_in_one`` (PostgreSQL)."""
        found = self._ask.get(event)
        if found is None:
            found = self._ask[event] = compile_sql(ask_in_one(event), self.name)
        return found

    def ask_taking(self, event: bool) -> Sql:
        """``ask_taking`` (PostgreSQL)."""
        found = self._ask_taking.get(event)
        if found is None:
            found = self._ask_taking[event] = compile_sql(ask_taking(event), self.name)
        return found

    @property
    def claim_ask_taking(self) -> Sql:
        """``claim_ask_taking`` (PostgreSQL)."""
        if self._claim_ask_taking is None:
            self._claim_ask_taking = compile_sql(claim_ask_taking(), self.name)
        return self._claim_ask_taking

    def finish(self, question: bool, event: bool, usage: int, release: bool = False) -> Sql:
        """``finish_in_one`` (PostgreSQL)."""
        key = (question, event, usage, release)
        found = self._finish.get(key)
        if found is None:
            found = self._finish[key] = compile_sql(finish_in_one(*key), self.name)
        return found
