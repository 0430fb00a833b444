"""Translating Discord places and people into the core's terms: keys, access, thread names."""

from __future__ import annotations

from types import SimpleNamespace

import discord
import pytest

from adapters.discord.files import read_attachments
from adapters.discord.interactions import help_text
from adapters.discord.settings import DiscordSettings
from adapters.discord.translate import AccessPolicy, conversation_key, thread_name
from core import permissions, sentences
from core.attachments import AttachmentPolicy
from core.commands import BY_NAME, COMMANDS
from core.errors import ConfigError

GUILD, CHANNEL, THREAD, ROLE, USER = 10, 20, 30, 40, 50


def policy(**values: object) -> AccessPolicy:
    return AccessPolicy.from_settings(DiscordSettings(_env_file=None, **values))  # type: ignore[arg-type,call-arg]


def refusal(
    p: AccessPolicy, *, guild: int | None = GUILD, roles: tuple[int, ...] = ()
) -> str | None:
    return p.refusal(user_id=USER, role_ids=roles, guild_id=guild, channel_ids=[THREAD, CHANNEL])


def test_everyone_may_use_the_bot_by_default() -> None:
    assert refusal(policy()) is None
    assert refusal(policy(), guild=None) is None


def test_blocked_user_guild_and_channel_are_refused() -> None:
    assert "not allowed" in (refusal(policy(blocked_users=[USER])) or "")
    assert "server" in (refusal(policy(blocked_guilds=[GUILD])) or "")
    assert "channel" in (refusal(policy(blocked_channels=[CHANNEL])) or "")


def test_a_thread_is_allowed_through_its_parent_channel() -> None:
    assert refusal(policy(allowed_channels=[CHANNEL])) is None
    assert "<#99>" in (refusal(policy(allowed_channels=[99])) or "")


def test_allowed_roles_gate_use_and_direct_messages() -> None:
    p = policy(allowed_roles=[ROLE])
    assert refusal(p, roles=(ROLE,)) is None
    assert f"<@&{ROLE}>" in (refusal(p) or "")
    assert "direct messages" in (refusal(p, guild=None) or "")


def test_settings_need_the_permission_or_an_allowed_role() -> None:
    p = policy(allowed_roles=[ROLE])
    model = BY_NAME["model"]
    plain = discord.Permissions(send_messages=True)
    mods = discord.Permissions(manage_messages=True)
    admins = discord.Permissions(administrator=True)

    def may(perms: discord.Permissions | None, roles: list[int], in_dm: bool) -> bool:
        viewer = p.privileges(permissions=perms, role_ids=roles, in_dm=in_dm)
        return permissions.may_change(model, "gpt-4", viewer)

    assert not may(plain, [], False)
    assert may(plain, [ROLE], False)
    assert may(mods, [], False) and may(admins, [], False)
    assert may(None, [], True)
    viewer = p.privileges(permissions=plain, role_ids=[], in_dm=False)
    assert "Manage Messages" in permissions.refusal(model, viewer) and "allowed roles" in viewer.who


def test_unknown_settings_permission_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="DISCORD_SETTINGS_PERMISSION"):
        policy(settings_permission="be_nice")


def test_channel_and_dm_keys() -> None:
    channel = SimpleNamespace(id=CHANNEL, guild=SimpleNamespace(id=GUILD))
    key = conversation_key(channel)
    assert (key.platform, key.workspace, key.channel, key.thread) == ("discord", "10", "20", "")
    assert conversation_key(channel, one_off="ask-1").thread == "ask-1"
    dm = SimpleNamespace(id=CHANNEL, guild=None)
    assert conversation_key(dm).workspace == "dm"


def test_thread_names_fit_discord() -> None:
    assert thread_name("  Plan the\nrest ") == "Plan the"
    long = thread_name("word " * 60)
    assert len(long) <= 100 and long.endswith("…")
    assert thread_name("   ") == "Parley chat"


def test_help_lists_every_core_command_as_a_slash_command() -> None:
    text = help_text()
    assert all(f"`/{spec.name}" in text for spec in COMMANDS)
    assert "`/ask" in text and "`/chat" in text


class _Attachment:
    """A discord.Attachment stand-in that records whether it was downloaded."""

    def __init__(self, filename: str, size: int, content_type: str) -> None:
        self.id = 1
        self.filename = filename
        self.size = size
        self.content_type = content_type
        self.url = "http://127.0.0.1:9/unreachable"
        self.reads = 0

    async def read(self) -> bytes:
        self.reads += 1
        return b"x" * self.size


async def test_files_the_model_cannot_use_are_not_downloaded() -> None:
    limits = AttachmentPolicy(max_image_bytes=1000, max_text_bytes=100_000)
    big = _Attachment("huge.png", 50_000_000, "image/png")
    small = _Attachment("notes.md", 2000, "text/markdown")
    other = _Attachment("tool.bin", 10, "application/octet-stream")
    files, notes = await read_attachments([big, small, other], limits)  # type: ignore[list-item]
    assert big.reads == 0 and other.reads == 0, "nothing unusable is read into memory"
    assert notes == (sentences.file_too_large("huge.png", 1000, 50_000_000),)
    assert [(f.name, f.kind, len(f.data)) for f in files] == [
        ("notes.md", "text", 2000),
        ("tool.bin", "other", 0),
    ]


async def test_a_failed_download_is_a_note() -> None:
    limits = AttachmentPolicy(max_image_bytes=5_000_000, max_text_bytes=100)
    too_long = _Attachment("long.log", 5000, "text/plain")  # fetched from its (dead) URL
    files, notes = await read_attachments([too_long], limits)  # type: ignore[list-item]
    assert files == () and notes == (sentences.file_not_downloaded("long.log", "Discord"),)
