"""Render out: an answer from the core as Discord messages, edited in place as it grows.

``DiscordAnswer`` is Discord's ``core.delivery.Renderer``: ``deliver`` paces its writes (at
most one per DISCORD_EDIT_INTERVAL) and composes the text; this module only decides which
Discord message shows which part of it. Past Discord's 2,000 characters an answer continues in
further messages (follow-ups for interactions, plain messages in channels and threads), laid
out by ``MessageLayout`` so a message that the answer continued after never changes again.
Every request is paced inside Discord's write limit (``WRITES``); discord.py's 429 retries stay
the safety net.

An interaction's token lets the bot edit its reply for 15 minutes only: an answer still being
written after ``TOKEN_SAFE_SECONDS``, or whose edit fails because the token is gone (401/404),
continues in the channel (in a DM for a private answer), so it is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol, cast

import discord

from adapters.discord.layout import MessageLayout
from core import sentences
from core.budget import Rate
from core.delivery import BudgetPacing
from core.splitting import split_message

log = logging.getLogger("parley.discord")

MESSAGE_LIMIT = 2000
NO_MENTIONS = discord.AllowedMentions.none()
# Discord accepts edits of an interaction's reply for 15 minutes; switch to the channel before.
TOKEN_SAFE_SECONDS = 14 * 60.0
TOKEN_GONE = (401, 404)  # Invalid Webhook Token / Unknown Webhook, Message or Interaction
# Discord allows 5 message writes per 5 seconds per channel and per interaction token. Paced
# as a rolling window (never more than 5 in any 5 s, whatever Discord's window does): 2 at
# once, then about one per 2 s; a progress write leaves 1 token to the final write.
WRITES = Rate.within(5, 5.0)


class Poster(Protocol):
    """Somewhere to post messages."""

    async def post(self, text: str) -> None:
        """Add a message after the ones already posted."""
        ...


class Surface(Poster, Protocol):
    """Where an answer goes: a numbered list of messages that can be posted, edited, deleted."""

    async def edit(self, index: int, text: str) -> None:
        """Replace the text of the ``index``-th posted message."""
        ...

    async def delete(self, index: int) -> None:
        """Remove the ``index``-th posted message (always the last one)."""
        ...


class ChannelSurface:
    """Messages in a channel or thread; the first may be a reply to the user's message."""

    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        reply_to: discord.Message | discord.PartialMessage | None = None,
    ) -> None:
        self.channel = channel
        self.reply_to = reply_to
        self.messages: list[discord.Message | discord.PartialMessage] = []
        # A message a stopped worker's answer showed, which this one continues (``resume``).
        self.continues: discord.PartialMessage | None = None

    async def typing(self) -> None:
        """Show "Parley is typing…" until the first message arrives (Discord ends it then)."""
        await self.channel.typing()

    async def post(self, text: str) -> None:
        if not self.messages and self.continues is not None:
            continued, self.continues = self.continues, None
            with contextlib.suppress(discord.NotFound):  # deleted meanwhile: post anew
                self.messages.append(
                    await continued.edit(content=text, allowed_mentions=NO_MENTIONS)
                )
                return
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

    async def delete(self, index: int) -> None:
        await self.messages[index].delete()
        del self.messages[index]

    def record(self, *, credentials: bool = True) -> dict[str, Any]:
        """The messages shown (``core.recovery``: another worker continues the first one)."""
        continued = [self.continues] if self.continues is not None else []
        return {
            "channel": str(getattr(self.channel, "id", "")),
            "messages": [str(m.id) for m in [*continued, *self.messages]],
        }

    async def take_down_extras(self) -> None:
        """Delete every message but the first (the answer's place, which another worker
        continues)."""
        while len(self.messages) > 1:
            with contextlib.suppress(discord.HTTPException):
                await self.messages[-1].delete()
            self.messages.pop()


