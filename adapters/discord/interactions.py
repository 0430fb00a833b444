"""Slash commands: ``/ask``, ``/chat`` and the core's channel commands, as discord.py app commands.

Every interaction is acknowledged first, before any database or network work, well inside
Discord's 3-second window: refused at once (privately) when the access lists say so, else
deferred ("Parley is thinking…", private for commands whose replies are private). Only then is
it claimed by its id, so a gateway redelivery is not answered twice, and it always ends in an
answer or a short message, never a failed interaction.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Coroutine
from typing import Any

import discord
from discord import app_commands

from adapters.discord.render import (
    EMPTY_ANSWER,
    NO_MENTIONS,
    ChannelSurface,
    GrowingAnswer,
    InteractionSurface,
    render_answer,
    restart_note,
)
from adapters.discord.translate import (
    PLATFORM,
    AccessPolicy,
    author_of,
    channel_ids,
    conversation_key,
    read_attachments,
    role_ids,
    thread_name,
    transcript,
)
from adapters.inflight import InFlight
from core.commands import COMMANDS, CommandSpec, parse_count
from core.errors import BadCommand
from core.messages import CommandReply, ConversationKey, Inbound
from core.service import GENERIC_ERROR, ConversationService
from core.settings import Settings

log = logging.getLogger("parley.discord")

ALREADY_ACKNOWLEDGED = 40060  # Discord's code for a second response to one interaction
RESTARTING = "Parley is restarting; please try again in a minute."
_OPTION_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")
NO_THREAD_PERMISSION = (
    "I can't open a thread here: I need the Create Public Threads and Send Messages in Threads "
    "permissions in this channel. Use `/ask` instead, or ask an admin to grant them."
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
        settings: Settings,
        policy: AccessPolicy,
        inflight: InFlight,
    ) -> None:
        self.client = client
        self.service = service
        self.settings = settings
        self.policy = policy
        self.inflight = inflight

    def install(self, tree: app_commands.CommandTree[Any]) -> None:
        """Add every command to ``tree`` (and to each of DISCORD_GUILD_IDS for instant sync)."""
        tree.add_command(self._ask_command())
        tree.add_command(self._chat_command())
        for spec in COMMANDS:
            tree.add_command(self._core_command(spec))
        tree.on_error = self.on_error  # type: ignore[method-assign]
        for guild_id in self.settings.discord_guild_ids:
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

    def _core_command(self, spec: CommandSpec) -> app_commands.Command[Any, ..., None]:
        description = spec.summary if len(spec.summary) <= 100 else spec.summary[:99] + "…"
        run = self.run_core_command
        track = self.inflight.track
        if spec.argument is None:

            async def bare(interaction: discord.Interaction) -> None:
                with track():
                    await run(interaction, spec, "")

            return app_commands.Command(name=spec.name, description=description, callback=bare)

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
        name = spec.argument if _OPTION_NAME.match(spec.argument) else "value"
        if name != "value":
            callback = app_commands.rename(value=name)(callback)
        callback = app_commands.describe(value=(spec.argument_help or spec.argument)[:100])(
            callback
        )
        return app_commands.Command(name=spec.name, description=description, callback=callback)

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
        """Acknowledge the interaction at once, then claim it; the surface to answer on, or None.

        Checks that need no I/O (stopping, access lists, ``refusal``) answer directly and
        privately. Everything else is deferred first, ephemeral when ``private``, so a slow
        database cannot push the acknowledgement past Discord's 3 seconds. A redelivered
        interaction fails to defer (already acknowledged) or, if it was deferred anyway, has its
        "thinking…" message withdrawn.
        """
        received = time.monotonic()
        if self.inflight.closing:
            await self._refuse(interaction, RESTARTING)
            return None
        reason = self.policy.refusal(
            user_id=interaction.user.id,
            role_ids=role_ids(interaction.user),
            guild_id=interaction.guild_id,
            channel_ids=channel_ids(self._channel(interaction)),
        )
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
        if not await self.service.claim_event(PLATFORM, str(interaction.id)):
            log.info("dropping redelivered interaction %s", interaction.id)
            try:
                await interaction.delete_original_response()
            except discord.HTTPException as exc:
                log.info("could not withdraw the duplicate's reply (HTTP %s)", exc.status)
            return None
        return InteractionSurface(interaction, private=private, started=received)

    async def _refuse(self, interaction: discord.Interaction, text: str) -> None:
        try:
            await interaction.response.send_message(
                text, ephemeral=True, allowed_mentions=NO_MENTIONS
            )
        except discord.HTTPException as exc:
            # Already acknowledged (a redelivery) or expired: nobody is waiting for this one.
            log.info("could not refuse interaction %s (HTTP %s)", interaction.id, exc.status)

    async def _answer(self, inbound: Inbound, surface: InteractionSurface | ChannelSurface) -> None:
        shown = await render_answer(
            self.service.answer(inbound), surface, interval=self.settings.discord_edit_interval
        )
        if not shown and isinstance(surface, InteractionSurface) and not surface.posted:
            await surface.post(EMPTY_ANSWER)  # never leave "thinking…" behind

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
        async with restart_note(surface):
            files, notes = await read_attachments([image] if image else [], self.settings)
            inbound = Inbound(
                key=conversation_key(self._channel(interaction), one_off=f"ask-{interaction.id}"),
                author=author_of(interaction.user),
                text=prompt,
                attachments=files,
                notes=notes,
            )
            await self._answer(inbound, surface)

    async def chat(self, interaction: discord.Interaction, prompt: str) -> None:
        """Open a thread named after the prompt and answer there; in a thread or DM, answer in place."""
        surface = await self._begin(interaction, private=False)
        if surface is None:
            return
        channel = self._channel(interaction)
        author = author_of(interaction.user)
        if not isinstance(channel, discord.TextChannel):
            async with restart_note(surface):
                await self._answer(Inbound(conversation_key(channel), author, prompt), surface)
            return
        async with restart_note(surface):
            try:
                thread = await channel.create_thread(
                    name=thread_name(prompt),
                    type=discord.ChannelType.public_thread,
                    reason="Parley /chat",
                )
            except discord.Forbidden:
                await surface.post(NO_THREAD_PERMISSION)
                return
            await surface.post(f"Let's continue in {thread.mention}.")
        quoted = prompt if len(prompt) <= 1800 else prompt[:1800] + "…"
        in_thread = ChannelSurface(thread)
        try:
            async with restart_note(in_thread):
                # Mentioning the user adds them to the thread, so they see the answer arrive.
                await thread.send(
                    f"{interaction.user.mention} asked:\n>>> {quoted}",
                    allowed_mentions=discord.AllowedMentions(users=[interaction.user]),
                )
                await self._answer(Inbound(conversation_key(thread), author, prompt), in_thread)
        except discord.Forbidden:
            await interaction.followup.send(NO_THREAD_PERMISSION, ephemeral=True)

    # --- the core's commands --------------------------------------------------------------

    async def run_core_command(
        self, interaction: discord.Interaction, spec: CommandSpec, value: str
    ) -> None:
        """Run a core command: acknowledge (deferred, private when its replies are), then edit
        the reply in. An error on a public command is shown only to the person who asked."""

        def refusal() -> str | None:
            if not spec.changes_settings or not value.strip():
                return None
            allowed = self.policy.may_change_settings(
                permissions=interaction.permissions,
                role_ids=role_ids(interaction.user),
                in_dm=interaction.guild_id is None,
            )
            return None if allowed else self.policy.settings_refusal(spec.name)

        surface = await self._begin(interaction, private=spec.private, refusal=refusal)
        if surface is None:
            return
        async with restart_note(surface):
            reply = await self._command_reply(interaction, self._channel(interaction), spec, value)
        text = reply.text if reply.text.strip() else "Done."
        if not reply.ok and not spec.private:
            # The "thinking…" message is public; show the error only to the person who asked.
            await interaction.delete_original_response()
            await GrowingAnswer(_Followups(interaction)).add(text)
            return
        await GrowingAnswer(surface).show(text)

    async def _command_reply(
        self, interaction: discord.Interaction, channel: Any, spec: CommandSpec, value: str
    ) -> CommandReply:
        if spec.name == "help":
            return CommandReply(help_text(), private=True)
        key: ConversationKey = conversation_key(channel)
        author = author_of(interaction.user)
        recent = None
        if spec.name == "summarize" and value:
            try:
                recent = await self._recent_messages(channel, parse_count(value))
            except BadCommand as exc:
                return CommandReply(exc.user_message, private=True, ok=False)
            except discord.Forbidden:
                return CommandReply(NO_HISTORY_PERMISSION, private=True, ok=False)
            if not recent and not self.client.intents.message_content:
                return CommandReply(NO_CONTENT_INTENT, private=True, ok=False)
            value = ""
        return await self.service.command(key, author, spec.name, value, transcript=recent)

    async def _recent_messages(self, channel: Any, count: int) -> str:
        """The last ``count`` messages of the channel as a transcript, oldest first."""
        me = self.client.user
        messages = [m async for m in channel.history(limit=count)]
        messages.reverse()
        return transcript(messages, me.id if me else None)

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        """Log the failure (never the content) and tell the user in a short private message."""
        name = interaction.command.name if interaction.command else "?"
        log.error("/%s failed (interaction %s)", name, interaction.id, exc_info=error)
        try:
            if interaction.response.is_done():
                with contextlib.suppress(discord.HTTPException):
                    original = await interaction.original_response()
                    if not original.content:  # still "thinking…", maybe for everyone to see
                        await interaction.delete_original_response()
                await interaction.followup.send(GENERIC_ERROR, ephemeral=True)
            else:
                await interaction.response.send_message(GENERIC_ERROR, ephemeral=True)
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

    async def edit(self, index: int, text: str) -> None:
        raise NotImplementedError("private follow-ups are never edited")
