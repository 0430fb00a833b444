"""Runs the platform adapters of one worker: start them, wait for a signal or a failure, stop them.

A worker whose platform connection ended for good exits non-zero, so its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn, Protocol

from core.errors import ParleyError

log = logging.getLogger("parley")

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_FAILED = 1
EXIT_SECOND_SIGNAL = 130


class PlatformAdapter(Protocol):
    """One platform connection, as the runtime drives it."""

    @property
    def name(self) -> str:
        """A short name for logs and errors, e.g. "slack"."""
        ...

    async def start(self) -> None:
        """Connect; a ParleyError says why the platform refused (bad token, ...)."""
        ...

    async def stop(self) -> None:
        """Take no new work, let answers in progress finish for a grace period, disconnect."""
        ...

    async def wait_failed(self) -> BaseException:
        """Return the reason once the connection has ended for good; may never return."""
        ...


async def run_adapters(
    adapters: Sequence[PlatformAdapter],
    *,
    exit_now: Callable[[int], NoReturn] = os._exit,
) -> int:
    """Start ``adapters``, run until SIGINT/SIGTERM or the first failure, then stop them all.

    Returns the exit code: 0 after a signal, 1 when an adapter failed for good. A second
    signal while stopping calls ``exit_now(130)`` rather than wait for answers in progress.
    """
    try:
        await start_all(adapters)
    except BaseException:
        await stop_all(adapters)
        raise
    stop = asyncio.Event()
    with _stop_on_signals(stop, exit_now):
        try:
            log.info("parley is running (%s)", ", ".join(a.name for a in adapters))
            failures = await _until_stopped(adapters, stop)
            for adapter, cause in failures:
                log.error("%s stopped for good: %s", adapter.name, cause)
            log.info("shutting down")
        finally:
            await stop_all(adapters)
    return EXIT_FAILED if failures else 0


async def start_all(adapters: Sequence[PlatformAdapter]) -> None:
    """Start each adapter in turn; any error but a ParleyError becomes one naming the adapter."""
    for adapter in adapters:
        try:
            await adapter.start()
        except ParleyError:
            raise
        except Exception as exc:  # network down, port taken, ...
            raise ParleyError(
                f"{adapter.name} could not start: {type(exc).__name__}: {exc}"
            ) from None


async def stop_all(adapters: Sequence[PlatformAdapter]) -> None:
    """Stop every adapter at once, so shutdown fits a supervisor's grace period (about 10 s)."""
    results = await asyncio.gather(*(a.stop() for a in adapters), return_exceptions=True)
    for adapter, result in zip(adapters, results, strict=True):
        if isinstance(result, Exception):
            log.error("stopping %s failed: %r", adapter.name, result)


@contextmanager
def _stop_on_signals(stop: asyncio.Event, exit_now: Callable[[int], NoReturn]) -> Iterator[None]:
    """SIGINT or SIGTERM sets ``stop``; a second one exits at once (answers in progress or not)."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            exit_now(EXIT_SECOND_SIGNAL)
        stop.set()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        yield
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)


async def _until_stopped(
    adapters: Sequence[PlatformAdapter], stop: asyncio.Event
) -> list[tuple[PlatformAdapter, BaseException]]:
    """Wait for ``stop`` or the first adapter that fails for good; each failed one, with why."""
    watches = {asyncio.create_task(a.wait_failed()): a for a in adapters}
    signalled = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({signalled, *watches}, return_when=asyncio.FIRST_COMPLETED)
        return [(adapter, _cause(task)) for task, adapter in watches.items() if task.done()]
    finally:
        pending = [task for task in (signalled, *watches) if not task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _cause(task: asyncio.Task[BaseException]) -> BaseException:
    """What ``wait_failed`` returned; an error it raised itself counts as the failure too."""
    if task.cancelled():
        return asyncio.CancelledError("the wait for a failure was cancelled")
    return task.exception() or task.result()
