"""Translate in: Discord places, people, messages and files into the core's terms.

Pure functions only (no network): a message becomes an ``Inbound`` or a reason to ignore it;
channels become conversation keys; attachments become ``FileOffer``s for ``core.attachments``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import discord

from adapters.discord.settings import DiscordSettings
from core.attachments import FileOffer
from core.errors import ConfigError
from core.messages import Attachment, Author, ConversationKey, Inbound
from core.permissions import Privileges

PLATFORM = "discord"
REPLY_CHAIN_DEPTH = 5
REPLY_CHAIN_CHARS = 1500
THREAD_NAME_CHARS = 100
ANSWERED_TYPES = (discord.MessageType.default, discord.MessageType.reply)


def conversation_key(channel: Any, *, one_off: str = "") -> ConversationKey:
    """The conversation for a Discord channel or thread (a thread keeps its parent's settings).

    ``one_off`` gives a conversation of its own inside the channel (used by ``/ask``).
    """
    guild = getattr(channel, "guild", None)
    workspace = str(guild.id) if guild is not None else "dm"
    parent_id = getattr(channel, "parent_id", None)
    if isinstance(channel, discord.Thread) and parent_id:
        return ConversationKey(PLATFORM, workspace, str(parent_id), one_off or str(channel.id))
    return ConversationKey(PLATFORM, workspace, str(channel.id), one_off)


def author_of(user: discord.abc.User) -> Author:
    return Author(id=str(user.id), name=user.display_name)


def thread_name(prompt: str) -> str:
    """A thread title from the prompt's first line, within Discord's 100 characters."""
    first = " ".join(prompt.strip().splitlines()[0].split()) if prompt.strip() else ""
    if not first:
        return "Parley chat"
    if len(first) <= THREAD_NAME_CHARS:
        return first
    return first[: THREAD_NAME_CHARS - 1].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who may use the bot where (DISCORD_ALLOWED_* / DISCORD_BLOCKED_*), and what counts
    towards changing a channel's settings (DISCORD_SETTINGS_PERMISSION or an allowed role;
    ``core.permissions`` decides)."""

    allowed_guilds: frozenset[int]
    blocked_guilds: frozenset[int]
    allowed_channels: frozenset[int]
    blocked_channels: frozenset[int]
    allowed_roles: frozenset[int]
    blocked_users: frozenset[int]
    settings_permission: str

    @classmethod
    def from_settings(cls, settings: DiscordSettings) -> AccessPolicy:
        permission = settings.settings_permission.strip().lower()
        if permission not in discord.Permissions.VALID_FLAGS:
            raise ConfigError(
                f"DISCORD_SETTINGS_PERMISSION: '{permission}' is not a Discord permission; "
                "use one like manage_messages, manage_channels or manage_guild."
            )
        return cls(
            allowed_guilds=frozenset(settings.allowed_guilds),
            blocked_guilds=frozenset(settings.blocked_guilds),
            allowed_channels=frozenset(settings.allowed_channels),
            blocked_channels=frozenset(settings.blocked_channels),
            allowed_roles=frozenset(settings.allowed_roles),
            blocked_users=frozenset(settings.blocked_users),
            settings_permission=permission,
        )

    def refusal(
        self,
        *,
        user_id: int,
        role_ids: Iterable[int],
        guild_id: int | None,
        channel_ids: Sequence[int],
    ) -> str | None:
        """None when the user may talk to the bot here, else the sentence that says why not.

        ``channel_ids`` is the channel, and for a thread also its parent. In direct messages
        the guild and role lists cannot be checked, so DMs are refused when either is set.
        """
        if user_id in self.blocked_users:
            return "Sorry, you are not allowed to use Parley."
        if guild_id is None:
            if self.allowed_guilds or self.allowed_roles:
                return "Parley doesn't answer direct messages here; talk to it in a server."
        elif guild_id in self.blocked_guilds or (
            self.allowed_guilds and guild_id not in self.allowed_guilds
        ):
            return "Parley is not enabled in this server."
        channels = set(channel_ids)
        if channels & self.blocked_channels or (
            self.allowed_channels and not channels & self.allowed_channels
        ):
            return "Parley is not enabled in this channel." + self._channel_hint()
        if guild_id is not None and self.allowed_roles and not set(role_ids) & self.allowed_roles:
            roles = ", ".join(f"<@&{r}>" for r in sorted(self.allowed_roles)[:5])
            return f"Parley is only available to members with one of these roles: {roles}."
        return None

    def _channel_hint(self) -> str:
        if not self.allowed_channels:
            return ""
        return " Try " + ", ".join(f"<#{c}>" for c in sorted(self.allowed_channels)[:3]) + "."

    def privileges(
        self, *, permissions: discord.Permissions | None, role_ids: Iterable[int], in_dm: bool
    ) -> Privileges:
        """What Discord says about a member, for the core's permission rule: the settings
        permission (or administrator), an allowed role, or a DM with the bot."""
        admin = permissions is not None and bool(
            permissions.administrator or getattr(permissions, self.settings_permission, False)
        )
        listed = bool(self.allowed_roles and set(role_ids) & self.allowed_roles)
        return Privileges(admin=admin, listed=listed, direct=in_dm, who=self.who)

    @property
    def who(self) -> str:
        """Who may change a channel's settings, in Discord's words (for the refusal)."""
        label = self.settings_permission.replace("_", " ").title()
        who = f"members with the {label} permission"
        if self.allowed_roles:
            who += " or one of the allowed roles"
        return who


def role_ids(user: Any) -> list[int]:
    """Role ids of a guild member (none for a plain user, e.g. in DMs)."""
    return [role.id for role in getattr(user, "roles", [])]


def channel_ids(channel: Any) -> list[int]:
    ids = [channel.id]
    parent_id = getattr(channel, "parent_id", None)
    if parent_id:
        ids.append(parent_id)
    return ids


def bot_role_id(message: discord.Message) -> int | None:
    """The id of the bot's own managed role in the message's server, if it has one."""
    guild = message.guild
    role = guild.self_role if guild is not None else None
    return role.id if role is not None else None


def plain_text(message: discord.Message, bot_id: int | None) -> str:
    """The message's text with the bot's mention removed and other mentions made readable."""
    text = message.content
    if bot_id is not None:
        text = text.replace(f"<@{bot_id}>", "").replace(f"<@!{bot_id}>", "")
    own_role = bot_role_id(message)
    if own_role is not None:
        text = text.replace(f"<@&{own_role}>", "")
    for user in message.mentions:
        if user.id != bot_id:
            text = text.replace(f"<@{user.id}>", f"@{user.display_name}")
            text = text.replace(f"<@!{user.id}>", f"@{user.display_name}")
    return text.strip()


def with_reply_context(text: str, chain: Sequence[discord.Message], bot_id: int | None) -> str:
    """Prefix ``text`` with the reply chain it answers, so the model sees what "this" is."""
    if not chain:
        return text
    lines = ["[Earlier messages this one replies to, oldest first]"]
    for earlier in chain:
        who = "you (Parley)" if earlier.author.id == bot_id else earlier.author.display_name
        body = plain_text(earlier, bot_id) or "(no text)"
        if len(body) > REPLY_CHAIN_CHARS:
            body = body[:REPLY_CHAIN_CHARS] + "…"
        lines.append(f"{who}: {body}")
    lines.append("[End of earlier messages]")
    return "\n".join(lines) + "\n\n" + text


def transcript(messages: Sequence[discord.Message], bot_id: int | None) -> str:
    """Channel messages (oldest first) as "name: text" lines, for /summarize."""
    lines = []
    for message in messages:
        body = plain_text(message, bot_id)
        if message.attachments:
            names = ", ".join(a.filename for a in message.attachments)
            body = f"{body} [attached: {names}]".strip()
        if body:
            lines.append(f"{message.author.display_name}: {body}")
    return "\n".join(lines)


def own_thread(channel: Any, bot_id: int) -> bool:
    """A thread the bot opened (by ``/chat``): every message in it is for the bot."""
    return isinstance(channel, discord.Thread) and channel.owner_id == bot_id


def addressed(message: discord.Message, channel: Any, bot_id: int) -> bool:
    """DMs, mentions (of the bot or its role), replies to the bot, and its /chat threads."""
    if message.guild is None or own_thread(channel, bot_id):
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


def ignore_reason(
    message: discord.Message, channel: Any, bot_id: int, *, content_intent: bool
) -> str | None:
    """Why ``message`` gets no answer (None: answer it). Access lists are checked apart."""
    if message.author.bot:
        return "written by a bot"
    if message.type not in ANSWERED_TYPES:
        return f"a {message.type.name} message"
    if not addressed(message, channel, bot_id):
        return "not addressed to Parley"
    if not plain_text(message, bot_id) and not message.attachments and not content_intent:
        return "no readable content (Message Content intent is off)"
    return None


def replies_in_place(message: discord.Message, channel: Any, bot_id: int) -> bool:
    """In a DM or a /chat thread the answer is a plain message, elsewhere a reply."""
    return message.guild is None or own_thread(channel, bot_id)


def sent_time(snowflake: int) -> datetime | None:
    """When Discord made the id ``snowflake`` (a message's: when it was sent); None for an id
    that names no real time."""
    try:
        return discord.utils.snowflake_time(snowflake)
    except (OverflowError, ValueError, OSError):
        return None


def message_inbound(
    message: discord.Message,
    channel: Any,
    bot_id: int,
    chain: Sequence[discord.Message],
    files: tuple[Attachment, ...] = (),
    notes: tuple[str, ...] = (),
) -> Inbound:
    """The core's message for ``message``, with the reply chain it answers as context."""
    return Inbound(
        key=conversation_key(channel),
        author=author_of(message.author),
        text=with_reply_context(plain_text(message, bot_id), chain, bot_id),
        attachments=files,
        event_id=str(message.id),
        notes=notes,
        sent_at=sent_time(message.id),
    )


def file_offer(attachment: discord.Attachment) -> FileOffer:
    """A Discord attachment as ``core.attachments`` sees it, before it is downloaded."""
    return FileOffer(attachment.filename, attachment.content_type or "", attachment.size)


def answered_in(channel: Any, reply_to: int | None = None) -> tuple[tuple[str, str], ...]:
    """Where an answer goes (``Inbound.reply_to``): the channel or thread, and the message it
    replies to, if any."""
    place = [("channel", str(getattr(channel, "id", "")))]
    return tuple(place + ([("reply", str(reply_to))] if reply_to is not None else []))


def asked_by(interaction: discord.Interaction, *, private: bool) -> tuple[tuple[str, str], ...]:
    """Where an interaction's answer goes: its reply (the interaction), its channel, who asked
    (a private answer continues in their DMs once the token is gone). Never the token."""
    return (
        ("interaction", str(interaction.id)),
        ("channel", str(interaction.channel_id or "")),
        ("user", str(interaction.user.id)),
        ("private", "1" if private else ""),
    )
