"""The fake Slack enforcing Slack's write limits: a method over its limit answers HTTP 429 with
Retry-After, as Slack does. Limits are sliding windows (at most N calls in any W seconds), per
workspace or, for chat.postMessage, per channel."""

from __future__ import annotations

import contextvars
import math
import time
from collections import deque
from typing import Any

from aiohttp import web

from tests.fakes.slack_server import FakeSlack, _Fault

# method: (calls, seconds, per channel)
SLACK_LIMITS: dict[str, tuple[int, float, bool]] = {
    "chat.startStream": (20, 60.0, False),  # Tier 2
    "chat.stopStream": (20, 60.0, False),  # Tier 2
    "chat.appendStream": (100, 60.0, False),  # Tier 4
    "chat.update": (50, 60.0, False),  # Tier 3
    "chat.delete": (50, 60.0, False),  # Tier 3
    "assistant.threads.setStatus": (50, 60.0, False),
    "chat.postMessage": (12, 10.0, True),  # about 1 a second per channel, short bursts
}

_params: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("fake_slack_params")


class TieredSlack(FakeSlack):
    """``FakeSlack`` that refuses calls over ``limits`` with 429; ``stamps`` holds the time of
    every Web API call (``time.monotonic()``), in the order of ``calls``."""

    def __init__(self, *, limits: dict[str, tuple[int, float, bool]] | None = None, **kw: Any):
        super().__init__(**kw)
        self.limits = SLACK_LIMITS if limits is None else limits
        self.stamps: list[float] = []
        self._windows: dict[str, deque[float]] = {}

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params = await super()._params(request)
        _params.set(params)
        self.stamps.append(time.monotonic())
        return params

    def _take_fault(self, method: str) -> _Fault | None:
        fault = super()._take_fault(method)
        if fault is not None or method not in self.limits:
            return fault
        calls, seconds, per_channel = self.limits[method]
        key = method
        if per_channel:
            key += ":" + str(_params.get({}).get("channel") or "")
        window = self._windows.setdefault(key, deque())
        now = time.monotonic()
        while window and window[0] <= now - seconds:
            window.popleft()
        if len(window) >= calls:
            retry = max(1, math.ceil(window[0] + seconds - now))
            return _Fault(429, "ratelimited", 1, retry_after=retry)
        window.append(now)
        return None
