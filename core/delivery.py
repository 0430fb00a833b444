"""The delivery contract: how every adapter shows an answer from the core.

An adapter implements ``Renderer`` (four writes: that an answer is coming, the answer so far,
the finished answer, the sentence ending a request that got no answer) and calls ``deliver(events, renderer, pacing)``.
``deliver`` owns everything the platforms have in common:

- it coalesces the model's deltas into ``progress`` writes no more often than ``pacing``
  allows, the first one an interval after the first text (a short answer is written once,
  whole), and the final write waits its turn too, so a platform's write limit holds for every
  write of an answer;
- it composes the text people see (the answer, or "empty answer", then the notes; a failure
  sentence, then the notes) from ``core.sentences``, so every platform says the same thing;
- it always ends in exactly one ``finish`` or ``fail``: a stream that ends without an answer
  fails with ``GENERIC_ERROR``, and an answer cut by shutdown (the task cancelled) fails with
  ``RESTARTED`` before the cancellation goes on;
- it drains the core's events to the end even when the platform refuses a write, so the core
  still stores the turn and charges its usage; the first refused final write is raised after.

A ``progress`` write that fails is logged and skipped: the next one (or the final one) shows
the text.

Write budgets (``core.budget``): every renderer call runs marked as a ``progress`` or ``final``
write (``core.budget.current_kind()``), so a platform client can budget each of its calls; a
``Pacing`` that also has ``admit(final)`` (``BudgetPacing``) is asked before each write: a
progress write it refuses is skipped (the text shows with a later write), a final one waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from core import budget, sentences
from core.messages import (
    Accepted,
    FinalText,
    Notice,
    ReplyEvent,
    TextDelta,
    UsageReport,
    UserError,
    Withdrawn,
)

log = logging.getLogger("parley.delivery")

Outcome = Literal["answered", "failed", "nothing", "cut"]


class Renderer(Protocol):
    """One answer's writes on one platform. Text is Markdown, as the model writes it; the
    renderer turns it into the platform's markup and splits it at the platform's limits."""

    async def start(self) -> None:
        """The core took the request on: show that an answer is coming (a placeholder, a
        status). Never called for a redelivered message, which gets no writes at all."""
        ...

    async def progress(self, text: str) -> None:
        """Show the answer so far (it only grows). Best effort: may be skipped on failure."""
        ...

    async def finish(self, text: str) -> None:
        """Show the complete answer (notes included); close anything still open."""
        ...

    async def fail(self, text: str) -> None:
        """End a request that got no answer with ``text`` (the reason, then the notes).

        Text already shown by ``progress`` stays; the sentence follows it."""
        ...


class Journal(Protocol):
    """Where ``deliver`` keeps what an answer has shown (``core.recovery.Journal``), so another
    worker can finish it if this one dies. A renderer that can be resumed has ``record()``:
    a JSON-able mapping of what it has shown (message ids, open streams), and may have
    ``tidied(then)``: it runs ``then`` (``delivered``) once what the final write replaced
    is taken down, so a worker dying before that leaves the answer to be finished again."""

    async def shown(self, record: Mapping[str, Any]) -> None: ...

    async def delivered(self, record: Mapping[str, Any] | None = None) -> bool:
        """The answer is shown in full; False when another worker took it over meanwhile.
        ``record``: what the renderer shows in the end, kept with it."""
        ...


class Pacing(Protocol):
    """When the next write to one place may go out (a platform's write limit)."""

    def delay(self) -> float:
        """Seconds until the next write may go out; 0 when it may go now."""
        ...

    def wrote(self) -> None:
        """Record that a write went out."""
        ...


@dataclass(slots=True)
class Interval:
    """At most one write per ``seconds`` (0: every write goes at once)."""

    seconds: float
    _last: float = field(default=float("-inf"), init=False)

    def delay(self) -> float:
        return max(0.0, self._last + self.seconds - time.monotonic())

    def wrote(self) -> None:
        self._last = time.monotonic()


class Admitting(Pacing, Protocol):
    """A pacing that also budgets writes: whether one may go out now."""

    async def admit(self, final: bool) -> bool:
        """A progress write: True if it may go now (else skip it). A final write: wait until
        it may go, then True."""
        ...


class BudgetPacing:
    """At most one progress write per ``seconds``, and every write within the deployment's
    write budget for ``key`` (a channel, an interaction token). A refused progress write holds
    the next one back until the budget would admit it."""

    def __init__(
        self,
        seconds: float,
        key: str,
        rate: budget.Rate,
        write_budget: budget.WriteBudget | None = None,
    ) -> None:
        self.interval = Interval(seconds)
        self.key = key
        self.rate = rate
        self.budget = write_budget
        self._held_until = float("-inf")

    def delay(self) -> float:
        return max(self.interval.delay(), self._held_until - time.monotonic())

    def wrote(self) -> None:
        self.interval.wrote()

    async def admit(self, final: bool) -> bool:
        spent = self.budget if self.budget is not None else budget.shared()
        if final:
            return await budget.admit(spent, self.key, self.rate, final=True)
        wait = await spent.take(self.key, self.rate, self.rate.progress_reserve)
        self._held_until = time.monotonic() + wait
        return wait <= 0


async def _admitted(pacing: Pacing, final: bool) -> bool:
    admit = getattr(pacing, "admit", None)
    return True if admit is None else bool(await admit(final))


@dataclass(frozen=True, slots=True)
class Delivered:
    """How an answer ended: ``answered``, ``failed`` (a sentence was shown), ``nothing`` (the
    core yielded nothing: a redelivered event) or ``cut`` (shutdown)."""

    outcome: Outcome
    error_code: str | None = None
    usage: UsageReport | None = None


class _Answer:
    """What ``deliver`` has seen of the answer, and its writes to the renderer."""

    def __init__(self, renderer: Renderer, pacing: Pacing, journal: Journal | None) -> None:
        self.renderer = renderer
        self.pacing = pacing
        self.journal = journal
        self.text = ""
        self.shown = ""
        self.notes: list[str] = []
        self.settled = False
        self.started = False
        self.refused: BaseException | None = None

    @property
    def behind(self) -> bool:
        return not self.settled and self.text != self.shown

    async def start(self) -> None:
        self.started = True
        self.pacing.wrote()
        if not await _admitted(self.pacing, False):
            return  # no budget to spare: the answer itself shows that it came
        try:
            with budget.writing("progress"):
                await self.renderer.start()
        except Exception as exc:  # the answer itself still comes
            log.warning("showing that an answer is coming failed (%s)", type(exc).__name__)
        await self.keep(unless_empty=True)  # no write for a record of nothing shown

    async def keep(self, *, unless_empty: bool = False) -> None:
        """Keep what the renderer shows with the claim (when both can); ``unless_empty``:
        not when the record reaches nothing yet."""
        record = getattr(self.renderer, "record", None)
        if self.journal is None or record is None:
            return
        shown = record()
        if unless_empty and not _reaches_something(shown):
            return
        await self.journal.shown(shown)

    async def progress(self) -> None:
        self.pacing.wrote()
        if not await _admitted(self.pacing, False):
            return  # skipped: a later write shows the text
        self.shown = self.text
        try:
            with budget.writing("progress"):
                await self.renderer.progress(self.text)
        except Exception as exc:  # the next write catches up
            log.warning("showing part of an answer failed (%s); skipped", type(exc).__name__)
        await self.keep()

    async def settle(self, final: bool, text: str) -> None:
        """The one final write: ``finish`` or ``fail``, after its turn under the pacing."""
        self.settled = True
        admit = getattr(self.pacing, "admit", None)
        if admit is not None:
            await admit(True)  # the budget is the write limit; it waits for the final write
        elif self.shown:
            # Spaced from the last progress write. Nothing else holds up an answer's first
            # text: the mark at its first text only defers progress writes.
            await asyncio.sleep(self.pacing.delay())
        self.pacing.wrote()
        try:
            with budget.writing("final"):
                await self._final(final, text)
        except Exception as exc:  # raised once the events are drained
            self.refused = exc
            await self.keep()  # nothing more is written: a record drops its credentials
            return
        if self.journal is None:
            return
        # A final write may have posted anew (a resume takes it down), and a record may
        # drop what it no longer needs (a credential to write with).
        tidied = getattr(self.renderer, "tidied", None)
        if final and tidied is None:  # the record goes with the answer's settling
            record = getattr(self.renderer, "record", None)
            await self._delivered(None if record is None else record())
            return
        await self.keep()
        if final:
            # A renderer still deleting what the final write replaced says when it is done.
            await cast(Any, tidied)(self._delivered)

    async def _delivered(self, record: Mapping[str, Any] | None = None) -> None:
        """Record that the answer is shown (with the renderer's ``record`` in the end, if
        given); when another worker took it over meanwhile (and shows it too), take this
        one down."""
        assert self.journal is not None
        if not await self.journal.delivered(record):
            log.warning("an answer shown was taken over by another worker; taking it down")
            await self.withdraw()

    async def withdraw(self) -> None:
        """Another worker took the answer over: take down what was shown (a renderer that
        can, ``withdraw()``), write nothing more."""
        self.settled = True
        withdraw = getattr(self.renderer, "withdraw", None)
        if withdraw is None:
            return
        try:
            with budget.writing("final"):
                await withdraw()
        except Exception as exc:
            log.warning("taking down a withdrawn answer failed (%s)", type(exc).__name__)

    async def _final(self, final: bool, text: str) -> None:
        if final:
            await self.renderer.finish(sentences.answer_text(text, self.notes))
        else:
            await self.renderer.fail(sentences.failure_text(text, self.notes))


async def deliver(
    events: AsyncIterator[ReplyEvent],
    renderer: Renderer,
    pacing: Pacing,
    *,
    journal: Journal | None = None,
) -> Delivered:
    """Show the answer ``events`` stream on ``renderer``, at the cadence ``pacing`` allows;
    with a ``journal``, what it shows is kept so another worker can finish it."""
    answer = _Answer(renderer, pacing, journal)
    queue: asyncio.Queue[ReplyEvent | None] = asyncio.Queue()
    shown = asyncio.Event()
    pump = asyncio.create_task(_pump(events, queue, shown))
    result = Delivered("nothing")
    try:
        while True:
            try:
                event = await _next(queue, pacing.delay() if answer.behind else None)
            except TimeoutError:
                await answer.progress()
                continue
            if event is None:
                break
            result = await _on_event(event, answer, result)
            if answer.settled:
                shown.set()
        await pump  # re-raises what the events iterator raised
    except asyncio.CancelledError:
        await _stop(pump)
        if not answer.settled:
            log.warning("an answer was cut by shutdown")
            await answer.settle(False, sentences.RESTARTED)
        raise
    except Exception:
        log.exception("the answer stream failed")
        await _stop(pump)
        result = Delivered("failed", "internal")
    if not answer.settled and (answer.started or answer.text or result.outcome != "nothing"):
        await answer.settle(False, sentences.GENERIC_ERROR)
        result = Delivered("failed", result.error_code or "internal", result.usage)
    if answer.refused is not None:
        raise answer.refused
    return result


def _reaches_something(record: Any) -> bool:
    """Whether a renderer's record names something shown or a way to reach it (a Discord
    interaction's reply); a channel alone with empty lists is a record of nothing."""
    if not isinstance(record, dict):
        return False
    return any(value not in ("", [], {}, None) for key, value in record.items() if key != "channel")


async def _next(
    queue: asyncio.Queue[ReplyEvent | None], patience: float | None
) -> ReplyEvent | None:
    """The next event, waiting at most ``patience`` seconds (TimeoutError after); one waiting
    already is taken at once (an answer's deltas often come faster than they are shown)."""
    if not queue.empty():
        return queue.get_nowait()
    async with asyncio.timeout(patience):
        return await queue.get()


async def _on_event(event: ReplyEvent, answer: _Answer, result: Delivered) -> Delivered:
    if isinstance(event, Accepted):
        await answer.start()
        return result
    if isinstance(event, TextDelta):
        if not answer.text:
            # The first progress write is due an interval after the first text: an answer
            # complete by then is written once, whole (one write of a platform's budget, and
            # nothing partial left to replace).
            answer.pacing.wrote()
        answer.text += event.text
        if answer.pacing.delay() <= 0 and not answer.settled:
            await answer.progress()
        return result
    if isinstance(event, Notice):
        answer.notes.append(event.text)
        return result
    if isinstance(event, FinalText):
        await answer.settle(True, event.text)
        return Delivered("answered", None, result.usage)
    if isinstance(event, UserError):
        await answer.settle(False, event.text)
        return Delivered("failed", event.code, result.usage)
    if isinstance(event, UsageReport):
        return Delivered(result.outcome, result.error_code, event)
    if isinstance(event, Withdrawn):
        await answer.withdraw()
        return Delivered("nothing")
    return result


async def _pump(
    events: AsyncIterator[ReplyEvent],
    queue: asyncio.Queue[ReplyEvent | None],
    shown: asyncio.Event,
) -> None:
    """Feed the core's events to ``deliver``; after the last word (an answer or a sentence)
    wait until it is shown: the core holds the conversation until then, so the next answer
    there never shows up above this one."""
    try:
        async for event in events:
            await queue.put(event)
            if isinstance(event, (FinalText, UserError)):
                await shown.wait()
    finally:
        await queue.put(None)


async def _stop(pump: asyncio.Task[None]) -> None:
    """Cancel the core's answer and wait for its own clean-up (locks, stored state)."""
    if not pump.done():
        pump.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await pump


__all__ = [
    "Admitting",
    "BudgetPacing",
    "Delivered",
    "Interval",
    "Journal",
    "Outcome",
    "Pacing",
    "Renderer",
    "deliver",
]
