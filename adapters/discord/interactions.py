"""Slash commands: ``/ask``, ``/chat`` and the core's channel commands, as discord.py app commands.

Every interaction is acknowledged inside Discord's 3-second window (deferred while the answer is
written), claimed once by its id so a gateway redelivery is not answered twice, and always ends
in an answer or a short message, never a failed interaction.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any

import discord
from discord import app_commands

from adapters.discord.render import (
    NO_MENTIONS,
    ChannelSurface,
    GrowingAnswer,
    InteractionSurface,
    render_answer,
)
from adapters.discord.tasks import InFlight
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
from core.commands import COMMANDS, CommandSpec, parse_count
from core.errors import BadCommand
from core.messages import CommandReply, ConversationKey, Inbound
from core.service import GENERIC_ERROR, ConversationService
from core.settings import Settings

log = logging.getLogger("parley.discord")

# A command that answers faster than this replies directly (so an error can be private);
# a slower one is deferred first, well inside Discord's 3-second window.
QUICK_REPLY_SECONDS = 1.5
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

    async def _admit(self, interaction: discord.Interaction) -> bool:
        """Claim the interaction (once only) and check who may use the bot where."""
        if not await self.service.claim_event(PLATFORM, str(interaction.id)):
            log.info("dropping redelivered interaction %s", interaction.id)
            return False
        refusal = self.policy.refusal(
            user_id=interaction.user.id,
            role_ids=role_ids(interaction.user),
            guild_id=interaction.guild_id,
            channel_ids=channel_ids(self._channel(interaction)),
        )
        if refusal is not None:
            log.info("refused interaction %s: %s", interaction.id, refusal)
            await interaction.response.send_message(
                refusal, ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return False
        return True

    async def _defer(self, interaction: discord.Interaction, *, ephemeral: bool = False) -> bool:
        try:
            await interaction.response.defer(ephemeral=ephemeral, thinking=True)
        except discord.NotFound:
            log.warning("interaction %s expired before it was acknowledged", interaction.id)
            return False
        return True

    async def _answer(self, inbound: Inbound, surface: InteractionSurface | ChannelSurface) -> None:
        await render_answer(
            self.service.answer(inbound), surface, interval=self.settings.discord_edit_interval
        )

    # --- /ask and /chat -------------------------------------------------------------------

    async def ask(
        self,
        interaction: discord.Interaction,
        prompt: str,
        image: discord.Attachment | None,
        private: bool,
    ) -> None:
        """A one-off answer in a conversation of its own (it doesn't touch channel history)."""
        if not await self._admit(interaction) or not await self._defer(
            interaction, ephemeral=private
        ):
            return
        files, notes = await read_attachments([image] if image else [], self.settings)
        inbound = Inbound(
            key=conversation_key(self._channel(interaction), one_off=f"ask-{interaction.id}"),
            author=author_of(interaction.user),
            text=prompt,
            attachments=files,
            notes=notes,
        )
        await self._answer(inbound, InteractionSurface(interaction, private=private))

    async def chat(self, interaction: discord.Interaction, prompt: str) -> None:
        """Open a thread named after the prompt and answer there; in a thread or DM, answer in place."""
        if not await self._admit(interaction) or not await self._defer(interaction):
            return
        channel = self._channel(interaction)
        author = author_of(interaction.user)
        if not isinstance(channel, discord.TextChannel):
            inbound = Inbound(conversation_key(channel), author, prompt)
            await self._answer(inbound, InteractionSurface(interaction))
            return
        try:
            thread = await channel.create_thread(
                name=thread_name(prompt),
                type=discord.ChannelType.public_thread,
                reason="Parley /chat",
            )
        except discord.Forbidden:
            await interaction.edit_original_response(content=NO_THREAD_PERMISSION)
            return
        await interaction.edit_original_response(content=f"Let's continue in {thread.mention}.")
        quoted = prompt if len(prompt) <= 1800 else prompt[:1800] + "…"
        try:
            # Mentioning the user adds them to the thread, so they see the answer arrive.
            await thread.send(
                f"{interaction.user.mention} asked:\n>>> {quoted}",
                allowed_mentions=discord.AllowedMentions(users=[interaction.user]),
            )
            await self._answer(
                Inbound(conversation_key(thread), author, prompt), ChannelSurface(thread)
            )
        except discord.Forbidden:
            await interaction.followup.send(NO_THREAD_PERMISSION, ephemeral=True)

    # --- the core's commands --------------------------------------------------------------

    async def run_core_command(
        self, interaction: discord.Interaction, spec: CommandSpec, value: str
    ) -> None:
        """Run a core command; reply directly when quick, else defer and edit in the reply."""
        if not await self._admit(interaction):
            return
        if spec.changes_settings and value.strip():
            allowed = self.policy.may_change_settings(
                permissions=interaction.permissions,
                role_ids=role_ids(interaction.user),
                in_dm=interaction.guild_id is None,
            )
            if not allowed:
                await interaction.response.send_message(
                    self.policy.settings_refusal(spec.name),
                    ephemeral=True,
                    allowed_mentions=NO_MENTIONS,
                )
                return
        channel = self._channel(interaction)
        work = asyncio.create_task(self._command_reply(interaction, channel, spec, value))
        done, _ = await asyncio.wait({work}, timeout=QUICK_REPLY_SECONDS)
        deferred = False
        if not done:
            deferred = await self._defer(interaction, ephemeral=spec.private)
        reply = await work
        if deferred and not reply.ok and not spec.private:
            # The "thinking…" message is public; show the error only to the person who asked.
            await interaction.delete_original_response()
            await GrowingAnswer(_Followups(interaction)).add(reply.text)
            return
        surface = InteractionSurface(interaction, private=reply.private or not reply.ok)
        await GrowingAnswer(surface).show(reply.text or "Done.")

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
