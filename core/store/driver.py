"""A turn's statements on the database driver itself: SQLite's ``sqlite3`` on the store's own
thread, PostgreSQL's asyncpg on connections of the engine's pool.

SQLAlchemy builds each statement once (``core.store.prepared``) and compiles it here to its
SQL text and the order of its parameters (``Sql``); a call passes plain values and gets plain
rows back, without SQLAlchemy's execution layer (its statement cache, result objects and
events), which took most of the store's CPU per turn. The rest of the store, the schema and
the migrations stay on SQLAlchemy.

What is sent is told to ``OBSERVERS`` (statements, and transactions begun and ended), so a
counting hook sees these statements as it sees SQLAlchemy's (``tests/fakes/counting.py``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from operator import itemgetter
from typing import Any, Protocol, TypeVar

from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import asyncpg as _asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.store.models import storable, unstorable

T = TypeVar("T")

# SQLite's page cache per connection, in KiB (PRAGMA cache_size takes it negated): the pages
# a turn reads again are the upper levels of a few indexes and its conversation's newest rows;
# SQLite's default of 2 MiB per connection held about 2 MB more RSS after 10,000 conversations
# (bench/core_overhead.py --known), the rest of the file being in the system's page cache.
SQLITE_CACHE_KIB = 1024
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}",
)


class Observer(Protocol):
    """Told what the driver is asked (``tests/fakes/counting.py``)."""

    def statement(self, sql: str) -> None: ...

    def begin(self, autocommit: bool) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


# Observers of every statement and transaction sent through this module (none in production:
# one truth test per statement).
OBSERVERS: list[Observer] = []


def _begun(autocommit: bool) -> None:
    for observer in OBSERVERS:
        observer.begin(autocommit)


def _sent(sql: str) -> None:
    for observer in OBSERVERS:
        observer.statement(sql)


def _ended(committed: bool) -> None:
    for observer in OBSERVERS:
        if committed:
            observer.commit()
        else:
            observer.rollback()


@contextmanager
def _told(sql: Sql) -> Iterator[None]:
    """One statement that commits itself, told to the observers (when there are any)."""
    if not OBSERVERS:
        yield
        return
    _begun(True)
    _sent(sql.text)
    try:
        yield
    except BaseException:
        _ended(False)
        raise
    _ended(True)


@dataclass(frozen=True, slots=True)
class Sql:
    """A statement compiled once: its text and its parameters' names in order (with the values
    the statement fixes itself)."""

    text: str
    names: tuple[str, ...]
    fixed: dict[str, Any]
    _values: Callable[[dict[str, Any]], tuple[Any, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        names = self.names
        get: Callable[[dict[str, Any]], Any]
        if not names:
            get = _no_values
        elif len(names) == 1:
            get = partial(_one_value, names[0])
        else:
            get = itemgetter(*names)
        object.__setattr__(self, "_values", get)

    def args(self, params: dict[str, Any]) -> tuple[Any, ...]:
        """The positional values for ``params`` (text made storable, as the columns do)."""
        values = self._values({**self.fixed, **params} if self.fixed else params)
        for value in values:
            # ``unstorable``'s search only where it can find something: NUL is found by
            # ``in`` (memchr), and a lone surrogate is never ASCII (``isascii`` reads a flag).
            if value.__class__ is str and (
                "\x00" in value or not value.isascii() and unstorable(value)
            ):
                return tuple(storable(v) if v.__class__ is str else v for v in values)
        return values


def _no_values(_params: dict[str, Any]) -> tuple[Any, ...]:
    return ()


def _one_value(name: str, params: dict[str, Any]) -> tuple[Any, ...]:
    return (params[name],)


_DIALECTS = {"sqlite": sqlite.dialect(), "postgresql": _asyncpg.dialect()}  # type: ignore[no-untyped-call]


def compile_sql(stmt: Any, dialect: str) -> Sql:
    """``stmt`` as the driver of ``dialect`` ("sqlite" or "postgresql") takes it."""
    compiled = stmt.compile(dialect=_DIALECTS[dialect])
    if "POSTCOMPILE" in compiled.string:  # a fixed IN list: its values rendered in place
        given = {name for name, bind in compiled.binds.items() if bind.required}
        expanded = compiled.construct_expanded_state(dict.fromkeys(given))
        fixed = {name: value for name, value in expanded.parameters.items() if name not in given}
        return Sql(expanded.statement, tuple(expanded.positiontup or ()), fixed)
    names = tuple(compiled.positiontup or ())
    fixed = {
        name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required
    }
    return Sql(compiled.string, names, fixed)


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> Sequence[Any]: ...

    def fetchone(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def close(self) -> None: ...


class Link(Protocol):
    """Runs compiled statements in a transaction (``sqlite3`` or SQLAlchemy's connection)."""

    def execute(self, sql: Sql, params: dict[str, Any]) -> Cursor: ...

    def executemany(self, sql: Sql, rows: Sequence[dict[str, Any]]) -> None: ...


class SqliteLink:
    """One ``sqlite3`` connection to a SQLite file, used only on the store's own thread;
    transactions are begun and ended here (``BEGIN IMMEDIATE``: the write lock waited for
    up front, never a busy read upgraded)."""

    def __init__(self, path: str, *, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, opened at its first use (on the store's thread)."""
        if self._db is None:
            db = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            for pragma in SQLITE_PRAGMAS:
                db.execute(pragma)
            self._db = db
        return self._db

    def execute(self, sql: Sql, params: dict[str, Any]) -> Cursor:
        if OBSERVERS:
            _sent(sql.text)
        return self.db.execute(sql.text, sql.args(params))

    def executemany(self, sql: Sql, rows: Sequence[dict[str, Any]]) -> None:
        if OBSERVERS:
            _sent(sql.text)
        self.db.executemany(sql.text, [sql.args(row) for row in rows])

    def transaction(
        self,
        stop: Any,
        work: Callable[..., T],
        args: tuple[Any, ...],
        single: bool,
    ) -> T:
        """``work(self, *args)`` in one transaction, rolled back if it fails or its caller
        stopped waiting for it (``stop`` set) before it could commit. ``single``: ``work``
        sends statements that each commit themselves (no BEGIN or COMMIT)."""
        if OBSERVERS:
            _begun(single)
        if single:
            result = work(self, *args)
            if OBSERVERS:
                _ended(True)
            return result
        self.db.execute("BEGIN IMMEDIATE")
        try:
            result = work(self, *args)
        except BaseException:
            self._end(commit=False)
            raise
        self._end(commit=not stop.is_set())
        return result

    def _end(self, *, commit: bool) -> None:
        if OBSERVERS:
            _ended(commit)
        if self.db.in_transaction:
            self.db.execute("COMMIT" if commit else "ROLLBACK")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class AlchemyLink:
    """``Link`` over a SQLAlchemy connection (an in-memory SQLite database, which only the
    async engine's one connection sees); SQLAlchemy's own events count it."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: Sql, params: dict[str, Any]) -> Cursor:
        result: Cursor = self.conn.exec_driver_sql(sql.text, sql.args(params))
        return result

    def executemany(self, sql: Sql, rows: Sequence[dict[str, Any]]) -> None:
        self.conn.exec_driver_sql(sql.text, [sql.args(row) for row in rows])


class PgLinks:
    """asyncpg connections borrowed from the engine's pool and kept between calls: at most
    all but two of the pool's (so the rest of the store always finds one), at most half of
    it kept idle here. A connection given back goes first to a call waiting for one."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        size = getattr(engine.sync_engine.pool, "size", lambda: 3)()
        self.limit = max(1, size - 2)
        self.keep = max(1, size // 2)
        self._idle: list[tuple[AsyncConnection, Any]] = []
        self._owned = 0
        self._closed = False
        # Calls waiting for a connection: given one, or None (borrow one from the pool).
        self._waiters: deque[asyncio.Future[tuple[AsyncConnection, Any] | None]] = deque()

    @asynccontextmanager
    async def link(self) -> AsyncIterator[Any]:
        """A connection of this worker's for a few statements; one that failed in a way
        that may have left it broken (lost, cancelled) is dropped from the pool."""
        pair = await self._acquire()
        try:
            yield pair[1]
        except BaseException as exc:
            if _healthy(exc):
                await self._give(pair)
            else:
                self._owned -= 1
                self._hand_over(None)
                await asyncio.shield(_drop(pair[0]))
            raise
        await self._give(pair)

    async def _acquire(self) -> tuple[AsyncConnection, Any]:
        if self._idle:
            return self._idle.pop()
        if self._owned >= self.limit:
            waiting: asyncio.Future[tuple[AsyncConnection, Any] | None]
            waiting = asyncio.get_running_loop().create_future()
            self._waiters.append(waiting)
            try:
                pair = await waiting
            except asyncio.CancelledError:
                if waiting.done() and not waiting.cancelled():
                    self._hand_over(waiting.result())  # on to the next, or kept
                else:
                    self._waiters.remove(waiting)
                raise
            if pair is not None:
                return pair
        self._owned += 1
        try:
            return await self._borrow()
        except BaseException:
            self._owned -= 1
            self._hand_over(None)
            raise

    async def _borrow(self) -> tuple[AsyncConnection, Any]:
        conn = await self.engine.connect()
        try:
            raw = await conn.get_raw_connection()
        except BaseException:
            await asyncio.shield(_drop(conn))
            raise
        return conn, raw.driver_connection

    def _hand_over(self, pair: tuple[AsyncConnection, Any] | None) -> bool:
        """``pair`` (or, None, leave to borrow one) to the first call still waiting."""
        while self._waiters:
            waiting = self._waiters.popleft()
            if not waiting.done():
                waiting.set_result(pair)
                return True
        if pair is not None:
            self._idle.append(pair)
            return True
        return False

    async def _give(self, pair: tuple[AsyncConnection, Any]) -> None:
        if not self._closed and (self._waiters or len(self._idle) < self.keep):
            self._hand_over(pair)
            return
        self._owned -= 1  # back to the engine's pool
        await asyncio.shield(pair[0].close())

    async def fetch(self, sql: Sql, params: dict[str, Any]) -> list[Any]:
        """The rows of one statement that commits itself."""
        async with self.link() as conn:
            with _told(sql):
                rows: list[Any] = await conn.fetch(sql.text, *sql.args(params))
        return rows

    async def count(self, sql: Sql, params: dict[str, Any]) -> int:
        """The rows one statement (that commits itself) changed."""
        async with self.link() as conn:
            with _told(sql):
                status: str = await conn.execute(sql.text, *sql.args(params))
        return int(status.rsplit(" ", 1)[-1] or 0)

    async def close(self) -> None:
        """Give the idle connections back to the engine's pool, and those in use as they
        come back."""
        self._closed = True
        idle, self._idle = self._idle, []
        self._owned -= len(idle)
        for conn, _ in idle:
            with suppress(Exception):
                await conn.close()


def _healthy(exc: BaseException) -> bool:
    """The connection is fine after ``exc``: the server refused the statement itself."""
    import asyncpg

    return isinstance(exc, asyncpg.PostgresError) and not isinstance(
        exc, asyncpg.exceptions.PostgresConnectionError
    )


async def _drop(conn: AsyncConnection) -> None:
    with suppress(Exception):
        await conn.invalidate()
    with suppress(Exception):
        await conn.close()


__all__ = [
    "OBSERVERS",
    "AlchemyLink",
    "Link",
    "Observer",
    "PgLinks",
    "Sql",
    "SqliteLink",
    "compile_sql",
]
