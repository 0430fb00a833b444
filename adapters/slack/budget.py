"""Slack's write limits, applied to every Web API call Parley makes.

Slack limits writes per workspace and method (tiers: chat.startStream and chat.stopStream
Tier 2, about 20 a minute; chat.appendStream Tier 4, about 100; chat.update and chat.delete
Tier 3, about 50) and chat.postMessage to about one a second per channel. ``BudgetedWebClient``
takes a token from the deployment's write budget (``core.budget.shared()``, shared by every
worker through Redis when configured) before each such call:

- a final write (``core.budget.current_kind()``) waits for its token;
- a progress write takes one only with headroom left for final writes, else it raises
  ``WriteDeferred`` and the renderer skips it (a later write shows the text);
- a progress write opens a message (chat.postMessage) only while messages are opened no
  faster than chat.update's budget can give them their final text (``OPENINGS``);
- a stream is opened only with headroom (``StreamDeferred``, which the renderer reads as
  "streaming is not available now"): the answer is then posted and edited instead, so the
  finished answer needs one write rather than two Tier 2 calls;
- clearing an assistant thread's status is progress (Slack clears it on the reply anyway);
- inside ``waiting_at_most(seconds, methods)`` a final write of one of ``methods`` waits at most
  ``seconds`` for its token, else raises ``WriteDeferred``: the renderer then writes the answer
  through a method whose budget has room (a new message instead of an edit).

slack_sdk's 429 retry handler stays the safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import random
import time
from collections.abc import Iterator
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from core import budget
from core.budget import Rate

BUDGET_ERROR = "parley_write_budget"
PER_MINUTE = 60.0


class SlackLimit:
    """One method's limit: ``rate``, counted per workspace or per channel."""

    def __init__(self, rate: Rate, *, per_channel: bool = False) -> None:
        self.rate = rate
        self.per_channel = per_channel


TIER_2 = Rate.within(20, PER_MINUTE)
TIER_3 = Rate.within(50, PER_MINUTE)
TIER_4 = Rate.within(100, PER_MINUTE)
LIMITS: dict[str, SlackLimit] = {
    "chat.startStream": SlackLimit(TIER_2),
    "chat.appendStream": SlackLimit(TIER_4),
    "chat.stopStream": SlackLimit(TIER_2),
    "chat.update": SlackLimit(TIER_3),
    "chat.delete": SlackLimit(TIER_3),
    # About one a second per channel, short bursts allowed.
    "chat.postMessage": SlackLimit(Rate.within(12, 10.0), per_channel=True),
    "assistant.threads.setStatus": SlackLimit(TIER_3),
}


# A progress write that opens a message to be edited later (chat.postMessage: a placeholder,
# or an answer shown while it grows without a stream) commits the answer to one more
# chat.update for its final text, or to a chat.delete when that has no room: such messages are
# opened no faster than chat.update's budget finishes them, so no partial copy of an answer
# stays in a thread for minutes waiting for chat.delete's budget.
OPENINGS = "parley.progressMessages"
OPENINGS_RATE = TIER_3

# (seconds, methods): how long a final write of one of ``methods`` may wait for its token.
_patience: contextvars.ContextVar[tuple[float, frozenset[str]] | None] = contextvars.ContextVar(
    "parley_slack_patience", default=None
)


@contextlib.contextmanager
def waiting_at_most(seconds: float, methods: frozenset[str]) -> Iterator[None]:
    """Final writes of ``methods`` made inside the block wait at most ``seconds`` for their
    token; past that they raise ``WriteDeferred`` instead."""
    token = _patience.set((seconds, methods))
    try:
        yield
    finally:
        _patience.reset(token)


async def _admit_within(key: str, rate: Rate, seconds: float) -> bool:
    """Take a token for a final write if one comes within ``seconds``; False (nothing taken)
    when it would come later."""
    deadline = time.monotonic() + seconds
    while True:
        wait = await budget.shared().take(key, rate, 0.0)
        if wait <= 0:
            return True
        if time.monotonic() + wait > deadline:
            return False
        await asyncio.sleep(min(wait, budget.MAX_POLL) * (1 + random.random() / 10))


class WriteDeferred(Exception):
    """A progress write skipped because the write budget has no headroom left."""


class StreamDeferred(SlackApiError):
    """A stream not opened because chat.startStream has no headroom left."""

    def __init__(self) -> None:
        super().__init__(BUDGET_ERROR, {"ok": False, "error": BUDGET_ERROR})  # type: ignore[no-untyped-call]


def workspace_key(base_url: str, token: str) -> str:
    """Names the workspace in budget keys (one bot token = one installation), token hidden."""
    return hashlib.sha256(f"{base_url}|{token}".encode()).hexdigest()[:16]


class BudgetedWebClient(AsyncWebClient):
    """An ``AsyncWebClient`` whose writes stay inside the deployment's Slack write budget."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.workspace = workspace_key(str(self.base_url), str(self.token))

    async def api_call(self, api_method: str, **kwargs: Any) -> AsyncSlackResponse:
        limit = LIMITS.get(api_method)
        if limit is not None:
            await self._spend(api_method, limit, kwargs)
        return await super().api_call(api_method, **kwargs)

    async def _spend(self, method: str, limit: SlackLimit, call: dict[str, Any]) -> None:
        params: dict[str, Any] = {}
        for part in ("params", "data", "json"):
            if isinstance(call.get(part), dict):
                params.update(call[part])
        final = budget.current_kind() == "final"
        if method == "chat.startStream":
            final = False
        elif method == "assistant.threads.setStatus" and not params.get("status"):
            final = False
        if method == "chat.postMessage" and not final:
            opening = f"slack:{self.workspace}:{OPENINGS}"
            if not await budget.admit(budget.shared(), opening, OPENINGS_RATE, final=False):
                raise WriteDeferred(method)
        key = f"slack:{self.workspace}:{method}"
        if limit.per_channel:
            key += f":{params.get('channel') or params.get('channel_id') or ''}"
        patience = _patience.get() if final else None
        if patience is not None and method in patience[1]:
            if await _admit_within(key, limit.rate, patience[0]):
                return
        elif await budget.admit(budget.shared(), key, limit.rate, final=final):
            return
        if method == "chat.startStream":
            raise StreamDeferred()
        raise WriteDeferred(method)


__all__ = [
    "LIMITS",
    "BudgetedWebClient",
    "StreamDeferred",
    "WriteDeferred",
    "waiting_at_most",
    "workspace_key",
]
