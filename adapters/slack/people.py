"""Who is talking, by the name people see: ``users.info`` display names, looked up once per
person and cached, so the model reads "Alice", never a user id it would repeat.

A lookup Slack refuses (or a user it does not know) gives "" for a while: the core then says
"Someone", and Parley does not ask again for every message.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import translate
from adapters.slack.render import error_code

log = logging.getLogger("parley.slack")

NAME_SECONDS = 3600.0  # people rename themselves rarely; an hour-old name is fine
MISS_SECONDS = 300.0  # a refused lookup is tried again after five minutes
MAX_PEOPLE = 10_000


class SlackNames:
    """Display names of a workspace's people, cached (at most ``MAX_PEOPLE`` of them)."""

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client
        self._names: dict[str, tuple[float, str]] = {}

    async def of(self, user: str) -> str:
        """``user``'s display name ("" when Slack will not say)."""
        now = time.monotonic()
        hit = self._names.get(user)
        if hit is not None and now < hit[0]:
            return hit[1]
        try:
            found = (await self.client.users_info(user=user)).get("user") or {}
            name, keep = translate.display_name(found), NAME_SECONDS
        except SlackApiError as exc:
            log.warning("slack: users.info failed (%s); the person stays unnamed", error_code(exc))
            name, keep = "", MISS_SECONDS
        self._names.pop(user, None)
        if len(self._names) >= MAX_PEOPLE:
            del self._names[next(iter(self._names))]  # the oldest entry
        self._names[user] = (now + keep, name)
        return name

    async def named(self, message: translate.SlackMessage) -> translate.SlackMessage:
        """``message`` with its author's display name: the one the event carries, else
        ``users.info``'s."""
        if message.user_name:
            return message
        return replace(message, user_name=await self.of(message.user))


__all__ = ["MAX_PEOPLE", "SlackNames"]
