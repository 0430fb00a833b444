"""Which channel threads Parley follows: those it answered in (for plain replies, when
``SLACK_FOLLOW_THREADS`` is on). Remembered in memory, else looked up in the thread itself."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.render import error_code
from adapters.slack.translate import SlackMessage

log = logging.getLogger("parley.slack")

CACHE_SIZE = 10_000
NOT_OURS_TTL = 60.0  # how long a thread found without Parley's messages is not asked again


class FollowedThreads:
    """Threads Parley answered in (``inf``) or recently found not to (until a time)."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._threads: OrderedDict[tuple[str, str], float] = OrderedDict()

    def remember(self, channel: str, thread_ts: str) -> None:
        """Parley answers in this thread."""
        self._set((channel, thread_ts), float("inf"))

    async def answered_in(
        self, message: SlackMessage, bot_user: str | None, bot_id: str | None
    ) -> bool:
        """Whether Parley has answered in the thread of ``message``: remembered, else read with
        conversations.replies (so it still knows after a restart)."""
        key = (message.channel, str(message.thread_ts))
        now = time.monotonic()
        known = self._threads.get(key)
        if known is not None and (known == float("inf") or known > now):
            return known == float("inf")
        try:
            response = await self._client.conversations_replies(
                channel=message.channel, ts=key[1], limit=200
            )
        except SlackApiError as exc:
            log.info("slack: conversations.replies failed (%s)", error_code(exc))
            return False
        ours = any(
            (bot_user and m.get("user") == bot_user) or (bot_id and m.get("bot_id") == bot_id)
            for m in response.get("messages") or []
        )
        self._set(key, float("inf") if ours else now + NOT_OURS_TTL)
        return ours

    def _set(self, key: tuple[str, str], until: float) -> None:
        self._threads[key] = until
        self._threads.move_to_end(key)
        while len(self._threads) > CACHE_SIZE:
            self._threads.popitem(last=False)


__all__ = ["FollowedThreads"]
