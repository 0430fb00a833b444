"""Messages addressed to the bot: mentions, replies to its messages, /chat threads and DMs.

Each is answered once (the core claims the message id, so a gateway redelivery after a resume
yields nothing), with the reply chain as context, streamed by editing the bot's reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import Any

import discord

from adapters.discord.files import read_attachments
from adapters.discord.render import (
    ChannelSurface,
    DiscordAnswer,
    pacing,
    post_text,
    restart_note,
)
from adapters.discord.settings import DiscordSettings
from adapters.discord.translate import (
    REPLY_CHAIN_DEPTH,
    AccessPolicy,
    answered_in,
    channel_ids,
    ignore_reason,
    message_inbound,
    replies_in_place,
    role_ids,
)
from adapters.inflight import InFlight
from core import sentences
from core.attachments import AttachmentPolicy
from core.delivery import deliver
from core.service import ConversationService

log = logging.getLogger("parley.discord")

RESTARTING = "Parley is restarting; please try again in a minute."


class Answers(InFlight):
    """The handlers in flight, and at most ``limit`` answers running at once per worker
    (DISCORD_MAX_CONCURRENT_ANSWERS): more wait for a slot, none is dropped."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.slots = asyncio.Semaphore(limit)


class MessageHandler:
    """Answers the messages of one discord.py client that are meant for the bot."""

    def __init__(
        self,
        client: discord.Client,
        service: ConversationService,
        settings: DiscordSettings,
        policy: AccessPolicy,
        attachments: AttachmentPolicy,
        inflight: Answers,
    ) -> None:
        self.client = client
        self.service = service
        self.settings = settings
        self.policy = policy
        self.attachments = attachments
        self.inflight = inflight
        self._unreadable: set[str] = set()

    async def handle(self, message: discord.Message) -> None:
        with self.inflight.track():
            if self.inflight.closing:
                await self._stopping(message)
                return
            await self._handle(message)

    async def _stopping(self, message: discord.Message) -> None:
        """Not answered, so not claimed: nothing is recorded as answered. The gateway will not
        deliver it again, so a mention or DM is told to ask again."""
        log.info("not answering message %s: Parley is stopping", message.id)
        me = self.client.user
        addressed = message.guild is None or (me is not None and me in message.mentions)
        if me is not None and not message.author.bot and addressed:
            with contextlib.suppress(discord.HTTPException):
                await message.reply(RESTARTING, mention_author=False)

    async def _handle(self, message: discord.Message) -> None:
        me = self.client.user
        if me is None:
            return
        try:
            if message.author.bot:
                return
            channel = await self._channel(message)
            reason = self._refusal(message, channel, me.id)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            # a message discord.py could only half read (fields missing or of the wrong type)
            self._skip_unreadable(exc)
            return
        if reason is not None:
            # No reply in a place the bot is not enabled for; that would defeat the setting.
            log.debug("not answering message %s: %s", message.id, reason)
            return
        reply_to = None if replies_in_place(message, channel, me.id) else message
        surface = ChannelSurface(channel, reply_to=reply_to)
        try:
            await self._answer(message, channel, me.id, surface)
        except discord.Forbidden:
            await self._cannot_post(message, channel)
        except discord.HTTPException as exc:
            log.warning(
                "answering message %s failed: HTTP %s (code %s)", message.id, exc.status, exc.code
            )
            # best effort: say so rather than leave a half-written answer without a word
            with contextlib.suppress(discord.HTTPException):
                await post_text(
                    ChannelSurface(channel), sentences.failure_text(sentences.GENERIC_ERROR)
                )

    def _refusal(self, message: discord.Message, channel: Any, bot_id: int) -> str | None:
        """Why ``message`` is not answered (not addressed, not allowed), or None."""
        reason = ignore_reason(
            message, channel, bot_id, content_intent=self.client.intents.message_content
        )
        if reason is None:
            reason = self.policy.refusal(
                user_id=message.author.id,
                role_ids=role_ids(message.author),
                guild_id=message.guild.id if message.guild else None,
                channel_ids=channel_ids(channel),
            )
        return reason

    def _skip_unreadable(self, exc: Exception) -> None:
        """Log an unreadable message once per kind of problem (never its content)."""
        kind = type(exc).__name__
        level = logging.DEBUG if kind in self._unreadable else logging.WARNING
        self._unreadable.add(kind)
        log.log(level, "skipped a malformed message from Discord (%s)", kind)

    async def _answer(
        self, message: discord.Message, channel: Any, bot_id: int, surface: ChannelSurface
    ) -> None:
        """Read the reply chain and the files, then deliver the core's answer."""
        async with restart_note(surface):  # deliver says so itself once it runs
            chain = await reply_chain(message)
            files, notes = await read_attachments(message.attachments, self.attachments)
        inbound = message_inbound(message, channel, bot_id, chain, files, notes)
        reply = surface.reply_to.id if surface.reply_to is not None else None
        inbound = replace(inbound, reply_to=answered_in(channel, reply))
        pace = pacing(surface, self.settings.edit_interval)
        async with self.inflight.slots:
            await deliver(
                self.service.answer(inbound),
                DiscordAnswer(surface, pacing=pace),
                pace,
                journal=self.service.journal(inbound),
            )

    async def _channel(self, message: discord.Message) -> Any:
        """The message's channel, fetched when the cache doesn't know it (e.g. an old thread)."""
        channel = message.channel
        if isinstance(channel, discord.PartialMessageable) and message.guild is not None:
            try:
                return await self.client.fetch_channel(channel.id)
            except discord.HTTPException:
                return channel
        return channel

    async def _cannot_post(self, message: discord.Message, channel: Any) -> None:
        """Tell the author in a DM why there is no answer where they asked."""
        where = getattr(channel, "mention", "that channel")
        log.warning("missing permission to answer message %s in channel %s", message.id, channel.id)
        try:
            await message.author.send(
                f"I couldn't answer you in {where}: I'm missing permission to post there. Ask "
                "an admin to let me send messages (and read message history) in that channel, "
                "or use `/ask`."
            )
        except discord.HTTPException:
            log.warning("could not tell the author of message %s either", message.id)


async def reply_chain(
    message: discord.Message, depth: int = REPLY_CHAIN_DEPTH
) -> list[discord.Message]:
    """The messages ``message`` replies to, oldest first, at most ``depth`` of them."""
    chain: list[discord.Message] = []
    current = message
    while len(chain) < depth and current.reference is not None:
        ref = current.reference
        if ref.message_id is None:
            break
        found = ref.resolved if isinstance(ref.resolved, discord.Message) else ref.cached_message
        if found is None:
            if ref.channel_id != current.channel.id:
                break
            try:
                found = await current.channel.fetch_message(ref.message_id)
            except discord.HTTPException:
                break
        chain.append(found)
        current = found
    chain.reverse()
    return chain
