"""Messages addressed to the bot: mentions, replies to its messages, /chat threads and DMs.

Each is answered once (the core claims the message id, so a gateway redelivery after a resume
is dropped), with the reply chain as context, streamed by editing the bot's reply.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import discord

from adapters.discord.interactions import RESTARTING
from adapters.discord.render import ChannelSurface, render_answer, restart_note
from adapters.discord.translate import (
    AccessPolicy,
    author_of,
    bot_role_id,
    channel_ids,
    conversation_key,
    plain_text,
    read_attachments,
    reply_chain,
    role_ids,
    with_reply_context,
)
from adapters.inflight import InFlight
from core.messages import Inbound
from core.service import GENERIC_ERROR, ConversationService
from core.settings import Settings

log = logging.getLogger("parley.discord")

ANSWERED_TYPES = (discord.MessageType.default, discord.MessageType.reply)


class MessageHandler:
    """Answers the messages of one discord.py client that are meant for the bot."""

    def __init__(
        self,
        client: discord.Client,
        service: ConversationService,
        settings: Settings,
        policy: AccessPolicy,
        inflight: InFlight,
    ) -> None:
        self.client = client
        self.service = service
        self.settings = settings
        self.policy = policy
        self.inflight = inflight

    async def handle(self, message: discord.Message) -> None:
        with self.inflight.track():
            if self.inflight.closing:
                # Stopping: not claimed, so nothing is recorded as answered. The gateway will
                # not deliver it again, so a mention or DM is told to ask again.
                log.info("not answering message %s: Parley is stopping", message.id)
                me = self.client.user
                addressed = message.guild is None or (me is not None and me in message.mentions)
                if me is not None and not message.author.bot and addressed:
                    with contextlib.suppress(discord.HTTPException):
                        await message.reply(RESTARTING, mention_author=False)
                return
            await self._handle(message)

    async def _handle(self, message: discord.Message) -> None:
        me = self.client.user
        if me is None or message.author.bot or message.type not in ANSWERED_TYPES:
            return
        channel = await self._channel(message)
        if not self._addressed(message, channel, me.id):
            return
        refusal = self.policy.refusal(
            user_id=message.author.id,
            role_ids=role_ids(message.author),
            guild_id=message.guild.id if message.guild else None,
            channel_ids=channel_ids(channel),
        )
        if refusal is not None:
            # No reply in a place the bot is not enabled for; that would defeat the setting.
            log.debug("ignoring message %s: %s", message.id, refusal)
            return
        text = plain_text(message, me.id)
        if not text and not message.attachments and not self.client.intents.message_content:
            log.info(
                "message %s has no readable content (Message Content intent is off)", message.id
            )
            return
        in_own_place = message.guild is None or self._own_thread(channel, me.id)
        surface = ChannelSurface(channel, reply_to=None if in_own_place else message)
        try:
            async with restart_note(surface):
                chain = await reply_chain(message)
                files, notes = await read_attachments(message.attachments, self.settings)
                inbound = Inbound(
                    key=conversation_key(channel),
                    author=author_of(message.author),
                    text=with_reply_context(text, chain, me.id),
                    attachments=files,
                    event_id=str(message.id),
                    notes=notes,
                )
                await render_answer(
                    self.service.answer(inbound),
                    surface,
                    interval=self.settings.discord_edit_interval,
                )
        except discord.Forbidden:
            await self._cannot_post(message, channel)
        except discord.HTTPException as exc:
            log.warning(
                "answering message %s failed: HTTP %s (code %s)", message.id, exc.status, exc.code
            )
            # best effort: say so rather than leave a half-written answer without a word
            with contextlib.suppress(discord.HTTPException):
                await ChannelSurface(channel).post(GENERIC_ERROR)

    async def _channel(self, message: discord.Message) -> Any:
        """The message's channel, fetched when the cache doesn't know it (e.g. an old thread)."""
        channel = message.channel
        if isinstance(channel, discord.PartialMessageable) and message.guild is not None:
            try:
                return await self.client.fetch_channel(channel.id)
            except discord.HTTPException:
                return channel
        return channel

    @staticmethod
    def _own_thread(channel: Any, bot_id: int) -> bool:
        return isinstance(channel, discord.Thread) and channel.owner_id == bot_id

    def _addressed(self, message: discord.Message, channel: Any, bot_id: int) -> bool:
        """DMs, mentions, replies to the bot's messages, and anything in a /chat thread."""
        if message.guild is None or self._own_thread(channel, bot_id):
            return True
        if any(user.id == bot_id for user in message.mentions):
            return True
        own_role = bot_role_id(message)  # people often pick the bot's role in autocomplete
        if own_role is not None and any(role.id == own_role for role in message.role_mentions):
            return True
        ref = message.reference
        return bool(
            ref is not None
            and isinstance(ref.resolved, discord.Message)
            and ref.resolved.author.id == bot_id
        )

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
