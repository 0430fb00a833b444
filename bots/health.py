"""Whether a worker can do its job: its platforms are connected and its database answers.

``/healthz`` answers 200 with ``{"ok": true}`` then, else 503 with the problems in a few words
(``{"ok": false, "problems": ["discord is not connected"]}``), so a load balancer or an
orchestrator's readiness probe takes the worker out of rotation until it recovers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from core.ports import Store
from core.store.sql import SqlStore

# How long the database may take to answer a health check.
PING_SECONDS = 2.0

Ping = Callable[[], Awaitable[object]]


def database_ping(store: Store) -> Ping | None:
    """How to ask ``store``'s database whether it answers: its own ``ping()`` when it has one,
    ``SELECT 1`` for the SQL store; None for a store with nothing to ask (in memory)."""
    ping = getattr(store, "ping", None)
    if callable(ping):
        return ping  # type: ignore[no-any-return]
    if isinstance(store, SqlStore):
        engine = store.engine

        async def select_one() -> None:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

        return select_one
    return None


@dataclass
class Health:
    """The health of one worker: each adapter that can tell (``connected``) and the database."""

    adapters: Sequence[object]
    database: Ping | None
    timeout: float = PING_SECONDS

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the JSON body /healthz answers with)."""
        problems = [
            f"{getattr(adapter, 'name', 'a platform')} is not connected"
            for adapter in self.adapters
            if getattr(adapter, "connected", True) is False
        ]
        if self.database is not None:
            try:
                await asyncio.wait_for(self.database(), self.timeout)
            except Exception as exc:  # any failure means: not answering
                problems.append(f"the database does not answer ({type(exc).__name__})")
        body: dict[str, Any] = {"ok": not problems}
        if problems:
            body["problems"] = problems
        return not problems, body
