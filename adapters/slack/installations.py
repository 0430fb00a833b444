"""Slack installations in Parley's own database: slack_sdk's installation and OAuth state store
interfaces on ``core.store.installations.InstallationRecords``.

One installation is kept per workspace (the latest); Parley acts as the bot, so a person's
token, when Slack gives one, is kept with it but never used. ``app_uninstalled`` and
``tokens_revoked`` (bolt's own listeners) remove a workspace's tokens through these methods.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime
from typing import Any

from slack_sdk.oauth.installation_store import Bot, Installation
from slack_sdk.oauth.installation_store.async_installation_store import AsyncInstallationStore
from slack_sdk.oauth.state_store.async_state_store import AsyncOAuthStateStore

from adapters.slack.translate import PLATFORM
from core.store.installations import InstallationRecords

log = logging.getLogger("parley.slack")

# A person's token and its details: dropped when the person's token is revoked.
_USER_FIELDS = ("user_token", "user_scopes", "user_refresh_token", "user_token_expires_at")


def as_record(installation: Installation) -> dict[str, Any]:
    """``installation`` as JSON-able values (times as seconds since 1970)."""
    values = installation.to_dict_for_copying()
    return {
        name: value.timestamp() if isinstance(value, datetime) else value
        for name, value in values.items()
    }


def from_record(record: dict[str, Any]) -> Installation:
    """The ``Installation`` ``as_record`` kept."""
    values = dict(record)
    for name in ("bot_token_expires_at", "user_token_expires_at"):
        if values.get(name) is not None:
            values[name] = int(values[name])
    return Installation(**values)


class SqlInstallationStore(AsyncInstallationStore):
    """slack_sdk's ``AsyncInstallationStore``: one installation per workspace, in the database."""

    def __init__(self, records: InstallationRecords) -> None:
        self.records = records

    @property
    def logger(self) -> logging.Logger:
        return log

    async def async_save(self, installation: Installation) -> None:
        await self.records.save(
            PLATFORM,
            installation.enterprise_id or "",
            "" if installation.is_enterprise_install else installation.team_id or "",
            as_record(installation),
        )
        log.info("slack: installed in workspace %s", installation.team_id)

    async def async_save_bot(self, bot: Bot) -> None:
        """Bots are saved with their installation (``async_save``)."""

    async def async_find_installation(
        self,
        *,
        enterprise_id: str | None,
        team_id: str | None,
        user_id: str | None = None,
        is_enterprise_install: bool | None = False,
    ) -> Installation | None:
        team = "" if is_enterprise_install else team_id or ""
        record = await self.records.find(PLATFORM, enterprise_id or "", team)
        if record is None:
            return None
        installation = from_record(record)
        if user_id is not None and installation.user_id != user_id:
            return None
        return installation

    async def async_find_bot(
        self,
        *,
        enterprise_id: str | None,
        team_id: str | None,
        is_enterprise_install: bool | None = False,
    ) -> Bot | None:
        installation = await self.async_find_installation(
            enterprise_id=enterprise_id,
            team_id=team_id,
            is_enterprise_install=is_enterprise_install,
        )
        if installation is None or installation.bot_token is None:
            return None
        return installation.to_bot()

    async def async_delete_bot(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        """The bot's token is revoked: the workspace's installation goes (Parley is the bot)."""
        if await self.records.delete(PLATFORM, enterprise_id or "", team_id or ""):
            log.info("slack: the bot token of workspace %s was revoked; forgotten", team_id)

    async def async_delete_installation(
        self, *, enterprise_id: str | None, team_id: str | None, user_id: str | None = None
    ) -> None:
        """Without ``user_id``: forget the workspace. With it: drop that person's token."""
        if user_id is None:
            await self.async_delete_bot(enterprise_id=enterprise_id, team_id=team_id)
            return
        record = await self.records.find(PLATFORM, enterprise_id or "", team_id or "")
        if record is None or record.get("user_id") != user_id or not record.get("user_token"):
            return
        for name in _USER_FIELDS:
            record[name] = None
        await self.records.save(PLATFORM, enterprise_id or "", team_id or "", record)

    async def async_delete_all(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        """Parley was uninstalled from the workspace: forget it."""
        if await self.records.delete(PLATFORM, enterprise_id or "", team_id or ""):
            log.info("slack: uninstalled from workspace %s; its tokens are forgotten", team_id)


class SqlOAuthStateStore(AsyncOAuthStateStore):
    """slack_sdk's ``AsyncOAuthStateStore``: states in the database, usable once, any worker."""

    def __init__(self, records: InstallationRecords, *, expiration_seconds: int) -> None:
        self.records = records
        self.expiration_seconds = expiration_seconds

    @property
    def logger(self) -> logging.Logger:
        return log

    async def async_issue(self, *args: Any, **kwargs: Any) -> str:
        state = secrets.token_urlsafe(32)
        await self.records.issue_state(PLATFORM, state, self.expiration_seconds)
        return state

    async def async_consume(self, state: str) -> bool:
        return await self.records.consume_state(PLATFORM, state)


__all__ = ["SqlInstallationStore", "SqlOAuthStateStore", "as_record", "from_record"]
