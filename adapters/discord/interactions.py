"""Slash commands: ``/ask``, ``/chat`` and the core's channel commands, as discord.py app commands.

Every interaction is acknowledged first, before any database or network work, well inside
Discord's 3-second window: refused at once (privately) when the access lists say so, else
deferred ("Parley is thinking…", private for commands whose replies are private). Only then
does the core claim it by its id (``event_id``), so a redelivery is not answered twice (its
"thinking…" is withdrawn), and it always ends in an answer or a short message, never a failed
interaction. Answers go through ``core.delivery.deliver``, like on every platform.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import discord
from discord import app_commands

from adapters.discord.files import read_attachments
from adapters.discord.inbound import RESTARTING, Answers
from adapters.discord.render import (
    NO_MENTIONS,
    ChannelSurface,
    DiscordAnswer,
    InteractionSurface,
    pacing,
    post_text,
    restart_note,
)
from adapters.discord.settings import DiscordSettings
from adapters.discord.translate import (
    AccessPolicy,
    answered_in,
    asked_by,
    author_of,
    channel_ids,
    conversation_key,
    role_ids,
    thread_name,
    transcript,
)
from core import permissions, sentences
from core.attachments import AttachmentPolicy
from core.commands import ALIASES, BY_NAME, COMMANDS, CommandSpec, summary_count
from core.delivery import Delivered, deliver
from core.errors import BadCommand
from core.messages import AudioFile, CommandReply, Inbound
from core.service import ConversationService

log = logging.getLogger("parley.discord")
# Errors of an interaction whose options do not fit the command (Discord sent something else).
MALFORMED = (app_commands.CommandSignatureMismatch, app_commands.TransformerError)

ALREADY_ACKNOWLEDGED = 40060  # Discord's code for a second response to one interaction
GENERIC_FAILURE = sentences.failure_text(sentences.GENERIC_ERROR)
_OPTION_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")
NO_THREAD_PERMISSION = (
    "I can't open a thread here: I need the Create Public Threads and Send Messages in Threads "
    "permissions in this channel. Use `/ask` instead, or ask an admin to grant them."
)
NO_ATTACH_PERMISSION = (
    "I couldn't attach the audio file here: I need the Attach Files permission in this channel."
)
NO_HISTORY_PERMISSION = (
    "I can't read this channel's history: I need the Read Message History permission here."
)
NO_CONTENT_INTENT = (
    "I can't read other people's messages: the bot's Message Content intent is off. An admin "
    "can enable it in the Developer Portal (Bot → Privileged Gateway Intents → Message Content)."
)


def help_text() -> str:
    """The commands as Discord users type them."""
    lines = [
        "**Parley commands**",
        "• `/ask prompt [image] [private]`: a one-off answer (`private` shows it only to you).",
        "• `/chat prompt`: open a thread; keep talking there without commands.",
    ]
    for spec in COMMANDS:
        arg = f" [{spec.argument}]" if spec.argument else ""
        lines.append(f"• `/{spec.name}{arg}`: {spec.summary}")
    lines.append("Mention me or reply to one of my messages to talk in a channel.")
    return "\n".join(lines)


class SlashCommands:
    """The app commands of one discord.py client, and what each of them does."""

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

    def install(self, tree: app_commands.CommandTree[Any]) -> None:
        """Add every command to ``tree`` (and to each of DISCORD_GUILD_IDS for instant sync)."""
        tree.add_command(self._ask_command())
        tree.add_command(self._chat_command())
        for spec in COMMANDS:
            tree.add_command(self._core_command(spec))
        # Aliases are commands of their own on Discord, so /clear works as it does elsewhere.
        for alias, name in ALIASES.items():
            tree.add_command(self._core_command(BY_NAME[name], name=alias))
        tree.on_error = self.on_error  # type: ignore[method-assign]
        for guild_id in self.settings.guild_ids:
            tree.copy_global_to(guild=discord.Object(guild_id))

    # --- command definitions --------------------------------------------------------------

    def _ask_command(self) -> app_commands.Command[Any, ..., None]:
        @app_commands.describe(
            prompt="What to ask",
            image="An image for the model to look at",
            private="Show the answer only to you",
        )
        async def ask(
            interaction: discord.Interaction,
            prompt: str,
            image: discord.Attachment | None = None,
            private: bool = False,
        ) -> None:
            with self.inflight.track():
                await self.ask(interaction, prompt, image, private)

        return app_commands.Command(
            name="ask", description="Ask Parley a one-off question.", callback=ask
        )

    def _chat_command(self) -> app_commands.Command[Any, ..., None]:
        @app_commands.describe(prompt="How to start the conversation")
        async def chat(interaction: discord.Interaction, prompt: str) -> None:
            with self.inflight.track():
                await self.chat(interaction, prompt)

        return app_commands.Command(
            name="chat",
            description="Open a thread and chat with Parley there, no commands needed.",
            callback=chat,
        )

    def _core_command(
        self, spec: CommandSpec, *, name: str = ""
    ) -> app_commands.Command[Any, ..., None]:
        """The slash command for ``spec`` (under ``name`` when it is an alias)."""
        command_name = name or spec.name
        summary = f"Same as /{spec.name}: {spec.summary}" if name else spec.summary
        description = summary if len(summary) <= 100 else summary[:99] + "…"
        run = self.run_core_command
        track = self.inflight.track
        if spec.argument is None:

            async def bare(interaction: discord.Interaction) -> None:
                with track():
                    await run(interaction, spec, "")

            return app_commands.Command(name=command_name, description=description, callback=bare)

        if spec.name == "summarize":

            async def counted(
                interaction: discord.Interaction,
                value: app_commands.Range[int, 1, 500] | None = None,
            ) -> None:
                with track():
                    await run(interaction, spec, "" if value is None else str(value))

            callback: Callable[..., Coroutine[Any, Any, None]] = counted
        else:

            async def texted(interaction: discord.Interaction, value: str | None = None) -> None:
                with track():
                    await run(interaction, spec, value or "")

            callback = texted
            if "|" in spec.argument:
                choices = [app_commands.Choice(name=c, value=c) for c in spec.argument.split("|")]
                callback = app_commands.choices(value=choices)(callback)
        option = spec.argument if _OPTION_NAME.match(spec.argument) else "value"
        if option != "value":
            callback = app_commands.rename(value=option)(callback)
        callback = app_commands.describe(value=(spec.argument_help or spec.argument)[:100])(
            callback
        )
        return app_commands.Command(name=command_name, description=description, callback=callback)

    # --- shared steps ---------------------------------------------------------------------

    def _channel(self, interaction: discord.Interaction) -> Any:
        if interaction.channel is not None:
            return interaction.channel
        return self.client.get_partial_messageable(
            interaction.channel_id or 0, guild_id=interaction.guild_id
        )

    async def _begin(
        self,
        interaction: discord.Interaction,
        *,
        private: bool,
        refusal: Callable[[], str | None] | None = None,
    ) -> InteractionSurface | None:
        """Acknowledge the interaction at once; the surface to answer on, or None.

        Checks that need no I/O (stopping, access lists, ``refusal``) answer directly and
        privately. Everything else is deferred first, ephemeral when ``private``, so a slow
        database cannot push the acknowledgement past Discord's 3 seconds; the core claims the
        interaction afterwards. A redelivered interaction usually fails to defer (already
        acknowledged) and is dropped here.
        """
        received = time.monotonic()
        reason = RESTARTING if self.inflight.closing else self._refusal(interaction)
        if reason is None and refusal is not None:
            reason = refusal()
        if reason is not None:
            log.info("refused interaction %s: %s", interaction.id, reason)
            await self._refuse(interaction, reason)
            return None
        try:
            await interaction.response.defer(ephemeral=private, thinking=True)
        except discord.HTTPException as exc:
            if exc.code == ALREADY_ACKNOWLEDGED:
                log.info("dropping redelivered interaction %s", interaction.id)
            else:
                log.warning(
                    "interaction %s could not be acknowledged: HTTP %s (code %s)",
                    interaction.id,
                    exc.status,
                    exc.code,
                )
            return None
        return InteractionSurface(interaction, private=private, started=received)

    def _refusal(self, interaction: discord.Interaction) -> str | None:
        return self.policy.refusal(
            user_id=interaction.user.id,
            role_ids=role_ids(interaction.user),
            guild_id=interaction.guild_id,
            channel_ids=channel_ids(self._channel(interaction)),
        )

    async def _refuse(self, interaction: discord.Interaction, text: str) -> None:
        try:
            await interaction.response.send_message(
                text, ephemeral=True, allowed_mentions=NO_MENTIONS
            )
        except discord.HTTPException as exc:
            # Already acknowledged (a redelivery) or expired: nobody is waiting for this one.
            log.info("could not refuse interaction %s (HTTP %s)", interaction.id, exc.status)

    async def _deliver(
        self, inbound: Inbound, surface: InteractionSurface | ChannelSurface
    ) -> Delivered:
        """The core's answer on ``surface``; a redelivery (no events) withdraws "thinking…"."""
        pace = pacing(surface, self.settings.edit_interval)
        async with self.inflight.slots:
            done = await deliver(
                self.service.answer(inbound),
                DiscordAnswer(surface, pacing=pace),
                pace,
                journal=self.service.journal(inbound),
            )
        if done.outcome == "nothing" and isinstance(surface, InteractionSurface):
            log.info("dropping redelivered interaction %s", inbound.event_id)
            await surface.withdraw()
        return done

    # --- /ask and /chat -------------------------------------------------------------------

    async def ask(
        self,
        interaction: discord.Interaction,
        prompt: str,
        image: discord.Attachment | None,
        private: bool,
    ) -> None:
        """A one-off answer in a conversation of its own (it doesn't touch channel history)."""
        surface = await self._begin(interaction, private=private)
        if surface is None:
            return
        async with restart_note(surface):  # deliver says so itself once it runs
            files, notes = await read_attachments([image] if image else [], self.attachments)
        inbound = Inbound(
            key=conversation_key(self._channel(interaction), one_off=f"ask-{interaction.id}"),
            author=author_of(interaction.user),
            text=prompt,
            attachments=files,
            event_id=str(interaction.id),
            notes=notes,
            reply_to=asked_by(interaction, private=private),
        )
        await self._deliver(inbound, surface)

    async def chat(self, interaction: discord.Interaction, prompt: str) -> None:
        """Open a thread named after the prompt and answer there; in a thread or DM, answer in place."""
        surface = await self._begin(interaction, private=False)
        if surface is None:
            return
        channel = self._channel(interaction)
        author = author_of(interaction.user)
        event_id = str(interaction.id)
        if not isinstance(channel, discord.TextChannel):
            where = asked_by(interaction, private=False)
            inbound = Inbound(conversation_key(channel), author, prompt, (), event_id)
            await self._deliver(replace(inbound, reply_to=where), surface)
            return
        async with restart_note(surface):
            thread = await self._open_thread(interaction, channel, prompt, surface)
        if thread is None:
            return
        inbound = Inbound(
            conversation_key(thread), author, prompt, (), event_id, reply_to=answered_in(thread)
        )
        try:
            await self._deliver(inbound, ChannelSurface(thread))
        except discord.Forbidden:
            await interaction.followup.send(NO_THREAD_PERMISSION, ephemeral=True)

    async def _open_thread(
        self,
        interaction: discord.Interaction,
        channel: discord.TextChannel,
        prompt: str,
        surface: InteractionSurface,
    ) -> discord.Thread | None:
        """A public thread for ``/chat``, with the user's prompt quoted in it (None: refused)."""
        try:
            thread = await channel.create_thread(
                name=thread_name(prompt),
                type=discord.ChannelType.public_thread,
                reason="Parley /chat",
            )
        except discord.Forbidden:
            await surface.post(NO_THREAD_PERMISSION)
            return None
        await surface.post(f"Let's continue in {thread.mention}.")
        quoted = prompt if len(prompt) <= 1800 else prompt[:1800] + "…"
        try:
            # Mentioning the user adds them to the thread, so they see the answer arrive.
            await thread.send(
                f"{interaction.user.mention} asked:\n>>> {quoted}",
                allowed_mentions=discord.AllowedMentions(users=[interaction.user]),
            )
        except discord.Forbidden:
            await interaction.followup.send(NO_THREAD_PERMISSION, ephemeral=True)
            return None
        return thread

    # --- the core's commands --------------------------------------------------------------

    async def run_core_command(
        self, interaction: discord.Interaction, spec: CommandSpec, value: str
    ) -> None:
        """Run a core command: acknowledge (deferred, private when its replies are), then edit
        the reply in. An error on a public command is shown only to the person who asked."""

        viewer = self.policy.privileges(
            permissions=interaction.permissions,
            role_ids=role_ids(interaction.user),
            in_dm=interaction.guild_id is None,
        )

        def refusal() -> str | None:
            # Decided before deferring (no I/O): the refusal is private, the reply may not be.
            if permissions.may_change(spec, value, viewer):
                return None
            return permissions.refusal(spec, viewer)

        surface = await self._begin(interaction, private=spec.private, refusal=refusal)
        if surface is None:
            return
        async with restart_note(surface):
            reply = await self._command_reply(interaction, spec, value, viewer)
        if reply.redelivered:
            await surface.withdraw()
            return
        text = reply.text if reply.text.strip() else "Done."
        if not reply.ok and not spec.private:
            # The "thinking…" message is public; show the error only to the person who asked.
            await interaction.delete_original_response()
            await post_text(_Followups(interaction), text)
            return
        await post_text(surface, text)
        if reply.audio is not None:
            await self._attach(interaction, reply.audio)

    async def _attach(self, interaction: discord.Interaction, audio: AudioFile) -> None:
        """A follow-up carrying ``audio`` as an attachment (``/speak``)."""
        try:
            await interaction.followup.send(
                file=discord.File(io.BytesIO(audio.data), filename=audio.name),
                allowed_mentions=NO_MENTIONS,
            )
        except discord.HTTPException as exc:
            log.warning(
                "interaction %s: attaching the audio failed: HTTP %s (code %s)",
                interaction.id,
                exc.status,
                exc.code,
            )
            with contextlib.suppress(discord.HTTPException):
                await interaction.followup.send(NO_ATTACH_PERMISSION, ephemeral=True)

    async def _command_reply(
        self,
        interaction: discord.Interaction,
        spec: CommandSpec,
        value: str,
        viewer: permissions.Privileges,
    ) -> CommandReply:
        if spec.name == "help":
            return CommandReply(help_text(), private=True)
        channel = self._channel(interaction)
        recent = None
        if spec.name == "summarize":
            try:
                recent = await self._recent_messages(channel, value)
            except BadCommand as exc:
                return CommandReply(exc.user_message, private=True, ok=False)
        return await self.service.command(
            conversation_key(channel),
            author_of(interaction.user),
            spec.name,
            value,
            transcript=recent,
            event_id=str(interaction.id),
            viewer=viewer,
        )

    async def _recent_messages(self, channel: Any, value: str) -> str | None:
        """The last N messages where ``/summarize`` was asked, as a transcript, oldest first.

        None when N is not valid: the core then says what is wrong with it.
        """
        try:
            count = summary_count(value)
        except BadCommand:
            return None
        me = self.client.user
        try:
            messages = [m async for m in channel.history(limit=count)]
        except discord.Forbidden:
            raise BadCommand(NO_HISTORY_PERMISSION) from None
        messages.reverse()
        text = transcript(messages, me.id if me else None)
        if not text and not self.client.intents.message_content:
            raise BadCommand(NO_CONTENT_INTENT)
        return text

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        """Log the failure (never the content) and tell the user in a short private message."""
        name = interaction.command.name if interaction.command else "?"
        if isinstance(error, MALFORMED):
            # the interaction's options are not what the command takes: nothing of Parley's
            # failed, so one line without a traceback
            log.warning("/%s: skipped a malformed interaction (%s)", name, type(error).__name__)
        else:
            log.error("/%s failed (interaction %s)", name, interaction.id, exc_info=error)
        try:
            if interaction.response.is_done():
                with contextlib.suppress(discord.HTTPException):
                    original = await interaction.original_response()
                    if not original.content:  # still "thinking…", maybe for everyone to see
                        await interaction.delete_original_response()
                await interaction.followup.send(GENERIC_FAILURE, ephemeral=True)
            else:
                await interaction.response.send_message(GENERIC_FAILURE, ephemeral=True)
        except discord.HTTPException:
            log.warning(
                "could not tell the user about the failure of interaction %s", interaction.id
            )


class _Followups:
    """Private follow-up messages only (after the public original response was withdrawn)."""

    def __init__(self, interaction: discord.Interaction) -> None:
        self.interaction = interaction

    async def post(self, text: str) -> None:
        await self.interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
