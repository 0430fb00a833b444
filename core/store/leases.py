"""Leases: one holder of a name at a time across workers, without holding a connection.

A conversation's turns run one at a time in every worker sharing the database: the worker
answering holds the conversation's lease, a row saying who holds it until when. Taking,
renewing and giving it back are one short statement each; between them no connection is held,
so a worker can keep thousands of answers in flight on a small pool. Each worker also holds a
lease on its own name while it lives: a claim it left unfinished is known to be orphaned once
that lease has expired.

A heartbeat renews every lease of this worker at once (one statement, a third of the lease
time), so a lease outlives a slow model but not a dead worker. Times are the workers' clocks in
microseconds; they need to agree to well within the lease time (NTP does).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import lru_cache, partial
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    CursorResult,
    String,
    and_,
    bindparam,
    delete,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from core.store.driver import PgLinks, Sql, compile_sql
from core.store.models import LeaseRow, storable
from core.store.retry import retrying

log = logging.getLogger("parley.store")

# How long a lease outlives its holder's last heartbeat.
LEASE_SECONDS = 30.0
# A renewal later than this share of the lease time after the last is logged.
LATE_SHARE = 0.7
# Waits between attempts to take a lease someone else holds.
FIRST_WAIT, LONGEST_WAIT = 0.02, 0.5


def now_micros() -> int:
    return time.time_ns() // 1000


GIVE_BACK = delete(LeaseRow).where(
    LeaseRow.name == bindparam("l_name"), LeaseRow.holder == bindparam("l_holder")
)


@lru_cache(maxsize=8)
def _taking(dialect: str, unless: ColumnElement[bool] | None) -> Any:
    """Take lease ``l_name`` for ``l_holder`` until ``l_until`` if it is free at ``l_now``
    and ``unless`` is not true (built once per ``unless``; parameters given per call)."""
    insert_ = postgresql.insert if dialect == "postgresql" else sqlite.insert
    free = LeaseRow.until < bindparam("l_now")
    if unless is None:
        stmt = insert_(LeaseRow).values(
            name=bindparam("l_name"), holder=bindparam("l_holder"), until=bindparam("l_until")
        )
    else:
        values = select(
            bindparam("l_name", type_=String),
            bindparam("l_holder", type_=String),
            bindparam("l_until", type_=BigInteger),
        )
        stmt = insert_(LeaseRow).from_select(["name", "holder", "until"], values.where(~unless))
        free = and_(free, ~unless)
    return stmt.on_conflict_do_update(
        index_elements=[LeaseRow.name],
        set_={"holder": stmt.excluded.holder, "until": stmt.excluded.until},
        where=free,
    ).returning(LeaseRow.holder)


@lru_cache(maxsize=8)
def _taking_with(dialect: str, unless: ColumnElement[bool] | None, also: Any) -> Any:
    """``_taking`` with the select ``also`` read in the same statement: no row if the lease
    was not taken, else its holder and then ``also``'s columns (NULLs if it finds nothing)."""
    lease = _taking(dialect, unless).cte("lease")
    read = also.subquery("also")
    return select(lease.c.holder, *read.c).select_from(lease).outerjoin(read, true())


def lease_taking(unless: ColumnElement[bool]) -> Any:
    """PostgreSQL: lease ``l_name`` taken for ``l_holder`` if it is free unless ``unless``,
    returning its holder: a CTE's statement for a store statement."""
    return _taking("postgresql", unless)


def worker_name(holder: str) -> str:
    """The lease a worker holds on itself while it lives."""
    return f"worker:{holder}"


