"""A turn's store calls on the driver (``core.store.driver``): claims, opening and finishing
a turn, the history read.

On SQLite each call is a function run whole on the store's thread over a ``Link`` (one
transaction, or statements that commit themselves); on PostgreSQL each statement commits
itself (no BEGIN or COMMIT: one round trip each) on a connection of ``PgLinks``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

from core.errors import ClaimLost, Redelivered
from core.messages import ConversationKey
from core.ports import (
    ChannelOverrides,
    ConversationState,
    NewTurn,
    Planner,
    Role,
    StoredMessage,
    TurnFacts,
    TurnPlan,
)
from core.store.driver import Link, PgLinks
from core.store.leases import now_micros
from core.store.prepared import Compiled, recent_params

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
# A channel's memory as ``turn_facts`` reads it when it remembers nothing.
NO_MEMORY = frozenset({None, "", "[]"})


def micros(moment: datetime | None) -> int:
    """``moment`` (now when None; UTC when naive) in microseconds since 1970, the unit of
    ``sent_at``."""
    moment = moment or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // MICROSECOND


def conversation_params(key: ConversationKey) -> dict[str, str]:
    return {
        "platform": key.platform,
        "workspace": key.workspace,
        "channel": key.channel,
        "thread": key.thread,
    }


def event_params(event: tuple[str, str], **more: Any) -> dict[str, Any]:
    """Parameters naming the claim of ``event`` (platform, event id)."""
    return {"e_platform": event[0], "e_event": event[1], **more}


def message_params(conversation_id: int, turn: NewTurn) -> dict[str, Any]:
    """``ADD_MESSAGE``'s parameters."""
    return {
        "m_conversation": conversation_id,
        "m_role": turn.role,
        "m_content": turn.content,
        "m_tokens": turn.token_count,
        "m_author_id": turn.author_id,
        "m_author_name": turn.author_name[:100],
        "m_status": turn.status,
        "m_model": turn.model,
        "m_sent_at": micros(turn.sent_at),
    }


# A row of ``prepared.STORED_COLUMNS`` made a ``StoredMessage`` as it is (no Python frame per
# row: a turn reads its whole history).
_stored = cast(Callable[[Sequence[Any]], StoredMessage], partial(tuple.__new__, StoredMessage))


def history(rows: Sequence[Any]) -> list[StoredMessage]:
    """SQLite's history rows (``prepared.STORED_COLUMNS``: ``StoredMessage``'s fields in its
    order) as turns."""
    return list(map(_stored, rows))


