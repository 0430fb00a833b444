"""Counts how many answers a service runs at once, for tests of the per-worker answer cap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


class AnswersAtOnce:
    """Wraps ``service.answer``; ``most`` is the largest number of answers that ran together.

    An answer runs from its first event after ``Accepted`` (its slot taken, its text coming)
    to its end: a claimed message may wait for its conversation and a slot before that."""

    def __init__(self, service: Any) -> None:
        self.running = 0
        self.most = 0
        self._answer = service.answer
        service.answer = self._counted

    async def _counted(self, inbound: Any, **options: Any) -> AsyncIterator[Any]:
        started = False
        try:
            async for event in self._answer(inbound, **options):
                if not started and type(event).__name__ != "Accepted":
                    started = True
                    self.running += 1
                    self.most = max(self.most, self.running)
                yield event
        finally:
            if started:
                self.running -= 1