class Reply(Protocol):
    """The interaction an answer replies to: its original response and follow-ups, and where
    it was asked (``LiveReply``: the interaction as it arrived; ``resume.WebhookReply``: its
    application id and token, kept by a worker that stopped)."""

    @property
    def id(self) -> int: ...

    @property
    def application_id(self) -> int: ...

    @property
    def token(self) -> str: ...

    @property
    def user_id(self) -> int: ...

    @property
    def channel_id(self) -> int | None: ...

    def acknowledged(self) -> bool:
        """Whether the interaction has its original response (deferred or sent)."""
        ...

    async def respond(self, text: str, *, ephemeral: bool) -> None: ...

    async def edit_original(self, text: str) -> None: ...

    async def delete_original(self) -> None: ...

    async def follow(self, text: str, *, ephemeral: bool) -> discord.WebhookMessage: ...

    async def delete_followup(self, message_id: int) -> None: ...

    async def place(self, private: bool) -> discord.abc.Messageable:
        """Where the answer continues once the token is gone: the channel, or a DM."""
        ...

    def asked(self) -> str:
        """Who asked what, for the note where the answer continues ("<@1>'s `/ask`")."""
        ...


class LiveReply:
    """``Reply`` through the interaction discord.py received."""

    def __init__(self, interaction: discord.Interaction) -> None:
        self.interaction = interaction

    @property
    def id(self) -> int:
        return self.interaction.id

    @property
    def application_id(self) -> int:
        return self.interaction.application_id

    @property
    def token(self) -> str:
        return self.interaction.token

    @property
    def user_id(self) -> int:
        return self.interaction.user.id

    @property
    def channel_id(self) -> int | None:
        return self.interaction.channel_id

    def acknowledged(self) -> bool:
        return self.interaction.response.is_done()

    async def respond(self, text: str, *, ephemeral: bool) -> None:
        await self.interaction.response.send_message(
            text, ephemeral=ephemeral, allowed_mentions=NO_MENTIONS
        )

    async def edit_original(self, text: str) -> None:
        await self.interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)

    async def delete_original(self) -> None:
        await self.interaction.delete_original_response()

    async def follow(self, text: str, *, ephemeral: bool) -> discord.WebhookMessage:
        return await self.interaction.followup.send(
            text, ephemeral=ephemeral, wait=True, allowed_mentions=NO_MENTIONS
        )

    async def delete_followup(self, message_id: int) -> None:
        await self.interaction.followup.delete_message(message_id)

    async def place(self, private: bool) -> discord.abc.Messageable:
        interaction = self.interaction
        if private:
            return await interaction.user.create_dm()
        channel: Any = interaction.channel or interaction.client.get_partial_messageable(
            interaction.channel_id or 0, guild_id=interaction.guild_id
        )
        return cast(discord.abc.Messageable, channel)

    def asked(self) -> str:
        interaction = self.interaction
        what = f"`/{interaction.command.name}`" if interaction.command else "question"
        return f"{interaction.user.mention}'s {what}"


