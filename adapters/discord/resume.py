"""Finish, in this worker, a Discord answer a stopped worker left (``core.recovery``).

What a Discord answer has shown is kept with its claim (``DiscordAnswer.record``): the
messages it posted in a channel, or for an interaction its follow-ups, what moved to the
channel, and the application id and interaction token that edit its original response (the
token is a credential: it is never logged, and the record drops it once the answer is shown).

The answer is finished in the same place. An interaction whose token is still good gets its
original response ("thinking…" or the cut answer) edited through the interaction's webhook;
the dead worker's follow-ups are deleted. Past the token's life the answer goes to the
channel (a DM when private), as a live answer would. A message's answer continues in the
first message the dead worker posted; the others are deleted. A stored answer is shown again;
a question with none is asked again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import discord
from discord.http import handle_message_parameters
from discord.webhook.async_ import async_context

from adapters.discord.render import (
    NO_MENTIONS,
    TOKEN_SAFE_SECONDS,
    ChannelSurface,
    DiscordAnswer,
    InteractionSurface,
    pacing,
)
from adapters.discord.translate import PLATFORM
from core.delivery import deliver
from core.messages import Inbound
from core.recovery import Resumed
from core.service import ConversationService

log = logging.getLogger("parley.discord")

# How many messages after a question are searched for an answer to it that a stopped worker
# posted without recording it.
UNRECORDED_SEARCH = 20


class WebhookReply:
    """``render.Reply`` through an interaction's webhook (its application id and token), for
    an interaction another worker received."""

    def __init__(self, client: discord.Client, record: Mapping[str, Any]) -> None:
        self.client = client
        self.id = int(record["interaction"])
        self.application_id = int(record["application"])
        self.token = str(record["token"])
        self.user_id = int(record["user"])
        self.channel_id = int(record["channel"]) if record.get("channel") else None
        payload: Any = {"id": self.application_id, "type": 3, "token": self.token}
        self.webhook = discord.Webhook.from_state(payload, client._connection)

    def acknowledged(self) -> bool:
        return True  # its worker deferred it before claiming it

    async def respond(self, text: str, *, ephemeral: bool) -> None:
        await self.edit_original(text)

    async def edit_original(self, text: str) -> None:
        webhook = self.webhook
        with handle_message_parameters(content=text, allowed_mentions=NO_MENTIONS) as params:
            await async_context.get().edit_original_interaction_response(
                self.application_id,
                self.token,
                session=webhook.session,
                proxy=webhook.proxy,
                proxy_auth=webhook.proxy_auth,
                payload=params.payload,
                multipart=params.multipart,
                files=params.files,
            )

    async def delete_original(self) -> None:
        webhook = self.webhook
        await async_context.get().delete_original_interaction_response(
            self.application_id,
            self.token,
            session=webhook.session,
            proxy=webhook.proxy,
            proxy_auth=webhook.proxy_auth,
        )

    async def follow(self, text: str, *, ephemeral: bool) -> discord.WebhookMessage:
        return await self.webhook.send(
            text, ephemeral=ephemeral, wait=True, allowed_mentions=NO_MENTIONS
        )

    async def delete_followup(self, message_id: int) -> None:
        await self.webhook.delete_message(message_id)

    async def place(self, private: bool) -> discord.abc.Messageable:
        return await _place(self.client, self.user_id if private else None, self.channel_id)

    def asked(self) -> str:
        return f"<@{self.user_id}>'s question"


async def resume(
    client: discord.Client,
    service: ConversationService,
    resumed: Resumed,
    *,
    edit_interval: float,
) -> None:
    """Finish the answer ``resumed`` describes (see the module), editing it at most once per
    ``edit_interval``."""
    inbound = resumed.inbound
    if inbound is None:  # Discord claims nothing before taking it on
        log.error("discord: an unfinished event has no question to answer; dropped")
        await service.settle_received(PLATFORM, resumed.event_id, "failed")
        return
    record = resumed.shown
    done = record.get("done")
    if done in ("answered", "failed"):  # shown in full; its worker stopped before saying so
        await service.settle_received(PLATFORM, resumed.event_id, str(done))
        return
    try:
        surface = await _surface(client, inbound, record)
    except (KeyError, TypeError, ValueError, discord.HTTPException):
        log.error("discord: an unfinished answer in %s has no place to go; dropped", inbound.key)
        await service.settle_received(PLATFORM, resumed.event_id, "failed")
        return
    pace = pacing(surface, edit_interval)
    if resumed.answer is not None:
        events = service.replay(inbound, resumed.answer)
    else:
        events = service.answer(inbound, resumed=True)
    journal = service.journal(inbound)
    await deliver(events, DiscordAnswer(surface, pacing=pace), pace, journal=journal)


async def _surface(
    client: discord.Client, inbound: Inbound, record: Mapping[str, Any]
) -> InteractionSurface | ChannelSurface:
    """Where the answer continues, once what the dead worker left there that can't be
    continued is taken down."""
    if record.get("token"):
        return await _interaction(client, record)
    where = dict(inbound.reply_to)
    if where.get("interaction"):  # stopped before recording its token: the channel, or a DM
        user = int(where["user"]) if where.get("private") else None
        return ChannelSurface(await _place(client, user, int(where.get("channel") or 0)))
    channel = client.get_partial_messageable(int(record.get("channel") or where["channel"]))
    surface = ChannelSurface(channel)
    if where.get("reply"):
        surface.reply_to = channel.get_partial_message(int(where["reply"]))
    first, *extras = [int(m) for m in record.get("messages") or ()] or [0]
    if not first and where.get("reply"):  # it may have posted before it could record it
        first = await _unrecorded_reply(client, channel, int(where["reply"]))
    await _delete(channel, extras)
    if first:
        surface.continues = channel.get_partial_message(first)
    return surface


async def _unrecorded_reply(
    client: discord.Client, channel: discord.PartialMessageable, question: int
) -> int:
    """The bot's reply to message ``question`` in ``channel`` (0: none, or the history can't
    be read: the answer is posted anew rather than dropped), posted by a worker that stopped
    before it could record it."""
    me = client.user.id if client.user is not None else None
    after = discord.Object(question)
    try:
        async for message in channel.history(limit=UNRECORDED_SEARCH, after=after):
            reference = message.reference
            if message.author.id == me and reference and reference.message_id == question:
                return message.id
    except discord.HTTPException as exc:  # e.g. 403 without Read Message History
        log.info("discord: looking for an unrecorded reply failed (HTTP %s)", exc.status)
    return 0


async def _interaction(client: discord.Client, record: Mapping[str, Any]) -> InteractionSurface:
    """The interaction's original response, continued while its token is good (a surface
    that moves to the channel past it); its follow-ups and channel messages taken down."""
    reply = WebhookReply(client, record)
    left = float(record["until"]) - time.time()
    for message_id in record.get("followups") or ():  # the token may outlive ``until``
        with contextlib.suppress(discord.HTTPException):
            await reply.delete_followup(int(message_id))
    moved = record.get("fallback")
    if isinstance(moved, Mapping):
        channel = client.get_partial_messageable(int(moved["channel"]))
        await _delete(channel, [int(m) for m in moved.get("messages") or ()])
    started = time.monotonic() + left - TOKEN_SAFE_SECONDS
    return InteractionSurface(reply, private=bool(record.get("private")), started=started)


async def _delete(channel: discord.PartialMessageable, message_ids: list[int]) -> None:
    """Delete what a stopped worker left (best effort: gone already is fine)."""
    for message_id in message_ids:
        with contextlib.suppress(discord.HTTPException):
            await channel.get_partial_message(message_id).delete()


async def _place(
    client: discord.Client, private_to: int | None, channel_id: int | None
) -> discord.abc.Messageable:
    """A DM with user ``private_to``, or else the channel ``channel_id``."""
    if private_to is not None:
        return await client.create_dm(discord.Object(private_to))
    return client.get_partial_messageable(channel_id or 0)
