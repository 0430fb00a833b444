"""The store's own thread: calls run there one at a time in the order asked, their results
and errors come back to their callers, and a call whose caller is gone before it began is
never run."""

from __future__ import annotations

import asyncio
import threading

import pytest

from core.store.thread import Stop, StoreThread


async def test_calls_run_on_one_thread_in_order_and_return_their_results() -> None:
    thread = StoreThread()
    ran: list[tuple[int, str]] = []

    def work(i: int) -> int:
        ran.append((i, threading.current_thread().name))
        return i * i

    results = await asyncio.gather(*(thread.call(Stop(), lambda i=i: work(i)) for i in range(50)))
    assert results == [i * i for i in range(50)]
    assert [i for i, _ in ran] == list(range(50))
    assert {name for _, name in ran} == {"parley-store"}
    await thread.close(lambda: None)


async def test_an_error_reaches_its_caller_and_the_thread_goes_on() -> None:
    thread = StoreThread()

    def fails() -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await thread.call(Stop(), fails)
    assert await thread.call(Stop(), lambda: "next") == "next"
    await thread.close(lambda: None)


async def test_a_call_cancelled_before_it_began_is_never_run() -> None:
    thread = StoreThread()
    release = threading.Event()
    ran: list[str] = []
    busy = asyncio.ensure_future(thread.call(Stop(), lambda: release.wait(10)))
    stop = Stop()
    waiting = asyncio.ensure_future(thread.call(stop, lambda: ran.append("late")))
    await asyncio.sleep(0)  # both calls queued, the first under way
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert stop.is_set()
    release.set()
    assert await busy is True
    assert await thread.call(Stop(), lambda: "after") == "after"
    assert ran == []
    await thread.close(lambda: None)


async def test_a_closed_thread_takes_no_more_calls() -> None:
    thread = StoreThread()
    closed: list[bool] = []
    await thread.close(lambda: closed.append(True))
    assert closed == [True]
    with pytest.raises(RuntimeError):
        await thread.call(Stop(), lambda: None)
