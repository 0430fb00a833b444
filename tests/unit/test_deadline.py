"""The deadline on waits: only the time spent waiting counts, and a cancel from outside stays
a cancel."""

from __future__ import annotations

import asyncio

import pytest

from core.deadline import WaitDeadline


async def test_work_between_waits_does_not_count_but_waits_add_up():
    deadline = WaitDeadline(0.2)
    done = 0
    with pytest.raises(TimeoutError):
        for _ in range(10):
            await deadline.wait(asyncio.sleep(0.06))
            done += 1
            await asyncio.sleep(0.15)  # the caller's own time, past the limit by itself
    deadline.close()
    assert deadline.expired
    assert done == 3  # 0.18 s waited after three; the fourth wait goes past 0.2 s


async def test_a_wait_within_the_limit_returns_its_result():
    deadline = WaitDeadline(1.0)

    async def item() -> str:
        await asyncio.sleep(0.01)
        return "x"

    assert await deadline.wait(item()) == "x"
    deadline.close()
    assert not deadline.expired


async def test_a_longer_limit_lets_a_wait_go_past_the_first_one():
    deadline = WaitDeadline(0.05)
    await deadline.wait(asyncio.sleep(0.01))
    deadline.limit = 0.5
    await deadline.wait(asyncio.sleep(0.1))
    deadline.limit = 0.05  # shorter again: the next wait is already past it
    with pytest.raises(TimeoutError):
        await deadline.wait(asyncio.sleep(1))
    deadline.close()


async def test_a_cancel_from_outside_is_not_taken_for_the_deadline():
    async def waiting() -> None:
        deadline = WaitDeadline(10)
        try:
            await deadline.wait(asyncio.sleep(5))
        finally:
            deadline.close()

    task = asyncio.create_task(waiting())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_awaited_calls_own_timeout_is_not_the_deadlines():
    async def failing() -> None:
        raise TimeoutError

    deadline = WaitDeadline(10)
    with pytest.raises(TimeoutError):
        await deadline.wait(failing())
    deadline.close()
    assert not deadline.expired
