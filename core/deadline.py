"""A deadline on the time a task spends waiting, not on the work it does in between.

The core gives the model a time for its first item and a time for the whole answer, and counts
only the waits for the model's items, never the caller's work between them. One timer serves
a whole stream: it is armed once, and moved only when it fires early (the caller worked in
between) rather than armed and cancelled around every one of an answer's hundreds of items.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class WaitDeadline:
    """At most ``limit`` seconds of waiting, added up over the awaits passed to ``wait``.

    ``wait`` raises TimeoutError once the waits exceed the limit (``expired`` says it was
    this deadline, not the awaited call, that timed out). Created, awaited and closed in one
    task; ``close`` when done, so no timer is left behind.
    """

    def __init__(self, limit: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "WaitDeadline is used inside a task"
        self._task = task
        self._limit = limit
        self._waited = 0.0
        self._since: float | None = None  # when the current wait began
        self._timer: asyncio.TimerHandle | None = None
        self.expired = False

    @property
    def limit(self) -> float:
        return self._limit

    @limit.setter
    def limit(self, limit: float) -> None:
        """A new allowance for the waits so far and to come; a larger one moves the timer
        only when it fires."""
        shorter = limit < self._limit
        self._limit = limit
        if shorter and self._timer is not None:
            self._timer.cancel()
            self._timer = None
            if self._since is not None:
                self._arm(self._loop.time())

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """``awaitable``'s result, the time waited for it counted against the limit."""
        now = self._loop.time()
        self._since = now
        if self._timer is None:
            self._arm(now)
        cancelling = self._task.cancelling()
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self.expired and self._task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            self._waited += self._loop.time() - now
            self._since = None

    def close(self) -> None:
        """Stop the timer (the stream ended, however it ended)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, now: float) -> None:
        waited = self._waited + (now - self._since if self._since is not None else 0.0)
        self._timer = self._loop.call_at(now + self._limit - waited, self._fire)

    def _fire(self) -> None:
        """The timer is due: cancel the wait if the waits used up the limit, else (the
        caller's work between waits moved the deadline) arm again for the rest. Between
        waits nothing is armed: the next wait arms the timer."""
        self._timer = None
        if self._since is None:
            return
        now = self._loop.time()
        if self._waited + now - self._since < self._limit:
            self._arm(now)
            return
        self.expired = True
        self._task.cancel()
