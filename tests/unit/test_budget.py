"""``core.budget``: token buckets where final writes come before progress writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from core import budget
from core.budget import LocalBudget, Rate, admit
from core.delivery import BudgetPacing, deliver
from core.messages import Accepted, FinalText, ReplyEvent, TextDelta


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_bucket_gives_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    local = LocalBudget(clock)
    rate = Rate(per_second=0.5, burst=3, reserve=1)
    assert [await local.take("k", rate, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await local.take("k", rate, 0.0) == 2.0  # one token takes 2 s
    clock.now = 2.0
    assert await local.take("k", rate, 0.0) == 0.0
    assert await local.take("other", rate, 0.0) == 0.0  # keys are separate buckets


async def test_progress_writes_leave_the_reserve_to_final_writes() -> None:
    local = LocalBudget(Clock())
    rate = Rate(per_second=0.01, burst=4, reserve=2)
    assert [await admit(local, "k", rate, final=False) for _ in range(3)] == [True, True, False]
    # Two tokens are left, and only final writes get them.
    assert await admit(local, "k", rate, final=True)
    assert await admit(local, "k", rate, final=True)
    assert await local.take("k", rate, 0.0) > 0


def test_within_stays_under_the_limit_in_any_window() -> None:
    for limit, window in [(20, 60.0), (50, 60.0), (100, 60.0), (12, 10.0), (5, 5.0)]:
        rate = Rate.within(limit, window)
        assert rate.burst + rate.per_second * window <= limit
        assert 0 < rate.progress_reserve < rate.burst


class Recorder:
    def __init__(self) -> None:
        self.kinds: list[tuple[str, str]] = []

    async def start(self) -> None:
        self.kinds.append(("start", budget.current_kind()))

    async def progress(self, text: str) -> None:
        self.kinds.append(("progress", budget.current_kind()))

    async def finish(self, text: str) -> None:
        self.kinds.append(("finish", budget.current_kind()))

    async def fail(self, text: str) -> None:
        self.kinds.append(("fail", budget.current_kind()))


async def events(n: int) -> AsyncIterator[ReplyEvent]:
    yield Accepted()
    for i in range(n):
        yield TextDelta(f"w{i} ")
        await asyncio.sleep(0)
    yield FinalText("done", "gpt-4o")


async def test_deliver_skips_progress_without_headroom_and_always_finishes() -> None:
    local = LocalBudget()
    rate = Rate(per_second=0.001, burst=3, reserve=1)
    renderer = Recorder()
    done = await deliver(events(20), renderer, BudgetPacing(0, "place", rate, local))
    assert done.outcome == "answered"
    # start and one progress took 2 tokens; progress then stopped at the reserve, and the
    # final write took the token kept for it.
    assert renderer.kinds == [("start", "progress"), ("progress", "progress"), ("finish", "final")]
    assert budget.current_kind() == "final"  # outside an answer, every write is final


async def test_the_deployment_budget_can_be_replaced() -> None:
    mine = LocalBudget()
    previous = budget.use(mine)
    try:
        assert budget.shared() is mine
    finally:
        budget.use(previous)
    assert budget.shared() is previous
