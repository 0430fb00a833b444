"""Per-user message rate limits, so one person cannot flood the bot or run up the bill.

``UserRate`` is what the conversation service asks; ``MessageRate`` counts in this process
(one worker), ``adapters.budget_redis.RedisMessageRate`` across every worker of a deployment.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol


class UserRate(Protocol):
    """At most ``limit`` messages per ``window`` seconds per user."""

    limit: int

    async def check(self, platform: str, user_id: str) -> float:
        """0 if the user may send now (and counts the message), else seconds until they may."""
        ...


class MessageRate:
    """At most ``limit`` messages per ``window`` seconds per user, in this process.

    Entries of users who went quiet are dropped, so memory stays flat with many users.
    """

    def __init__(
        self, limit: int, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._hits: dict[tuple[str, str], deque[float]] = {}
        self._calls = 0

    def wait_for(self, platform: str, user_id: str) -> float:
        """0 if the user may send now (and counts the message), else seconds until they may."""
        now = self.clock()
        self._calls += 1
        if self._calls % 1000 == 0:
            self._sweep(now)
        hits = self._hits.setdefault((platform, user_id), deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] + self.window - now
        hits.append(now)
        return 0.0

    async def check(self, platform: str, user_id: str) -> float:
        """``wait_for`` as a ``UserRate``."""
        return self.wait_for(platform, user_id)

    def _sweep(self, now: float) -> None:
        idle = [k for k, hits in self._hits.items() if not hits or hits[-1] <= now - self.window]
        for key in idle:
            del self._hits[key]

    def __len__(self) -> int:
        return len(self._hits)
