"""Answers that outlive their worker: what is recorded while answering, and the sweeper that
finishes, in another worker, what a dead one left.

While the core answers a claimed message it keeps, with the claim: the question as the core got
it (``request``), where the adapter shows the answer (``Inbound.reply_to``), what the answer has
shown so far (the renderer's ``record()``, through a ``Journal``), the stored question and,
once stored, the answer. A worker killed at any moment leaves a claim "answering" (asked
again) or "stored" (answered, maybe not shown), held by a worker lease that runs out.

Every worker sweeps: it takes over such claims (``Store.orphans``) and hands each to the adapter
of its platform (a ``Resume``), which clears what the dead worker showed and shows the answer
in the same place. The person sees one answer, never two, never none.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.messages import Author, ConversationKey, Inbound
from core.ports import Orphan, Store

log = logging.getLogger("parley.recovery")

SWEEP_BATCH = 20


def request_of(inbound: Inbound) -> str:
    """The question as JSON, enough to ask it again (files are not kept: their text is in
    the stored question)."""
    key = inbound.key
    return json.dumps(
        {
            "key": [key.platform, key.workspace, key.channel, key.thread],
            "author": [inbound.author.id, inbound.author.name],
            "text": inbound.text,
            "event_id": inbound.event_id,
            "sent_at": inbound.sent_at.isoformat() if inbound.sent_at else None,
            "reply_to": [list(pair) for pair in inbound.reply_to],
        }
    )


def received_request(payload: Mapping[str, Any]) -> str:
    """What an adapter received, kept with a claim taken on arrival (before the platform is
    told it arrived): if its worker dies before taking it on, another worker's adapter gets
    it back (``Resumed.received``) and handles it as if it had just arrived."""
    return json.dumps({"received": payload})


def inbound_of(request: str) -> Inbound:
    """The question ``request_of`` kept."""
    data = json.loads(request)
    sent_at = data.get("sent_at")
    return Inbound(
        ConversationKey(*data["key"]),
        Author(*data["author"]),
        data["text"],
        event_id=data.get("event_id"),
        sent_at=datetime.fromisoformat(sent_at) if sent_at else None,
        reply_to=tuple((str(k), str(v)) for k, v in data.get("reply_to", ())),
    )


@dataclass(frozen=True, slots=True)
class Resumed:
    """An answer to finish: the question, what the dead worker's answer showed (the adapter's
    record, empty if nothing), and the stored answer to show (None: ask the model again).

    Or an event the dead worker received but had not taken on yet: ``received`` is what the
    adapter kept (``received_request``), ``inbound`` is None and nothing was shown.
    ``event_id`` is the claim's."""

    inbound: Inbound | None
    shown: Mapping[str, Any]
    answer: str | None
    received: Mapping[str, Any] | None = None
    event_id: str = ""


Resume = Callable[[Resumed], Awaitable[None]]


class Journal:
    """Keeps what one answer has shown with its claim, and that it was shown in the end."""

    def __init__(self, store: Store, platform: str, event_id: str) -> None:
        self.store = store
        self.event = (platform, event_id)
        self._last: str | None = None

    def _changed(self, record: Mapping[str, Any] | None) -> str | None:
        """``record`` as kept, unless it is what was kept last."""
        if record is None:
            return None
        text = json.dumps(record, sort_keys=True)
        if text == self._last:
            return None
        self._last = text
        return text

    async def shown(self, record: Mapping[str, Any]) -> None:
        """The renderer's record now (written only when it changed; best effort)."""
        text = self._changed(record)
        if text is not None:
            await self._record(text)

    async def delivered(self, record: Mapping[str, Any] | None = None) -> bool:
        """The answer is shown in full: nothing is left to finish. False when another worker
        has taken the answer over meanwhile (it shows it: this one comes down). ``record``:
        the renderer's record in the end, kept by the same write when it changed."""
        delivery = self._changed(record)
        try:
            return await self.store.settle_event(*self.event, "answered", delivery=delivery)
        except Exception as exc:
            log.warning("recording a shown answer failed (%s)", type(exc).__name__)
        if delivery is not None:  # kept on its own: a sweeper finishing the claim edits it
            await self._record(delivery)
        return True

    async def _record(self, text: str) -> None:
        """``text`` kept as what the answer showed (best effort)."""
        try:
            await self.store.record_delivery(*self.event, text)
        except Exception as exc:
            log.warning("recording what an answer showed failed (%s)", type(exc).__name__)
            self._last = None  # not kept: the next record is written whatever it is


def _resumed(orphan: Orphan) -> Resumed:
    """What a resumer gets for ``orphan``: its question and what it showed, or what its
    adapter received."""
    data = json.loads(orphan.request)
    if isinstance(data, dict) and isinstance(data.get("received"), dict):
        return Resumed(None, {}, None, received=data["received"], event_id=orphan.event_id)
    shown = json.loads(orphan.delivery) if orphan.delivery else {}
    return Resumed(inbound_of(orphan.request), shown, orphan.answer, event_id=orphan.event_id)


class Sweeper:
    """Finds answers left by dead workers, every ``every`` seconds, and resumes them."""

    def __init__(self, store: Store, resumers: Mapping[str, Resume], *, every: float) -> None:
        self.store = store
        self.resumers = dict(resumers)
        self.every = every
        self._running: set[asyncio.Task[None]] = set()

    async def sweep(self) -> int:
        """Take over what is left now and start finishing it; returns how many."""
        orphans = await self.store.orphans(list(self.resumers), SWEEP_BATCH)
        for orphan in orphans:
            task = asyncio.get_running_loop().create_task(self._resume(orphan))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return len(orphans)

    async def _resume(self, orphan: Orphan) -> None:
        try:
            resumed = _resumed(orphan)
        except (ValueError, TypeError, KeyError):
            log.error("an unfinished answer on %s could not be read; dropped", orphan.platform)
            await self.store.settle_event(orphan.platform, orphan.event_id, "failed")
            return
        where = resumed.inbound.key if resumed.inbound is not None else orphan.platform
        log.info("finishing an answer left by a stopped worker in %s", where)
        try:
            await self.resumers[orphan.platform](resumed)
        except Exception:
            log.exception("finishing an answer in %s failed", where)

    async def run(self) -> None:
        """Sweep until cancelled; a failed sweep is logged and tried again next time."""
        while True:
            try:
                while await self.sweep() == SWEEP_BATCH:
                    pass
            except Exception as exc:
                log.warning("looking for unfinished answers failed (%s)", type(exc).__name__)
            await asyncio.sleep(self.every)

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        for task in list(self._running):
            with suppress(asyncio.CancelledError, Exception):
                await task
