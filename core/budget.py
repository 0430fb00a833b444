"""Write budgets: how many writes a deployment may make to one place of a platform.

Platforms limit writes per workspace and method (Slack's tiers), per channel or per
interaction token (Discord). A ``WriteBudget`` keeps one token bucket per such key, shared by
every answer (and, through Redis, by every worker) of a deployment, so Parley plans its writes
inside the limits instead of running into 429s (whose retries stay the safety net).

Final writes have priority: a progress write takes a token only while more than ``reserve``
are left, and is skipped otherwise (the next one, or the final write, shows the text); a final
write waits for a token. So under load updates come less often, and the last write of an
answer never waits behind other answers' intermediate updates.

``LocalBudget`` keeps the buckets in this process (one worker); ``adapters.budget_redis``
shares them through Redis. ``shared()`` is the deployment's budget (the composition root
chooses it with ``use()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

WriteKind = Literal["progress", "final"]

# Longest single sleep of a final write waiting for its token (it asks again afterwards).
MAX_POLL = 2.0
# Safety margin under a platform's stated limit (clocks, latency, other clients of the token).
MARGIN = 0.9


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket: ``burst`` writes at once, refilled at ``per_second``; progress writes
    leave ``reserve`` tokens for final writes."""

    per_second: float
    burst: float
    reserve: float = 1.0

    @classmethod
    def within(cls, limit: int, window: float) -> Rate:
        """A bucket that never makes more than ``limit`` writes in any ``window`` seconds
        (burst + rate x window stays under the limit, with a margin). A quarter of the limit
        comes at once; progress writes leave a quarter of that to final writes."""
        burst = max(2.0, float(round(limit / 4)))
        per_second = max(limit - burst, 1.0) * MARGIN / window
        return cls(per_second, burst, reserve=max(1.0, float(burst // 4)))

    @property
    def per_minute(self) -> float:
        return self.per_second * 60

    @property
    def progress_reserve(self) -> float:
        """Tokens a progress write leaves for final writes (at most burst - 1, so a full
        bucket always admits one)."""
        return max(0.0, min(self.reserve, self.burst - 1))


class WriteBudget(Protocol):
    """Token buckets keyed by the place a write goes to."""

    async def take(self, key: str, rate: Rate, reserve: float) -> float:
        """Take one token from ``key``'s bucket if at least ``reserve + 1`` are there: 0.0.
        Otherwise take nothing and return the seconds until there would be."""
        ...


class LocalBudget:
    """Token buckets in this process: the budget of a single worker."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._calls = 0

    async def take(self, key: str, rate: Rate, reserve: float) -> float:
        now = self.clock()
        self._calls += 1
        if self._calls % 1000 == 0:
            self._sweep(now)
        tokens, stamp = self._buckets.get(key, (rate.burst, now))
        tokens = min(rate.burst, tokens + max(0.0, now - stamp) * rate.per_second)
        if tokens >= reserve + 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (reserve + 1 - tokens) / rate.per_second

    def _sweep(self, now: float) -> None:
        """Forget buckets untouched for a minute or more (a full bucket needs no entry)."""
        idle = [key for key, (_, stamp) in self._buckets.items() if stamp < now - 60]
        for key in idle:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


async def admit(budget: WriteBudget, key: str, rate: Rate, *, final: bool) -> bool:
    """Whether a write to ``key`` may go out now. A progress write never waits (False: skip
    it); a final write waits for its token and is always admitted."""
    if not final:
        return await budget.take(key, rate, rate.progress_reserve) <= 0
    while True:
        wait = await budget.take(key, rate, 0.0)
        if wait <= 0:
            return True
        # A little jitter so final writes waiting in several workers don't ask in lockstep.
        await asyncio.sleep(min(wait, MAX_POLL) * (1 + random.random() / 10))


# --- the deployment's budget, and what kind of write is under way --------------------------

_shared: WriteBudget = LocalBudget()
_kind: contextvars.ContextVar[WriteKind] = contextvars.ContextVar(
    "parley_write_kind", default="final"
)


def shared() -> WriteBudget:
    """The budget every adapter of this process writes under."""
    return _shared


def use(budget: WriteBudget) -> WriteBudget:
    """Make ``budget`` the deployment's budget (the composition root); returns the old one."""
    global _shared
    old, _shared = _shared, budget
    return old


def current_kind() -> WriteKind:
    """The kind of the write under way: ``progress`` inside ``start``/``progress`` of an
    answer, ``final`` otherwise (a final answer, an apology, a command reply)."""
    return _kind.get()


@contextlib.contextmanager
def writing(kind: WriteKind) -> Iterator[None]:
    """Mark the writes made inside the block as ``kind`` (``core.delivery`` does)."""
    token = _kind.set(kind)
    try:
        yield
    finally:
        _kind.reset(token)


__all__ = [
    "LocalBudget",
    "Rate",
    "WriteBudget",
    "WriteKind",
    "admit",
    "current_kind",
    "shared",
    "use",
    "writing",
]
