"""Counts how many answers a service runs at once, for tests of the per-worker answer cap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


class AnswersAtOnce:
    """Wraps ``service.answer``; ``most`` is the largest number of answers that ran together."""

    def __init__(self, service: Any) -> None:
        self.running = 0
        self.most = 0
        self._answer = service.answer
        service.answer = self._counted

    async def _counted(self, inbound: Any) -> AsyncIterator[Any]:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            async for event in self._answer(inbound):
                yield event
        finally:
            self.running -= 1
