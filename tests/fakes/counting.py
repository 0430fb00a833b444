"""Counts what Parley asks of its database: statements and transactions, on every engine.

A hook on SQLAlchemy's ``Engine`` class (so every engine, sync or under an async one, in any
thread): ``before_cursor_execute`` counts statements, ``begin``/``commit``/``rollback`` count
transactions. A transaction on an AUTOCOMMIT connection (one statement that commits itself,
no BEGIN or COMMIT sent) is counted as a transaction and also in ``autocommit``; round trips
are the statements plus a BEGIN and a COMMIT for each of the others.

A turn's statements that the store sends on the database driver itself, past SQLAlchemy
(``core.store.driver``), are counted alike: this counter observes that module too, where it
exists. Used by the round-trip tests and by ``bench/core_overhead.py`` (which loads this file
by its path, so it also counts an older Parley's store).
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine


def _driver_observers() -> list[Any] | None:
    """``core.store.driver.OBSERVERS`` of the Parley being measured (None before it had one)."""
    try:
        from core.store import driver
    except ImportError:
        return None
    return driver.OBSERVERS


class Counting:
    """While entered, counts statements (``statements``) and transactions (``begins``, each
    ended by a ``commits`` or a ``rollbacks``). ``reset()`` starts again from zero."""

    def __init__(self, *, keep_sql: bool = False) -> None:
        self.keep_sql = keep_sql
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.statements = 0
            self.begins = 0
            self.autocommit = 0
            self.commits = 0
            self.rollbacks = 0
            self.sql: list[str] = []

    @property
    def transactions(self) -> int:
        return self.begins

    @property
    def round_trips(self) -> int:
        return self.statements + 2 * (self.begins - self.autocommit)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "statements": self.statements,
                "transactions": self.begins,
                "autocommit": self.autocommit,
                "round_trips": self.round_trips,
                "commits": self.commits,
                "rollbacks": self.rollbacks,
            }

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        with self._lock:
            self.statements += 1
            if self.keep_sql:
                self.sql.append(" ".join(statement.split())[:120])

    def _begin(self, conn: Any) -> None:
        self.begin(conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT")

    # --- ``core.store.driver.Observer``: what the store sends past SQLAlchemy ----------------

    def statement(self, sql: str) -> None:
        self._statement(None, None, sql)

    def begin(self, autocommit: bool) -> None:
        with self._lock:
            self.begins += 1
            self.autocommit += autocommit
            if self.keep_sql:
                self.sql.append("BEGIN")

    def commit(self) -> None:
        self._commit(None)

    def rollback(self) -> None:
        self._rollback(None)

    def _commit(self, _conn: Any) -> None:
        with self._lock:
            self.commits += 1
            if self.keep_sql:
                self.sql.append("COMMIT")

    def _rollback(self, _conn: Any) -> None:
        with self._lock:
            self.rollbacks += 1
            if self.keep_sql:
                self.sql.append("ROLLBACK")

    def _hooks(self) -> list[tuple[str, Any]]:
        return [
            ("before_cursor_execute", self._statement),
            ("begin", self._begin),
            ("commit", self._commit),
            ("rollback", self._rollback),
        ]

    def __enter__(self) -> Counting:
        for name, hook in self._hooks():
            event.listen(Engine, name, hook)
        observers = _driver_observers()
        if observers is not None:
            observers.append(self)
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        for name, hook in self._hooks():
            event.remove(Engine, name, hook)
        observers = _driver_observers()
        if observers is not None and self in observers:
            observers.remove(self)
