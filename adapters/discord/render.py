"""Render out: the core's reply events as Discord messages, edited in place as the answer grows.

An answer starts as one message that is edited at most once per DISCORD_EDIT_INTERVAL; past
Discord's 2,000 characters it continues in further messages (follow-ups for interactions,
plain messages in channels and threads), split at sensible boundaries with code fences kept
balanced. Rate limits are left to discord.py, which waits and retries on 429.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Protocol

import discord

from core.messages import FinalText, Notice, ReplyEvent, UsageReport, UserError
from core.splitting import split_message
from core.streaming import Snapshot, paced

log = logging.getLogger("parley.discord")

MESSAGE_LIMIT = 2000
NO_MENTIONS = discord.AllowedMentions.none()


class Surface(Protocol):
    """Where an answer goes: a numbered list of messages that can be posted and edited."""

    async def post(self, text: str) -> None:
        """Add a message after the ones already posted."""
        ...

    async def edit(self, index: int, text: str) -> None:
        """Replace the text of the ``index``-th posted message."""
        ...


class InteractionSurface:
    """An interaction's original response (sent, or edited when deferred), then follow-ups."""

    def __init__(self, interaction: discord.Interaction, *, private: bool = False) -> None:
        self.interaction = interaction
        self.private = private
        self._followups: list[discord.WebhookMessage] = []
        self._posted = 0

    async def post(self, text: str) -> None:
        if self._posted == 0 and not self.interaction.response.is_done():
            await self.interaction.response.send_message(
                text, ephemeral=self.private, allowed_mentions=NO_MENTIONS
            )
        elif self._posted == 0:
            await self.interaction.edit_original_response(
                content=text, allowed_mentions=NO_MENTIONS
            )
        else:
            message = await self.interaction.followup.send(
                text, ephemeral=self.private, wait=True, allowed_mentions=NO_MENTIONS
            )
            self._followups.append(message)
        self._posted += 1

    async def edit(self, index: int, text: str) -> None:
        if index == 0:
            await self.interaction.edit_original_response(
                content=text, allowed_mentions=NO_MENTIONS
            )
        else:
            await self._followups[index - 1].edit(content=text, allowed_mentions=NO_MENTIONS)


class ChannelSurface:
    """Messages in a channel or thread; the first may be a reply to the user's message."""

    def __init__(
        self, channel: discord.abc.Messageable, *, reply_to: discord.Message | None = None
    ) -> None:
        self.channel = channel
        self.reply_to = reply_to
        self.messages: list[discord.Message] = []

    async def post(self, text: str) -> None:
        if not self.messages and self.reply_to is not None:
            # Still answer (without the reply link) if the message was deleted meanwhile.
            reference = self.reply_to.to_reference(fail_if_not_exists=False)
            message = await self.channel.send(
                text, reference=reference, allowed_mentions=NO_MENTIONS
            )
        else:
            message = await self.channel.send(text, allowed_mentions=NO_MENTIONS)
        self.messages.append(message)

    async def edit(self, index: int, text: str) -> None:
        self.messages[index] = await self.messages[index].edit(
            content=text, allowed_mentions=NO_MENTIONS
        )


class GrowingAnswer:
    """Keeps the text shown on a surface equal to the latest snapshot, split at the limit."""

    def __init__(self, surface: Surface, limit: int = MESSAGE_LIMIT) -> None:
        self.surface = surface
        self.limit = limit
        self.shown: list[str] = []

    async def show(self, text: str) -> None:
        """Edit the messages whose piece changed and post the new ones."""
        if not text.strip():
            return
        for index, piece in enumerate(split_message(text, self.limit)):
            if index < len(self.shown):
                if self.shown[index] != piece:
                    await self.surface.edit(index, piece)
                    self.shown[index] = piece
            else:
                await self.surface.post(piece)
                self.shown.append(piece)

    async def add(self, text: str) -> None:
        """Post ``text`` as messages of its own, after the answer."""
        for piece in split_message(text, self.limit):
            await self.surface.post(piece)
            self.shown.append(piece)


def with_notices(text: str, notices: list[str]) -> str:
    if not notices:
        return text
    return text + "\n\n" + "\n".join(f"-# {notice}" for notice in notices)


async def render_answer(
    events: AsyncIterator[ReplyEvent], surface: Surface, *, interval: float
) -> bool:
    """Show the answer streamed by ``events`` on ``surface``; True if anything was shown.

    Events are drained to the end even when Discord refuses a write, so the core still
    completes and records the turn; the first refusal (``discord.Forbidden``) is then raised.
    A failed intermediate edit is skipped (the next one catches up); a failed final write raises.
    """
    answer = GrowingAnswer(surface)
    notices: list[str] = []
    refused: discord.Forbidden | None = None
    async for event in paced(events, interval):
        if refused is not None:
            continue
        try:
            if isinstance(event, Snapshot):
                try:
                    await answer.show(event.text)
                except discord.Forbidden:
                    raise
                except discord.HTTPException as exc:
                    log.warning("streaming edit failed (%s); the next one catches up", exc.status)
            elif isinstance(event, FinalText):
                await answer.show(with_notices(event.text or "_(empty answer)_", notices))
                notices = []
            elif isinstance(event, UserError):
                text = with_notices(f"⚠️ {event.text}", notices)
                notices = []
                await (answer.add(text) if answer.shown else answer.show(text))
            elif isinstance(event, Notice):
                notices.append(event.text)
            elif isinstance(event, UsageReport):
                log.debug(
                    "answer used %s in + %s out tokens", event.input_tokens, event.output_tokens
                )
        except discord.Forbidden as exc:
            refused = exc
    if refused is not None:
        raise refused
    if notices:
        await answer.add("\n".join(f"-# {notice}" for notice in notices))
    return bool(answer.shown)