def pg_history(rows: Sequence[Any]) -> list[StoredMessage]:
    """PostgreSQL's history rows (``prepared.TURN_COLUMNS``: the turn, then its time)."""
    return [StoredMessage(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def claim_lost(event: tuple[str, str]) -> ClaimLost:
    return ClaimLost(f"event {event[1]} on {event[0]} was taken over")


def facts_of(row: Sequence[Any]) -> TurnFacts:
    """A ``turn_facts`` row: the conversation, its channel's settings and memory."""
    state = ConversationState(row[0], row[1], row[2], row[3])
    json_mode = row[8]
    overrides = ChannelOverrides(
        row[4], row[5], row[6], row[7], None if json_mode is None else bool(json_mode)
    )
    found = row[9]
    memory = () if found in NO_MEMORY else tuple(str(text) for text in json.loads(found))
    return TurnFacts(state, overrides, memory, None)


@dataclass(frozen=True, slots=True)
class Finish:
    """What finishing a turn needs besides the answer: its conversation, its question, its
    usage rows and this worker's name as a claim's holder."""

    conversation: int
    question_id: int | None
    usage: list[dict[str, Any]]
    holder: str


# --- SQLite: functions run whole on the store's thread ------------------------------------


def claim(link: Link, c: Compiled, params: dict[str, Any], received: bool) -> bool:
    """The event's claim made, or taken on (received by this worker) or over (left by a dead
    worker): see ``SqlStore.claim_event``."""
    if link.execute(c.claim, params).rowcount:
        return True
    taking = c.take_over_received if received else c.take_over
    return bool(link.execute(taking, {**params, "e_now": now_micros()}).rowcount)


def count(link: Link, _c: Compiled, sql: Any, params: dict[str, Any]) -> int:
    return int(link.execute(sql, params).rowcount or 0)


def fitting(link: Link, c: Compiled, params: dict[str, Any], through: bool) -> list[Any]:
    """The history read (``recent``'s parameters): turns newest first, stepped through one
    by one; with ``r_tokens``, only those whose running token sum fits it and the first that
    does not (the rest of the walk never read)."""
    cursor = link.execute(c.recent(through=through, fitting=True), params)
    tokens = params.get("r_tokens")
    if tokens is None:
        return list(cursor.fetchall())
    found = []
    for row in cursor:
        found.append(row)
        tokens -= row[3]
        if tokens < 0:
            break
    cursor.close()
    return found


def _claimed(link: Link, sql: Any, event: tuple[str, str], **params: Any) -> None:
    """Update this worker's claim of ``event``; ``ClaimLost`` (the transaction is rolled
    back) when another worker has taken it over."""
    if not link.execute(sql, event_params(event, **params)).rowcount:
        raise claim_lost(event)


def _inserted(link: Link, sql: Any, params: dict[str, Any]) -> int:
    return int(link.execute(sql, params).fetchall()[0][0])


def open_turn(
    link: Link,
    c: Compiled,
    key: ConversationKey,
    spender: str | None,
    plan: Planner | None,
    holder: str,
) -> TurnFacts:
    """The facts of a turn in ``key`` (the conversation made if new), what ``spender`` has
    spent, and (given a ``plan``) its question stored with the history before it."""
    facts = _facts(link, c, key, spender)
    if plan is None:
        return facts
    return _begin(link, c, facts, plan(facts), holder)


def claim_and_open(
    link: Link,
    c: Compiled,
    key: ConversationKey,
    spender: str | None,
    plan: Planner,
    holder: str,
    claim_params: dict[str, Any],
) -> TurnFacts | Exception:
    """``open_turn`` with the turn's event claimed (``claim_event``'s parameters) knowing its
    question, in the same transaction: ``Redelivered`` (all rolled back) when the event is
    not this worker's to answer. An error of ``plan`` is returned, not raised, once the
    event is claimed (the claim is committed; the store raises it)."""
    facts = _facts(link, c, key, spender)
    try:
        planned = plan(facts)
    except Exception as exc:
        if not claim(link, c, claim_params, False):
            raise Redelivered(claim_params["e_event"]) from None
        return exc
    return _begin(link, c, facts, planned, holder, claim_params)


def _facts(link: Link, c: Compiled, key: ConversationKey, spender: str | None) -> TurnFacts:
    params = conversation_params(key)
    row = link.execute(c.facts, params).fetchone()
    if row is None:
        link.execute(c.new_conversation, params)
        row = link.execute(c.facts, params).fetchone()
    facts = facts_of(row)
    if spender is not None:
        spent = link.execute(c.spent, {"s_platform": key.platform, "s_user": spender})
        facts = replace(facts, spent_usd=float(spent.fetchone()[0] or 0.0))
    return facts


def _begin(
    link: Link,
    c: Compiled,
    facts: TurnFacts,
    plan: TurnPlan,
    holder: str,
    claim_params: dict[str, Any] | None = None,
) -> TurnFacts:
    """Store the plan's question and read the history before it (same transaction); with
    ``claim_params``, its event claimed knowing it."""
    state, question = facts.state, plan.question
    question_id = _inserted(link, c.add_message, message_params(state.id, question))
    if claim_params is not None:
        _claim_asked(link, c, {**claim_params, "e_question": question_id})
    elif question.event is not None:  # the claim knows its question, to mark it if it dies
        args = {"e_message": question_id, "e_holder": holder}
        _claimed(link, c.question_claimed, question.event, **args)
    params = recent_params(
        state.id, state.context_start, question_id, plan.history_rows, plan.history_tokens
    )
    found = fitting(link, c, params, False)
    turns = tuple(map(_stored, found))
    return TurnFacts(
        facts.state, facts.overrides, facts.memory, facts.spent_usd, question_id, turns
    )


def _claim_asked(link: Link, c: Compiled, params: dict[str, Any]) -> None:
    """``claim`` knowing the question ``e_question``; ``Redelivered`` (the transaction is
    rolled back) when the event is not this worker's to answer."""
    if link.execute(c.claim_asked, params).rowcount:
        return
    if not link.execute(c.take_over_asked, {**params, "e_now": now_micros()}).rowcount:
        raise Redelivered(params["e_event"])


def finish(link: Link, c: Compiled, answer: NewTurn, turn: Finish) -> int:
    """The answer stored with its question made complete, its claim told (``ClaimLost`` if
    another worker took it over), its usage."""
    if turn.question_id is not None:
        link.execute(c.message_status, {"m_id": turn.question_id, "m_status": "complete"})
    message_id = _inserted(link, c.add_message, message_params(turn.conversation, answer))
    if answer.event is not None:  # "answered" once shown (``settle_event``)
        args = {"e_message": message_id, "e_holder": turn.holder}
        _claimed(link, c.answer_claimed, answer.event, **args)
    if turn.usage:
        link.executemany(c.usage, turn.usage)
    return message_id


# --- PostgreSQL: one statement per round trip, each committing itself -----------------------


async def pg_claim(links: PgLinks, c: Compiled, params: dict[str, Any], received: bool) -> bool:
    """``claim`` on PostgreSQL."""
    if await links.count(c.claim, params):
        return True
    taking = c.take_over_received if received else c.take_over
    return bool(await links.count(taking, {**params, "e_now": now_micros()}))


async def pg_open_turn(
    links: PgLinks,
    c: Compiled,
    key: ConversationKey,
    spender: str | None,
    plan: Planner | None,
    holder: str,
    known: TurnFacts | None = None,
) -> TurnFacts:
    """``open_turn`` on PostgreSQL: the facts (unless ``known``, read with the conversation's
    lease); then the question stored and the history before it read, in one statement."""
    facts = known or await _pg_facts(links, c, key)
    if spender is not None:
        spent = await links.fetch(c.spent, {"s_platform": key.platform, "s_user": spender})
        facts = replace(facts, spent_usd=float(spent[0][0] or 0.0))
    if plan is None:
        return facts
    return await _pg_ask(links, c, facts, plan(facts), holder)


async def _pg_facts(links: PgLinks, c: Compiled, key: ConversationKey) -> TurnFacts:
    params = conversation_params(key)
    found = await links.fetch(c.facts, params)
    if not found:
        await links.count(c.new_conversation, params)
        found = await links.fetch(c.facts, params)
    return facts_of(found[0])


async def _pg_ask(
    links: PgLinks, c: Compiled, facts: TurnFacts, plan: TurnPlan, holder: str
) -> TurnFacts:
    """The question stored (its claim told, if any) and the history that fits before it read:
    one statement; with a claim no longer this worker's it stores nothing (``ClaimLost``)."""
    question = plan.question
    found = await links.fetch(c.ask(question.event is not None), ask_params(facts, plan, holder))
    if not found and question.event is not None:
        raise claim_lost(question.event)
    turns = tuple(
        StoredMessage(r[1], cast(Role, r[2]), r[3], r[4], r[5]) for r in found if r[1] is not None
    )
    return replace(facts, question_id=int(found[0][0]), history=turns)


def ask_params(facts: TurnFacts, plan: TurnPlan, holder: str) -> dict[str, Any]:
    """``ask_in_one``'s parameters: the plan's question and the history room."""
    state, question = facts.state, plan.question
    params = message_params(state.id, question)
    params.update(
        r_conversation=state.id,
        r_after=state.context_start,
        r_limit=plan.history_rows,
        r_tokens=plan.history_tokens,
        r_sent_at=params["m_sent_at"],
    )
    if question.event is not None:
        params.update(event_params(question.event, e_holder=holder))
    return params


def same_facts(one: TurnFacts, other: TurnFacts) -> bool:
    """The same conversation state, channel settings and memory (what plans a turn)."""
    return (
        one.state == other.state and one.overrides == other.overrides and one.memory == other.memory
    )


def taken_and_asked(
    found: Sequence[Any], facts: TurnFacts, plan: TurnPlan
) -> tuple[TurnFacts, bool]:
    """From ``ask_taking``'s rows (the lease taken): the turn's facts with its question and
    history, and whether they are to be read again (the facts are no longer ``facts``, which
    planned the turn, or the statement may not have seen all the last holder stored)."""
    first = found[0]
    if first[2] is None:
        assert plan.question.event is not None, "no claim, yet no question stored"
        raise claim_lost(plan.question.event)
    stale = first[1] is not None and first[1] != first[0]
    now = facts_of(first[3:13]) if first[3] is not None else None
    turns = tuple(
        StoredMessage(r[13], cast(Role, r[14]), r[15], r[16], r[17])
        for r in found
        if r[13] is not None
    )
    asked = replace(facts, question_id=int(first[2]), history=turns)
    again = stale or now is None or not same_facts(now, facts)
    return asked, again


async def pg_again(
    links: PgLinks,
    c: Compiled,
    key: ConversationKey,
    planner: Planner,
    asked: TurnFacts,
    plan: TurnPlan,
) -> TurnFacts:
    """A turn whose question ``asked`` stored under a plan made with facts no longer true:
    the facts read, the turn planned again (its question, if it reads differently now, made
    so; made "failed" if the plan now refuses it) and the history before it read again."""
    question_id = asked.question_id
    assert question_id is not None
    facts = replace(await _pg_facts(links, c, key), spent_usd=asked.spent_usd)
    try:
        again = planner(facts)
    except Exception:
        await links.count(c.message_status, {"m_id": question_id, "m_status": "failed"})
        raise
    new, old = again.question, plan.question
    if (new.content, new.token_count) != (old.content, old.token_count):
        fixed = {"m_id": question_id, "m_content": new.content, "m_tokens": new.token_count}
        await links.count(c.question_fixed, fixed)
    state = facts.state
    params = recent_params(
        state.id, state.context_start, question_id, again.history_rows, again.history_tokens
    )
    found = await links.fetch(c.recent(through=False, fitting=True), params)
    return replace(facts, question_id=question_id, history=tuple(pg_history(found)))


async def pg_finish(
    links: PgLinks, c: Compiled, answer: NewTurn, turn: Finish, lease: str | None = None
) -> int:
    """``finish`` as one statement; with a claim no longer this worker's it stores nothing.
    ``lease``: the conversation's lease given back by the same statement."""
    event = answer.event
    release = lease is not None
    sql = c.finish(turn.question_id is not None, event is not None, len(turn.usage), release)
    params = message_params(turn.conversation, answer)
    if release:
        params.update(l_name=lease, l_holder=turn.holder)
    if turn.question_id is not None:
        params["f_question"] = turn.question_id
    if event is not None:
        params.update(event_params(event, e_holder=turn.holder))
    for i, row in enumerate(turn.usage):
        params.update({f"u{i}_{name}": value for name, value in row.items()})
    found = await links.fetch(sql, params)
    if not found:
        if event is not None:
            raise claim_lost(event)
        raise RuntimeError("the answer was not stored")
    return int(found[0][0])
