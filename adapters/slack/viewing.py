"""What the person in an assistant thread is looking at: Slack tells the app which channel is
open beside the thread (``assistant_thread.context`` of ``assistant_thread_started`` and
``assistant_thread_context_changed``), and Parley tells the model, as "(viewing #name)" before
the person's words.

The context is kept in memory per thread (the newest ``MAX_THREADS``); a worker that never saw
it (another worker, or after a restart) answers without it. Channel names come from
``conversations.info``, cached per workspace.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.render import error_code

log = logging.getLogger("parley.slack")

MAX_THREADS = 10_000
MAX_CHANNELS = 10_000
NAME_SECONDS = 3600.0  # channels are renamed rarely
MISS_SECONDS = 300.0  # a channel Slack will not describe is asked about again later

Thread = tuple[str, str, str]  # (team, the assistant DM's channel, thread_ts)


class AssistantContexts:
    """The channel each assistant thread's person is viewing, by thread (bounded)."""

    def __init__(self, size: int = MAX_THREADS) -> None:
        self.size = size
        self._viewing: OrderedDict[Thread, str] = OrderedDict()

    def keep(self, team: str, event: Mapping[str, Any]) -> None:
        """Remember the context an ``assistant_thread_*`` event carries (if it names one)."""
        thread = event.get("assistant_thread")
        if not isinstance(thread, Mapping):
            return
        context = thread.get("context")
        channel, thread_ts = thread.get("channel_id"), thread.get("thread_ts")
        if not (isinstance(channel, str) and isinstance(thread_ts, str)):
            return
        key = (str(team or thread.get("team_id") or ""), channel, thread_ts)
        viewed = context.get("channel_id") if isinstance(context, Mapping) else None
        if not isinstance(viewed, str) or not viewed:
            self._viewing.pop(key, None)
            return
        self._viewing[key] = viewed
        self._viewing.move_to_end(key)
        while len(self._viewing) > self.size:
            self._viewing.popitem(last=False)

    def viewed(self, team: str, channel: str, thread_ts: str | None) -> str | None:
        """The channel id the person of that thread is viewing, if known."""
        if thread_ts is None:
            return None
        return self._viewing.get((team, channel, thread_ts))


class ChannelNames:
    """Channel names of one workspace from ``conversations.info``, cached."""

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client
        self._names: dict[str, tuple[float, str]] = {}

    async def of(self, channel: str) -> str:
        """The channel's name ("" for a DM, or when Slack will not say)."""
        now = time.monotonic()
        hit = self._names.get(channel)
        if hit is not None and now < hit[0]:
            return hit[1]
        try:
            found = (await self.client.conversations_info(channel=channel)).get("channel") or {}
            name, keep = str(found.get("name") or ""), NAME_SECONDS
        except SlackApiError as exc:
            log.info("slack: conversations.info failed (%s); no channel name", error_code(exc))
            name, keep = "", MISS_SECONDS
        self._names.pop(channel, None)
        if len(self._names) >= MAX_CHANNELS:
            del self._names[next(iter(self._names))]
        self._names[channel] = (now + keep, name)
        return name


def viewing_note(name: str) -> str:
    """What the model reads before the person's words: the channel open beside the thread."""
    return f"(viewing #{name})"


__all__ = ["AssistantContexts", "ChannelNames", "viewing_note"]
