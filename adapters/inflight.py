"""Handlers still running, so stopping an adapter lets answers in progress finish."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class InFlight:
    """The set of handler tasks currently answering someone.

    Once ``close()`` is called, ``closing`` is True and handlers take no new work; ``wait()``
    lets the ones in flight finish and ``cancel()`` cuts the rest short.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()
        self.closing = False

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count the current task as in flight for the duration of the block."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._tasks.discard(task)

    def close(self) -> None:
        """Stop taking new events: handlers check ``closing`` before starting any work."""
        self.closing = True

    async def wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the handlers in flight to finish."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=seconds)

    async def cancel(self, seconds: float) -> None:
        """Cancel the handlers still in flight and give them ``seconds`` to say so and end."""
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=seconds)

    def __len__(self) -> int:
        return len(self._tasks)
