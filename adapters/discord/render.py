"""Render out: the core's reply events as Discord messages, edited in place as the answer grows.

An answer starts as one message that is edited at most once per DISCORD_EDIT_INTERVAL; past
Discord's 2,000 characters it continues in further messages (follow-ups for interactions,
plain messages in channels and threads), split at sensible boundaries with code fences kept
balanced. Rate limits are left to discord.py, which waits and retries on 429.

An interaction's token lets the bot edit its reply for 15 minutes only: an answer still being
written after ``TOKEN_SAFE_SECONDS``, or whose edit fails because the token is gone (401/404),
continues in the channel (in a DM for a private answer), so it is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol, cast

import discord

from core.messages import FinalText, Notice, ReplyEvent, UsageReport, UserError
from core.splitting import split_message
from core.streaming import Snapshot, paced

log = logging.getLogger("parley.discord")

MESSAGE_LIMIT = 2000
NO_MENTIONS = discord.AllowedMentions.none()
EMPTY_ANSWER = "_(empty answer)_"
RESTARTED = "⚠️ Parley was restarted while answering; please ask again."
# Discord accepts edits of an interaction's reply for 15 minutes; switch to the channel before.
TOKEN_SAFE_SECONDS = 14 * 60.0
TOKEN_GONE = (401, 404)  # Invalid Webhook Token / Unknown Webhook, Message or Interaction


class Surface(Protocol):
    """Where an answer goes: a numbered list of messages that can be posted and edited."""

    async def post(self, text: str) -> None:
        """Add a message after the ones already posted."""
        ...

    async def edit(self, index: int, text: str) -> None:
        """Replace the text of the ``index``-th posted message."""
        ...


class InteractionSurface:
    """An interaction's original response (sent, or edited when deferred), then follow-ups.

    Once the interaction token is about to expire (``TOKEN_SAFE_SECONDS`` after ``started``, a
    ``time.monotonic()`` reading taken on receipt) or a write fails with 401/404 because it is
    gone, the rest of the answer goes to the channel instead (to the user's DMs when private):
    pieces already shown are re-posted there when they change, new pieces are posted there.
    """

    def __init__(
        self,
        interaction: discord.Interaction,
        *,
        private: bool = False,
        started: float | None = None,
    ) -> None:
        self.interaction = interaction
        self.private = private
        self.deadline = (time.monotonic() if started is None else started) + TOKEN_SAFE_SECONDS
        self.posted = 0
        self.fallback: ChannelSurface | None = None
        self._followups: list[discord.WebhookMessage] = []
        self._moved: dict[int, int] = {}  # answer piece -> its message on the fallback surface

    async def post(self, text: str) -> None:
        index = self.posted
        if not await self._on_fallback(index, text):
            try:
                await self._post_here(text)
            except discord.HTTPException as exc:
                if exc.status not in TOKEN_GONE:
                    raise
                await self._switch(f"HTTP {exc.status}")
                await self._on_fallback(index, text)
        self.posted += 1

    async def edit(self, index: int, text: str) -> None:
        if await self._on_fallback(index, text):
            return
        try:
            if index == 0:
                await self.interaction.edit_original_response(
                    content=text, allowed_mentions=NO_MENTIONS
                )
            else:
                await self._followups[index - 1].edit(content=text, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:
            if exc.status not in TOKEN_GONE:
                raise
            await self._switch(f"HTTP {exc.status}")
            await self._on_fallback(index, text)

    async def _post_here(self, text: str) -> None:
        if self.posted == 0 and not self.interaction.response.is_done():
            await self.interaction.response.send_message(
                text, ephemeral=self.private, allowed_mentions=NO_MENTIONS
            )
        elif self.posted == 0:
            await self.interaction.edit_original_response(
                content=text, allowed_mentions=NO_MENTIONS
            )
        else:
            message = await self.interaction.followup.send(
                text, ephemeral=self.private, wait=True, allowed_mentions=NO_MENTIONS
            )
            self._followups.append(message)

    async def _on_fallback(self, index: int, text: str) -> bool:
        """Write piece ``index`` on the fallback surface if the answer has moved there (or
        must move now, the token being about to expire); False to write it on the interaction."""
        if self.fallback is None:
            if time.monotonic() < self.deadline:
                return False
            await self._switch("token about to expire", token_valid=True)
        assert self.fallback is not None
        if index in self._moved:
            await self.fallback.edit(self._moved[index], text)
        else:
            await self.fallback.post(text)
            self._moved[index] = len(self.fallback.messages) - 1
        return True

    async def _switch(self, why: str, *, token_valid: bool = False) -> None:
        """Continue the answer in the channel (a DM when private), saying so on both sides."""
        interaction = self.interaction
        where = "in a direct message" if self.private else "below"
        log.info("interaction %s: %s; the answer continues %s", interaction.id, why, where)
        if token_valid and self.posted == 0 and interaction.response.is_done():
            # Replace "thinking…" while the token still works.
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(
                    content=f"-# The answer continues {where}.", allowed_mentions=NO_MENTIONS
                )
        channel: Any
        if self.private:
            channel = await interaction.user.create_dm()
        else:
            channel = interaction.channel or interaction.client.get_partial_messageable(
                interaction.channel_id or 0, guild_id=interaction.guild_id
            )
        self.fallback = ChannelSurface(channel)
        what = f"`/{interaction.command.name}`" if interaction.command else "question"
        await channel.send(
            f"-# The answer to {interaction.user.mention}'s {what} continues here.",
            allowed_mentions=NO_MENTIONS,
        )


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
        if not text.strip():
            return
        for piece in split_message(text, self.limit):
            await self.surface.post(piece)
            self.shown.append(piece)


async def say_restarted(surface: Surface) -> None:
    """End an answer cut short by shutdown with a note (best effort: the process is stopping)."""
    try:
        await surface.post(RESTARTED)
    except Exception as exc:  # noqa: BLE001 - nothing more can be done while stopping
        log.warning("could not say the answer was cut by the restart (%s)", type(exc).__name__)


@contextlib.asynccontextmanager
async def restart_note(surface: Surface) -> AsyncIterator[None]:
    """If the block is cancelled (the adapter stopping), the surface ends with ``RESTARTED``."""
    try:
        yield
    except asyncio.CancelledError:
        await say_restarted(surface)
        raise


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
    stream = cast(AsyncGenerator[Snapshot | ReplyEvent, None], paced(events, interval))
    async with contextlib.aclosing(stream):
        async for event in stream:
            if refused is not None:
                continue
            try:
                await _render(event, answer, notices)
            except discord.Forbidden as exc:
                refused = exc
    if refused is not None:
        raise refused
    if notices:
        await answer.add("\n".join(f"-# {notice}" for notice in notices))
    return bool(answer.shown)


async def _render(event: Snapshot | ReplyEvent, answer: GrowingAnswer, notices: list[str]) -> None:
    if isinstance(event, Snapshot):
        try:
            await answer.show(event.text)
        except discord.Forbidden:
            raise
        except discord.HTTPException as exc:
            log.warning("streaming edit failed (%s); the next one catches up", exc.status)
    elif isinstance(event, FinalText):
        # A whitespace-only answer would show nothing: no edit, "thinking…" forever.
        text = event.text if event.text.strip() else EMPTY_ANSWER
        await answer.show(with_notices(text, notices))
        notices.clear()
    elif isinstance(event, UserError):
        text = with_notices(f"⚠️ {event.text.strip() or 'No answer.'}", notices)
        notices.clear()
        await (answer.add(text) if answer.shown else answer.show(text))
    elif isinstance(event, Notice):
        notices.append(event.text)
    elif isinstance(event, UsageReport):
        log.debug("answer used %s in + %s out tokens", event.input_tokens, event.output_tokens)