class InteractionSurface:
    """An interaction's original response (sent, or edited when deferred), then follow-ups.

    Once the interaction token is about to expire (``TOKEN_SAFE_SECONDS`` after ``started``, a
    ``time.monotonic()`` reading taken on receipt) or a write fails with 401/404 because it is
    gone, the rest of the answer goes to the channel instead (to the user's DMs when private):
    pieces already shown are re-posted there when they change, new pieces are posted there.
    """

    def __init__(
        self,
        reply: Reply | discord.Interaction,
        *,
        private: bool = False,
        started: float | None = None,
    ) -> None:
        self.reply: Reply = LiveReply(reply) if isinstance(reply, discord.Interaction) else reply
        self.private = private
        self.deadline = (time.monotonic() if started is None else started) + TOKEN_SAFE_SECONDS
        # The same moment by the wall clock, for another worker (kept in the record).
        self.until = time.time() + self.deadline - time.monotonic()
        self.posted = 0
        self.fallback: ChannelSurface | None = None
        self._note: discord.Message | None = None  # the fallback's note "continues here"
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
                await self.reply.edit_original(text)
            else:
                await self._followups[index - 1].edit(content=text, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:
            if exc.status not in TOKEN_GONE:
                raise
            await self._switch(f"HTTP {exc.status}")
            await self._on_fallback(index, text)

    async def delete(self, index: int) -> None:
        self.posted -= 1
        if self.fallback is not None and index in self._moved:
            await self.fallback.delete(self._moved.pop(index))
        elif index == 0:
            await self.reply.delete_original()
        elif index - 1 < len(self._followups):
            await self._followups.pop(index - 1).delete()

    async def withdraw(self) -> None:
        """Remove the "thinking…" response of an interaction that gets no answer here."""
        try:
            await self.reply.delete_original()
        except discord.HTTPException as exc:
            log.info("could not withdraw the reply of %s (HTTP %s)", self.reply.id, exc.status)

    def record(self, *, credentials: bool = True) -> dict[str, Any]:
        """What the answer shows, for another worker to finish it (``core.recovery``): the
        interaction, its follow-ups and what moved to the channel. ``credentials``: with the
        application id and token that edit its reply (until the token's safe end, wall-clock
        ``until``); without once nothing is left to write."""
        fallback = self.fallback
        record: dict[str, Any] = {
            "interaction": str(self.reply.id),
            "user": str(self.reply.user_id),
            "channel": str(self.reply.channel_id or ""),
            "private": self.private,
            "followups": [str(m.id) for m in self._followups],
        }
        if fallback is not None:
            shown = [str(self._note.id)] if self._note is not None else []
            record["fallback"] = {
                "channel": str(getattr(fallback.channel, "id", "")),
                "messages": shown + [str(m.id) for m in fallback.messages],
            }
        if credentials:
            record["application"] = str(self.reply.application_id)
            record["token"] = self.reply.token
            record["until"] = self.until
        return record

    async def take_down_extras(self) -> None:
        """Delete the follow-ups and what moved to the channel, leaving the original response
        (the answer's place, which another worker continues)."""
        for message in self._followups:
            with contextlib.suppress(discord.HTTPException):
                await message.delete()
        self._followups = []
        if self.fallback is not None:
            await self.fallback.take_down_extras()
            if self.fallback.messages:
                with contextlib.suppress(discord.HTTPException):
                    await self.fallback.delete(0)
            if self._note is not None:
                with contextlib.suppress(discord.HTTPException):
                    await self._note.delete()

    async def _post_here(self, text: str) -> None:
        if self.posted == 0 and not self.reply.acknowledged():
            await self.reply.respond(text, ephemeral=self.private)
        elif self.posted == 0:
            await self.reply.edit_original(text)
        else:
            self._followups.append(await self.reply.follow(text, ephemeral=self.private))

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
        reply = self.reply
        where = "in a direct message" if self.private else "below"
        log.info("interaction %s: %s; the answer continues %s", reply.id, why, where)
        if token_valid and self.posted == 0 and reply.acknowledged():
            # Replace "thinking…" while the token still works.
            with contextlib.suppress(discord.HTTPException):
                await reply.edit_original(f"-# The answer continues {where}.")
        channel = await reply.place(self.private)
        self.fallback = ChannelSurface(channel)
        note = await channel.send(
            f"-# The answer to {reply.asked()} continues here.", allowed_mentions=NO_MENTIONS
        )
        self._note = note


class DiscordAnswer:
    """``core.delivery.Renderer`` on Discord: one answer's messages on a ``Surface``.

    Only the last message is edited as the answer grows (see ``MessageLayout``). After the
    first refused write (``discord.Forbidden``) nothing more is tried: the rest of the answer
    would be refused too, and ``deliver`` raises the refusal once the core is done.

    ``deliver`` admits each renderer call as one write under ``pacing``; where a call takes
    more than one request (the answer outgrows a message: the full one is edited, the next
    posted), each further request waits for a write of its own, so the budget counts requests.
    """

    def __init__(
        self, surface: Surface, *, limit: int = MESSAGE_LIMIT, pacing: BudgetPacing | None = None
    ) -> None:
        self.surface = surface
        self.limit = limit
        self.pacing = pacing
        self.layout = MessageLayout(limit)
        self.shown: list[str] = []
        self.refused: discord.Forbidden | None = None
        self.done: str | None = None  # "answered" or "failed" once the final write is shown
        self.final = False  # the final write is under way (or failed): nothing comes after it

    async def start(self) -> None:
        if isinstance(self.surface, ChannelSurface):
            await self.surface.typing()

    async def progress(self, text: str) -> None:
        if self.refused is None:
            await self._show(self.layout.pieces(text))

    async def finish(self, text: str) -> None:
        self._raise_if_refused()
        self.final = True
        await self._show(self.layout.pieces(text))
        self.done = "answered"

    async def fail(self, text: str) -> None:
        """The sentence replaces "thinking…", or follows the text already shown."""
        self._raise_if_refused()
        self.final = True
        pieces = split_message(text, self.limit)
        await self._show([*self.shown, *pieces] if self.shown else pieces)
        self.done = "failed"

    # --- resuming (``core.recovery``) -----------------------------------------------------

    def record(self) -> dict[str, Any]:
        """What this answer has shown, for another worker to finish it if this one stops;
        once its final write is done, shown in full or not, without the interaction's token."""
        record = getattr(self.surface, "record", None)
        writing = self.done is None and not self.final
        shown: dict[str, Any] = {} if record is None else record(credentials=writing)
        if self.done is not None:
            shown["done"] = self.done
        return shown

    async def withdraw(self) -> None:
        """Another worker took this answer over and shows it in the same place (the first
        message, or the interaction's original response): take down the rest."""
        self.done = "withdrawn"
        take_down = getattr(self.surface, "take_down_extras", None)
        if take_down is not None:
            await take_down()

    def _raise_if_refused(self) -> None:
        if self.refused is not None:
            raise self.refused

    async def _show(self, pieces: list[str]) -> None:
        """Edit the messages whose text changed, post the new ones, delete the surplus."""
        requests = 0
        try:
            for index, piece in enumerate(pieces):
                if index >= len(self.shown):
                    requests = await self._admitted(requests)
                    await self.surface.post(piece)
                    self.shown.append(piece)
                elif self.shown[index] != piece:
                    requests = await self._admitted(requests)
                    await self.surface.edit(index, piece)
                    self.shown[index] = piece
            while len(self.shown) > len(pieces):
                requests = await self._admitted(requests)
                await self.surface.delete(len(self.shown) - 1)
                self.shown.pop()
        except discord.Forbidden as exc:
            self.refused = exc
            raise

    async def _admitted(self, requests: int) -> int:
        """Wait until request number ``requests + 1`` of one renderer call may go (``deliver``
        admitted the first); the count so far."""
        if requests and self.pacing is not None:
            await self.pacing.admit(True)
        return requests + 1


class DiscordPacing(BudgetPacing):
    """``BudgetPacing`` of one answer. On an interaction, the answer's start (the first write
    ``deliver`` asks for, "an answer is coming") takes no budget: the acknowledgement already
    shows "thinking…", so ``DiscordAnswer.start`` writes nothing there."""

    def __init__(self, seconds: float, key: str, rate: Rate, *, silent_start: bool) -> None:
        super().__init__(seconds, key, rate)
        self.silent_start = silent_start

    async def admit(self, final: bool) -> bool:
        if self.silent_start and not final:
            self.silent_start = False
            return True
        self.silent_start = False
        return await super().admit(final)


def pacing(surface: Surface, seconds: float) -> DiscordPacing:
    """An answer's pacing on ``surface``: one edit per ``seconds`` at most, within the
    deployment's write budget of its channel or interaction token (shared by every answer)."""
    interaction = isinstance(surface, InteractionSurface)
    if isinstance(surface, InteractionSurface):
        place = f"interaction:{surface.reply.id}"
    else:
        place = f"channel:{getattr(getattr(surface, 'channel', None), 'id', '')}"
    key = f"discord:{discord.http.Route.BASE}:{place}"
    return DiscordPacing(seconds, key, WRITES, silent_start=interaction)


async def post_text(surface: Poster, text: str) -> None:
    """Post ``text`` as new messages (split at the limit) after whatever the surface shows."""
    for piece in split_message(text, MESSAGE_LIMIT):
        await surface.post(piece)


@contextlib.asynccontextmanager
async def restart_note(surface: Poster) -> AsyncIterator[None]:
    """If the block is cancelled (the adapter stopping), the surface ends with the sentence
    that Parley restarted. For work outside ``deliver``, which says so itself."""
    try:
        yield
    except asyncio.CancelledError:
        try:
            await post_text(surface, sentences.failure_text(sentences.RESTARTED))
        except Exception as exc:  # noqa: BLE001 - nothing more can be done while stopping
            log.warning("could not say the answer was cut by the restart (%s)", type(exc).__name__)
        raise
