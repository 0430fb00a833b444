"""What Slack says about the person asking for a settings change or a reset: the facts the
core's permission rule (``core.permissions``) needs, looked up and cached.

- workspace admins and owners: ``users.info`` (``is_admin``, ``is_owner``, ``is_primary_owner``);
- people named in SLACK_ADMIN_USERS, or members of a group in SLACK_ADMIN_GROUPS
  (``usergroups.users.list``);
- the channel's creator, with SLACK_CHANNEL_CREATOR_IS_ADMIN (``conversations.info``);
- their own DM with the bot.

A lookup Slack refuses counts as "no" (logged in one line), so a failure never grants a change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.render import error_code
from adapters.slack.settings import SlackSettings
from core.permissions import Privileges

log = logging.getLogger("parley.slack")

CACHE_SECONDS = 300.0


class _Cache:
    """Values kept for ``CACHE_SECONDS``; failures are not kept."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._values: dict[str, tuple[float, Any]] = {}

    async def get(self, key: str, load: Callable[[], Awaitable[Any]]) -> Any:
        now = time.monotonic()
        hit = self._values.get(key)
        if hit is not None and now - hit[0] < self.seconds:
            return hit[1]
        value = await load()
        self._values[key] = (now, value)
        return value


class SlackPrivileges:
    """Finds out, for one person in one channel, what ``core.permissions.Privileges`` asks."""

    def __init__(self, client: AsyncWebClient, settings: SlackSettings) -> None:
        self.client = client
        self.admin_users = frozenset(settings.admin_users)
        self.admin_groups = tuple(settings.admin_groups)
        self.creators_count = settings.channel_creator_is_admin
        self._cache = _Cache(CACHE_SECONDS)

    @property
    def who(self) -> str:
        """Who may change a channel's settings, in Slack's words (for the refusal)."""
        who = ["workspace admins and owners"]
        if self.admin_users or self.admin_groups:
            who.append("the people and groups named in Parley's settings")
        if self.creators_count:
            who.append("the channel's creator")
        return ", ".join(who[:-1]) + (" and " if len(who) > 1 else "") + who[-1]

    async def of(self, user: str, channel: str, *, direct: bool) -> Privileges:
        """The facts about ``user`` in ``channel``: each looked up only until one grants."""
        facts = Privileges(who=self.who, direct=direct)
        if direct:
            return facts
        if user in self.admin_users or await self._in_admin_group(user):
            return Privileges(listed=True, who=self.who)
        if await self._workspace_admin(user):
            return Privileges(admin=True, who=self.who)
        if self.creators_count and await self._creator(channel) == user:
            return Privileges(creator=True, who=self.who)
        return facts

    async def _workspace_admin(self, user: str) -> bool:
        async def load() -> bool:
            found = (await self.client.users_info(user=user)).get("user") or {}
            return any(bool(found.get(k)) for k in ("is_admin", "is_owner", "is_primary_owner"))

        return bool(await self._look_up("users.info", f"user:{user}", load))

    async def _in_admin_group(self, user: str) -> bool:
        for group in self.admin_groups:

            async def load(group: str = group) -> frozenset[str]:
                response = await self.client.usergroups_users_list(usergroup=group)
                return frozenset(str(u) for u in response.get("users") or ())

            if user in (await self._look_up("usergroups.users.list", f"group:{group}", load) or ()):
                return True
        return False

    async def _creator(self, channel: str) -> str:
        async def load() -> str:
            found = (await self.client.conversations_info(channel=channel)).get("channel") or {}
            return str(found.get("creator") or "")

        return str(await self._look_up("conversations.info", f"channel:{channel}", load) or "")

    async def _look_up(
        self, method: str, key: str, load: Callable[[], Awaitable[Any]]
    ) -> Any | None:
        """A cached lookup; None (not cached) when Slack refuses it."""
        try:
            return await self._cache.get(key, load)
        except SlackApiError as exc:
            log.warning("slack: %s failed (%s); counting it as no", method, error_code(exc))
            return None


__all__ = ["CACHE_SECONDS", "SlackPrivileges"]
