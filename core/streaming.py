"""Coalesce a stream of reply events into snapshots an adapter can render at a bounded cadence.

Platforms limit how often a message may be edited; adapters show the answer growing by editing
one message at most once per ``interval`` seconds. This turns the core's token-by-token deltas
into such snapshots without the adapter tracking timing itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from core.messages import FinalText, ReplyEvent, TextDelta, UserError


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The answer so far; render it by editing the message in place."""

    text: str


async def paced(
    events: AsyncIterator[ReplyEvent], interval: float = 1.0
) -> AsyncIterator[Snapshot | ReplyEvent]:
    """Yield a ``Snapshot`` of the accumulated text at most once per ``interval`` seconds.

    Every other event passes through unchanged and in order; ``FinalText`` carries the whole
    answer, so no text is lost when the last deltas were not shown as a snapshot.
    """
    text = ""
    shown = ""
    last = 0.0
    queue: asyncio.Queue[ReplyEvent | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in events:
                await queue.put(event)
        finally:
            await queue.put(None)

    task = asyncio.create_task(pump())
    try:
        while True:
            timeout = None
            if text != shown:
                timeout = max(0.0, last + interval - time.monotonic())
            try:
                event = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                shown, last = text, time.monotonic()
                yield Snapshot(text)
                continue
            if event is None:
                break
            if isinstance(event, TextDelta):
                text += event.text
                if time.monotonic() - last >= interval:
                    shown, last = text, time.monotonic()
                    yield Snapshot(text)
                continue
            if isinstance(event, FinalText | UserError):
                # The answer is settled; a late snapshot would overwrite it.
                shown = text
            yield event
        await task
    finally:
        if not task.done():
            task.cancel()
            # Wait for the answer's own clean-up (locks, stored state) before returning.
            with contextlib.suppress(asyncio.CancelledError):
                await task
