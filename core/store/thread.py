"""The store's own thread on a SQLite file: its calls run there one at a time, in the order
they were asked (SQLite has one writer at a time), off the event loop.

A call is one item on a queue, and its result one item back; the event loop is woken once
for every result that came in while it was busy, not once per result (a worker answering
many conversations at once has several calls in flight).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Stop:
    """Set when a call's caller stops waiting for it (``threading.Event``'s ``set`` and
    ``is_set``, without its lock and condition: one is made per store call)."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class _Inbox:
    """Results of calls made from one event loop, handed to it in one wake-up."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._done: deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = deque()
        self._waking = False

    def put(self, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        """On the store's thread: a call's outcome, the loop woken unless it is already."""
        self._done.append((future, result, error))
        if self._waking:
            return
        self._waking = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody waits for these any more
            pass

    def _deliver(self) -> None:
        # Reset before draining: a result put meanwhile is drained here or wakes the loop.
        self._waking = False
        done = self._done
        while done:
            future, result, error = done.popleft()
            if future.cancelled():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)


class StoreThread:
    """Runs calls on one thread of its own (started at the first call), one at a time."""

    def __init__(self, name: str = "parley-store") -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._inbox: _Inbox | None = None
        self._closed = False

    async def call(self, stop: Stop, work: Callable[[], T]) -> T:
        """``work()`` on the store's thread. If the caller stops waiting (cancelled),
        ``stop`` is set: a call not yet begun is skipped, one under way sees it."""
        if self._closed:
            raise RuntimeError("the store's thread is closed")
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        if inbox is None or inbox.loop is not loop:
            inbox = self._inbox = _Inbox(loop)
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((inbox, future, stop, work))
        try:
            return await future
        except asyncio.CancelledError:
            stop.set()
            raise

    def _serve(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            inbox, future, stop, work = job
            if stop.is_set():  # its caller is gone: not begun
                continue
            try:
                result, error = work(), None
            except BaseException as exc:  # noqa: BLE001 (handed to the caller)
                result, error = None, exc
            inbox.put(future, result, error)

    async def close(self, last: Callable[[], Any]) -> None:
        """``last()`` as the thread's last call, then the thread ends."""
        if self._closed:
            return
        try:
            await self.call(Stop(), last)
        finally:
            self._closed = True
            self._jobs.put(None)
