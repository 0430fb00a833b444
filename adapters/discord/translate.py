"""Translate in: Discord places, people, files and reply chains into the core's terms."""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import discord

from core.errors import ConfigError
from core.messages import Attachment, Author, ConversationKey
from core.settings import Settings

log = logging.getLogger("parley.discord")

PLATFORM = "discord"
REPLY_CHAIN_DEPTH = 5
REPLY_CHAIN_CHARS = 1500
THREAD_NAME_CHARS = 100
TEXT_MIME_TYPES = {
    "application/json",
    "application/xml",
    "application/x-yaml",
    "application/yaml",
    "application/toml",
    "application/javascript",
    "application/x-sh",
    "application/sql",
}
TEXT_SUFFIXES = {
    ".txt", ".md", ".rst", ".py", ".js", ".ts", ".tsx", ".jsx", ".json", ".yaml", ".yml",
    ".toml", ".ini", ".cfg", ".conf", ".csv", ".tsv", ".log", ".sql", ".sh", ".go", ".rs",
    ".java", ".kt", ".c", ".h", ".cpp", ".hpp", ".cs", ".rb", ".php", ".html", ".css", ".xml",
    ".swift", ".diff", ".patch", ".env.example",
}  # fmt: skip


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
    """Who may use the bot where (DISCORD_ALLOWED_* / DISCORD_BLOCKED_*), and who may change
    a channel's settings (DISCORD_SETTINGS_PERMISSION or an allowed role)."""

    allowed_guilds: frozenset[int]
    blocked_guilds: frozenset[int]
    allowed_channels: frozenset[int]
    blocked_channels: frozenset[int]
    allowed_roles: frozenset[int]
    blocked_users: frozenset[int]
    settings_permission: str

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        permission = settings.discord_settings_permission.strip().lower()
        if permission not in discord.Permissions.VALID_FLAGS:
            raise ConfigError(
                f"DISCORD_SETTINGS_PERMISSION: '{permission}' is not a Discord permission; "
                "use one like manage_messages, manage_channels or manage_guild."
            )
        return cls(
            allowed_guilds=frozenset(settings.discord_allowed_guilds),
            blocked_guilds=frozenset(settings.discord_blocked_guilds),
            allowed_channels=frozenset(settings.discord_allowed_channels),
            blocked_channels=frozenset(settings.discord_blocked_channels),
            allowed_roles=frozenset(settings.discord_allowed_roles),
            blocked_users=frozenset(settings.discord_blocked_users),
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

    def may_change_settings(
        self, *, permissions: discord.Permissions | None, role_ids: Iterable[int], in_dm: bool
    ) -> bool:
        if in_dm:
            return True
        if permissions is not None and (
            permissions.administrator or getattr(permissions, self.settings_permission, False)
        ):
            return True
        return bool(self.allowed_roles and set(role_ids) & self.allowed_roles)

    def settings_refusal(self, command: str) -> str:
        label = self.settings_permission.replace("_", " ").title()
        who = f"the {label} permission"
        if self.allowed_roles:
            who += " or one of the allowed roles"
        return f"Only members with {who} can change `/{command}` here."


def role_ids(user: Any) -> list[int]:
    """Role ids of a guild member (none for a plain user, e.g. in DMs)."""
    return [role.id for role in getattr(user, "roles", [])]


def channel_ids(channel: Any) -> list[int]:
    ids = [channel.id]
    parent_id = getattr(channel, "parent_id", None)
    if parent_id:
        ids.append(parent_id)
    return ids


def _mime_type(attachment: discord.Attachment) -> str:
    mime = attachment.content_type or mimetypes.guess_type(attachment.filename)[0] or ""
    return mime.split(";")[0].strip().lower() or "application/octet-stream"


def _is_text(mime: str, filename: str) -> bool:
    if mime.startswith("text/") or mime in TEXT_MIME_TYPES:
        return True
    name = filename.lower()
    return PurePosixPath(name).suffix in TEXT_SUFFIXES or name.endswith(".env.example")


async def read_attachments(
    attachments: Iterable[discord.Attachment], settings: Settings
) -> tuple[tuple[Attachment, ...], tuple[str, ...]]:
    """Download what the core can use: images and text files within their size limits (checked
    against the size Discord states, before downloading); anything else is passed on unread so
    the core can say so. Also returns notes for the user about files that were skipped."""
    files: list[Attachment] = []
    notes: list[str] = []
    max_image = settings.parley_max_image_bytes
    max_text = settings.parley_max_text_file_bytes
    for item in attachments:
        mime = _mime_type(item)
        if mime.startswith("image/"):
            if item.size > max_image:
                notes.append(
                    f"{item.filename} was not read: images are limited to {_size(max_image)}."
                )
                continue
            data = await _download(item, notes)
            if data is not None:
                files.append(Attachment(item.filename, mime, data, "image"))
        elif _is_text(mime, item.filename):
            # Discord states the size up front: don't download a file that can't be used.
            if item.size > max_text:
                notes.append(
                    f"{item.filename} was not read: text files are limited to {_size(max_text)}."
                )
                continue
            data = await _download(item, notes)
            if data is None:
                continue
            if len(data) > max_text:  # the stated size was wrong
                data = data[:max_text]
                notes.append(f"Only the first {_size(max_text)} of {item.filename} were read.")
            files.append(Attachment(item.filename, mime, data, "text"))
        else:
            files.append(Attachment(item.filename, mime, b"", "other"))
    return tuple(files), tuple(notes)


async def _download(item: discord.Attachment, notes: list[str]) -> bytes | None:
    try:
        return await item.read()
    except (discord.HTTPException, discord.ClientException, OSError) as exc:
        log.warning("could not download attachment %s: %s", item.id, type(exc).__name__)
        notes.append(f"{item.filename} could not be downloaded from Discord.")
        return None


def _size(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:g} MB"
    if n >= 1_000:
        return f"{n / 1_000:g} KB"
    return f"{n} bytes"


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
