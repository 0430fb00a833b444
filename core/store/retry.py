"""A database that refuses or drops connections costs time, not messages.

Each store call is one short transaction; when the database is unreachable, restarting, out of
connection slots or fails over, the call is tried again with growing waits for up to a patience
(``PARLEY_DB_RETRY_SECONDS``) before the error goes on. Anything else (a constraint, a bad
query) fails at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, DisconnectionError

log = logging.getLogger("parley.store")

PATIENCE = 60.0
FIRST_WAIT, LONGEST_WAIT = 0.1, 3.0

# What a database says when it can't take a connection now (PostgreSQL's SQLSTATEs for too
# many connections, starting up or shutting down, and "connection failure" classes).
_TRANSIENT_STATES = (
    "53300",
    "57P01",
    "57P02",
    "57P03",
    "08000",
    "08001",
    "08003",
    "08004",
    "08006",
)
_TRANSIENT_WORDS = (
    "too many clients",
    "the database system is starting up",
    "the database system is shutting down",
    "connection refused",
    "connection was closed",
    "connection is closed",
    "connection reset",
    "database is locked",
)

T = TypeVar("T")


def transient(exc: BaseException) -> bool:
    """True for errors that mean "the database can't be reached right now" (never for a
    mistake such as a missing column, which waiting would not mend)."""
    if isinstance(exc, (ConnectionError, TimeoutError, DisconnectionError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
    if isinstance(exc, (OSError, ConnectionError, TimeoutError)):
        return True
    state = str(getattr(exc, "sqlstate", "") or getattr(exc, "pgcode", "") or "")
    if state in _TRANSIENT_STATES:
        return True
    words = str(exc).lower()
    return any(word in words for word in _TRANSIENT_WORDS) or _disconnected(exc)


def _disconnected(exc: BaseException) -> bool:
    """asyncpg's own words for a connection that is gone."""
    name = type(exc).__name__
    return name in {"ConnectionDoesNotExistError", "InterfaceError", "CannotConnectNowError"}


async def retrying(call: Callable[[], Awaitable[T]], *, patience: float = PATIENCE) -> T:
    """``await call()``, tried again while the database is unreachable (see ``transient``),
    for at most ``patience`` seconds of waiting."""
    since = asyncio.get_running_loop().time()
    try:
        return await call()
    except Exception as exc:
        return await again(call, exc, since, patience)


async def again(
    call: Callable[[], Awaitable[T]], failed: Exception, since: float, patience: float
) -> T:
    """``call`` (first tried at loop time ``since``, failing with ``failed``) tried again as
    ``retrying`` does; ``failed`` raised at once unless it is ``transient``."""
    loop = asyncio.get_running_loop()
    give_up = since + patience
    wait = FIRST_WAIT
    exc = failed
    while True:
        if not transient(exc) or loop.time() + wait > give_up:
            raise exc
        log.warning("database unreachable (%s); trying again in %.1f s", _kind(exc), wait)
        await asyncio.sleep(wait * (0.5 + random.random()))  # noqa: S311 (jitter, not crypto)
        wait = min(LONGEST_WAIT, wait * 2)
        try:
            return await call()
        except Exception as error:  # noqa: PERF203 (tried again)
            exc = error


def _kind(exc: BaseException) -> str:
    """The error's class, and its cause's: never its message (it may carry a query's data)."""
    cause = getattr(exc, "orig", None) or exc.__cause__
    return type(exc).__name__ + (f"/{type(cause).__name__}" if cause is not None else "")
