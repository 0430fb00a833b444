"""Prometheus metrics of one worker (``PARLEY_METRICS_PORT``; off by default).

Everything is counted from the outside, so neither the core nor the adapters import
prometheus-client:

- answers, errors by kind (the ``UserError`` code) and answers in flight: ``MeteredService``
  watches the events of ``ConversationService.answer``, whatever adapter delivers them;
- platform writes and 429s by method: a slack_sdk retry handler that only looks (Slack), an
  aiohttp trace of discord.py's REST session (Discord);
- time final writes waited for the write budget, and progress writes it skipped:
  ``MeteredBudget`` wraps the deployment's ``core.budget.WriteBudget``.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

from core.budget import Rate, WriteBudget
from core.messages import Accepted, FinalText, Inbound, ReplyEvent, UserError
from core.service import ConversationService

# Slack methods that write (the rest read): what the write budget covers, and any chat.* call.
SLACK_WRITE_PREFIXES = ("chat.", "assistant.threads.set", "reactions.add", "files.complete")
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The worker's counters, in a registry of their own (served by ``bots.ops``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.answers = Counter(
            "parley_answers", "Answers the model completed", ["platform"], registry=r
        )
        self.errors = Counter(
            "parley_answer_errors",
            "Messages answered with an error sentence, by kind (UserError code; interrupted: "
            "cut by shutdown)",
            ["platform", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "parley_answers_in_flight",
            "Answers accepted and not finished",
            ["platform"],
            registry=r,
        )
        self.writes = Counter(
            "parley_platform_writes",
            "Write requests sent to a platform (retries included)",
            ["platform", "method"],
            registry=r,
        )
        self.rate_limited = Counter(
            "parley_platform_rate_limited",
            "Requests a platform answered with 429",
            ["platform", "method"],
            registry=r,
        )
        self.budget_wait = Histogram(
            "parley_write_budget_wait_seconds",
            "How long final writes waited for the write budget (only those that waited)",
            ["platform"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.progress_skipped = Counter(
            "parley_progress_writes_skipped",
            "Progress writes skipped because the write budget had no headroom",
            ["platform"],
            registry=r,
        )


class MeteredService(ConversationService):
    """A ``ConversationService`` whose answers are counted in ``metrics``."""

    metrics: Metrics

    async def answer(
        self,
        inbound: Inbound,
        *,
        resumed: bool = False,
        slot: AbstractAsyncContextManager[Any] | None = None,
    ) -> AsyncIterator[ReplyEvent]:
        platform = inbound.key.platform
        accepted = ended = False
        answering = cast(
            AsyncGenerator[ReplyEvent, None], super().answer(inbound, resumed=resumed, slot=slot)
        )
        async with aclosing(answering) as events:
            try:
                async for event in events:
                    if isinstance(event, Accepted):
                        accepted = True
                        self.metrics.in_flight.labels(platform).inc()
                    elif isinstance(event, FinalText):
                        ended = True
                        self.metrics.answers.labels(platform).inc()
                    elif isinstance(event, UserError):
                        ended = True
                        self.metrics.errors.labels(platform, event.code).inc()
                    yield event
            finally:
                if accepted:
                    self.metrics.in_flight.labels(platform).dec()
                    if not ended:
                        self.metrics.errors.labels(platform, "interrupted").inc()


class MeteredBudget:
    """A ``WriteBudget`` that times final writes waiting for a token and counts skipped
    progress writes (the platform is the first part of the budget key)."""

    def __init__(self, inner: WriteBudget, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self._waiting: weakref.WeakKeyDictionary[asyncio.Task[Any], dict[str, float]] = (
            weakref.WeakKeyDictionary()
        )

    async def take(self, key: str, rate: Rate, reserve: float) -> float:
        wait = await self.inner.take(key, rate, reserve)
        platform = key.partition(":")[0]
        task = asyncio.current_task()
        if task is None:
            return wait
        if wait > 0 and reserve > 0:  # a progress write: skipped, never waits
            self.metrics.progress_skipped.labels(platform).inc()
        elif wait > 0:  # a final write: it waits and asks again
            self._waiting.setdefault(task, {}).setdefault(key, time.monotonic())
        else:
            started = self._waiting.get(task, {}).pop(key, None)
            if started is not None:
                self.metrics.budget_wait.labels(platform).observe(time.monotonic() - started)
        return wait


class SlackWatch(AsyncRetryHandler):
    """Sees every response of a Slack Web API client and counts writes and 429s by method;
    never retries itself (it goes first, slack_sdk's own handlers decide)."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(max_retry_count=0)
        self.metrics = metrics

    async def can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        method = request.url.rstrip("/").rpartition("/")[2]
        if method.startswith(SLACK_WRITE_PREFIXES):
            self.metrics.writes.labels("slack", method).inc()
        if response is not None and response.status_code == 429:
            self.metrics.rate_limited.labels("slack", method).inc()
        return False


def watch_slack(client: Any, metrics: Metrics) -> None:
    """Count the writes and 429s of a slack_sdk ``AsyncWebClient`` (its ``retry_handlers``)."""
    client.retry_handlers.insert(0, SlackWatch(metrics))


_SNOWFLAKE = re.compile(r"/\d{5,}")
_TOKEN = re.compile(r"/(webhooks|interactions)/\{id\}/[^/]+")


def discord_route(url: str) -> str | None:
    """A REST path as a label, ids and interaction tokens masked
    (``/channels/{id}/messages``); None for requests outside the API (files on the CDN)."""
    path = url.split("?", 1)[0]
    if "/api/" not in path:
        return None
    path = "/" + path.split("/api/", 1)[1].partition("/")[2]
    path = _SNOWFLAKE.sub("/{id}", path)
    return _TOKEN.sub(r"/\1/{id}/{token}", path)


def discord_trace(metrics: Metrics) -> aiohttp.TraceConfig:
    """An aiohttp trace for discord.py's REST session: writes (not GET) and 429s by route."""

    async def on_request_end(
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        route = discord_route(str(params.url))
        if route is None:
            return
        label = f"{params.method} {route}"
        if params.method != "GET":
            metrics.writes.labels("discord", label).inc()
        if params.response.status == 429:
            metrics.rate_limited.labels("discord", label).inc()

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    return trace