class Leases:
    """Take, renew and give back named leases for one worker (``holder``)."""

    def __init__(self, engine: AsyncEngine, *, seconds: float = LEASE_SECONDS) -> None:
        self.engine = engine
        # Taking and giving back are one statement each: on PostgreSQL without BEGIN and
        # COMMIT around it (two round trips fewer).
        self.single = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else engine
        )
        self.holder = uuid.uuid4().hex[:16]
        self.seconds = seconds
        self._dialect = engine.dialect.name
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._heartbeat: asyncio.Task[None] | None = None
        # Names this worker holds now, set once given back (its own waiters wait on them).
        self._held: dict[str, asyncio.Event] = {}
        # Taking and giving back on the driver itself (PostgreSQL; set by the store).
        self.links: PgLinks | None = None
        # What was read along with a lease just taken (``hold(also=...)``), by name.
        self.read: dict[str, tuple[Any, ...]] = {}
        # Names held here but already given back by a statement of the store's own.
        self.given_back: set[str] = set()
        self._texts: dict[Any, Sql] = {}

    def _text(self, stmt: Any) -> Sql:
        found = self._texts.get(stmt)
        if found is None:
            found = self._texts[stmt] = compile_sql(stmt, self._dialect)
        return found

    def _until(self) -> int:
        return now_micros() + int(self.seconds * 1_000_000)

    def taking_params(self, name: str) -> dict[str, Any]:
        """The parameters of taking ``name`` now (``lease_taking``); the heartbeat renews
        it once taken."""
        self._start_heartbeat()
        return {
            "l_name": storable(name),  # as the column keeps it (no NUL)
            "l_holder": self.holder,
            "l_until": self._until(),
            "l_now": now_micros(),
        }

    async def try_take(
        self,
        name: str,
        *,
        unless: ColumnElement[bool] | None = None,
        params: dict[str, Any] | None = None,
        also: Any = None,
    ) -> bool:
        """Take ``name`` if nobody holds it (or its holder's lease has run out), and
        ``unless`` (someone with a better claim waiting; its own ``params``) is not true.
        ``also``: a select (its parameters in ``params``) read in the same statement when
        the lease is taken, kept in ``read`` (PostgreSQL)."""
        values = {**(params or {}), **self.taking_params(name)}
        taking = _taking(self._dialect, unless)
        if self.links is not None:
            if also is not None:
                taking = _taking_with(self._dialect, unless, also)
            found = await self.links.fetch(self._text(taking), values)
            if not found or found[0][0] != self.holder:
                return False
            if also is not None:
                self.read[name] = tuple(found[0][1:])
            return True
        async with self.single.connect() as conn:
            taken = (await conn.execute(taking, values)).scalar_one_or_none()
            await conn.commit()
        return taken == self.holder

    async def give_back(self, name: str) -> None:
        values = {"l_name": storable(name), "l_holder": self.holder}
        if self.links is not None:
            await self.links.count(self._text(GIVE_BACK), values)
            return
        async with self.single.connect() as conn:
            await conn.execute(GIVE_BACK, values)
            await conn.commit()

    @asynccontextmanager
    async def hold(
        self,
        name: str,
        *,
        unless: ColumnElement[bool] | None = None,
        params: dict[str, Any] | None = None,
        also: Any = None,
    ) -> AsyncIterator[None]:
        """Hold ``name`` for the block, waiting (never failing) while another worker has it
        (or while ``unless``: someone who should go first is waiting). While this worker
        holds it, its own waiters wait for it here rather than asking the database.
        ``also``: see ``try_take``. A lease a statement of the store gave back already
        (``given_back``) is not given back again."""
        await self._take(name, unless, params, also)
        try:
            yield
        finally:
            await self.let_go(name)

    def busy(self, name: str) -> bool:
        """Whether a turn of this worker holds ``name`` or is taking it (``reserve`` waits)."""
        return name in self._held

    def taken(self, name: str) -> None:
        """``name`` was taken (by ``hold``, or by a statement of the store) by the turn that
        ``reserve``d it: this worker's own waiters for it wait for ``let_go``."""
        self._held.setdefault(name, asyncio.Event())

    async def reserve(self, name: str) -> None:
        """Wait while a turn of this worker holds ``name`` or is taking it, then mark it as
        this turn's: only one turn of a worker sends a statement that takes a lease at a
        time, so one whose statement waited (for a connection) never takes the lease that
        another turn of it gave back but still holds. Then ``taken``, or ``unreserve``."""
        while (mine := self._held.get(name)) is not None:
            await mine.wait()
        self._held[name] = asyncio.Event()

    def unreserve(self, name: str) -> None:
        """The take after ``reserve`` failed: this worker's other turns may try."""
        self._held.pop(name).set()

    async def let_go(self, name: str) -> None:
        """Give back ``name``, held since ``taken``, unless a statement of the store gave it
        back already (``given_back``)."""
        self.read.pop(name, None)
        try:
            if name in self.given_back:
                self.given_back.discard(name)
            else:
                with suppress(Exception):
                    await asyncio.shield(retrying(partial(self.give_back, name), patience=5.0))
        finally:  # also when cancelled while giving it back: this worker's waiters go on
            self._held.pop(name).set()

    async def _take(
        self,
        name: str,
        unless: ColumnElement[bool] | None,
        params: dict[str, Any] | None,
        also: Any,
    ) -> None:
        wait = FIRST_WAIT
        take = partial(self.try_take, name, unless=unless, params=params, also=also)
        while True:
            await self.reserve(name)
            try:
                took = await retrying(take)
            except BaseException:
                # it may have taken it: given back (and this worker's other turns let on)
                await self.let_go(name)
                raise
            if took:
                return
            self.unreserve(name)
            await asyncio.sleep(wait)
            wait = min(LONGEST_WAIT, wait * 2)

    async def renew(self) -> int:
        """Push back the expiry of this worker's own lease and of those its turns hold (or
        are taking): one left in the database by a give-back that failed runs out."""
        names = [worker_name(self.holder), *(storable(name) for name in self._held)]
        async with self.engine.begin() as conn:
            await self._take_self(conn)
            result = await conn.execute(
                update(LeaseRow)
                .where(LeaseRow.holder == self.holder, LeaseRow.name.in_(names))
                .values(until=self._until())
            )
        return int(cast(CursorResult[Any], result).rowcount or 0)

    async def _take_self(self, conn: Any) -> None:
        stmt = self._insert(LeaseRow).values(
            name=worker_name(self.holder), holder=self.holder, until=self._until()
        )
        await conn.execute(stmt.on_conflict_do_nothing(index_elements=[LeaseRow.name]))

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def start(self) -> None:
        """Announce this worker (its own lease) and keep its leases alive from now on."""
        await retrying(self.renew)
        self._start_heartbeat()

    async def _beat(self) -> None:
        last = time.monotonic()
        while True:
            try:
                await self.renew()
                gap, last = time.monotonic() - last, time.monotonic()
                if gap > self.seconds * LATE_SHARE:
                    # Past the lease time, another worker may take this one's answers over.
                    log.warning(
                        "leases renewed %.1f s after the last (they last %s s)", gap, self.seconds
                    )
            except Exception as exc:  # the next beat tries again; the lease time is the margin
                log.warning("renewing leases failed (%s)", type(exc).__name__)
            await asyncio.sleep(self.seconds / 3)

    async def close_heartbeat(self) -> None:
        """Stop renewing: from now on this worker's leases run out."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await self._heartbeat
            self._heartbeat = None

    async def close(self) -> None:
        """Stop renewing and give back this worker's own lease (others expire)."""
        await self.close_heartbeat()
        with suppress(Exception):
            await self.give_back(worker_name(self.holder))
