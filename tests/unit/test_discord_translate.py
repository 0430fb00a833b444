"""Translating Discord places and people into the core's terms: keys, access, thread names."""

from __future__ import annotations

from types import SimpleNamespace

import discord
import pytest

from adapters.discord.interactions import help_text
from adapters.discord.translate import (
    AccessPolicy,
    conversation_key,
    read_attachments,
    thread_name,
)
from core.commands import COMMANDS
from core.errors import ConfigError
from core.settings import Settings

GUILD, CHANNEL, THREAD, ROLE, USER = 10, 20, 30, 40, 50


def policy(**values: object) -> AccessPolicy:
    return AccessPolicy.from_settings(Settings(_env_file=None, **values))  # type: ignore[arg-type,call-arg]


def refusal(
    p: AccessPolicy, *, guild: int | None = GUILD, roles: tuple[int, ...] = ()
) -> str | None:
    return p.refusal(user_id=USER, role_ids=roles, guild_id=guild, channel_ids=[THREAD, CHANNEL])


def test_everyone_may_use_the_bot_by_default() -> None:
    assert refusal(policy()) is None
    assert refusal(policy(), guild=None) is None


def test_blocked_user_guild_and_channel_are_refused() -> None:
    assert "not allowed" in (refusal(policy(discord_blocked_users=[USER])) or "")
    assert "server" in (refusal(policy(discord_blocked_guilds=[GUILD])) or "")
    assert "channel" in (refusal(policy(discord_blocked_channels=[CHANNEL])) or "")


def test_a_thread_is_allowed_through_its_parent_channel() -> None:
    assert refusal(policy(discord_allowed_channels=[CHANNEL])) is None
    assert "<#99>" in (refusal(policy(discord_allowed_channels=[99])) or "")


def test_allowed_roles_gate_use_and_direct_messages() -> None:
    p = policy(discord_allowed_roles=[ROLE])
    assert refusal(p, roles=(ROLE,)) is None
    assert f"<@&{ROLE}>" in (refusal(p) or "")
    assert "direct messages" in (refusal(p, guild=None) or "")


def test_settings_need_the_permission_or_an_allowed_role() -> None:
    p = policy(discord_allowed_roles=[ROLE])
    plain = discord.Permissions(send_messages=True)
    assert not p.may_change_settings(permissions=plain, role_ids=[], in_dm=False)
    assert p.may_change_settings(permissions=plain, role_ids=[ROLE], in_dm=False)
    mods = discord.Permissions(manage_messages=True)
    assert p.may_change_settings(permissions=mods, role_ids=[], in_dm=False)
    assert p.may_change_settings(permissions=None, role_ids=[], in_dm=True)
    assert "Manage Messages" in p.settings_refusal("model")


def test_unknown_settings_permission_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="DISCORD_SETTINGS_PERMISSION"):
        policy(discord_settings_permission="be_nice")


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

    def __init__(self, filename: str, size: int, content_type: str = "text/plain") -> None:
        self.id = 1
        self.filename = filename
        self.size = size
        self.content_type = content_type
        self.reads = 0

    async def read(self) -> bytes:
        self.reads += 1
        return b"x" * self.size


async def test_text_file_over_the_limit_is_not_downloaded() -> None:
    settings = Settings(_env_file=None, parley_max_text_file_bytes=2000)  # type: ignore[call-arg]
    big, small = _Attachment("huge.log", 50_000_000), _Attachment("notes.md", 2000)
    files, notes = await read_attachments([big, small], settings)  # type: ignore[list-item]
    assert big.reads == 0, "a file that can't be used is not read into memory"
    assert notes == ("huge.log was not read: text files are limited to 2 KB.",)
    assert [(f.name, f.kind, len(f.data)) for f in files] == [("notes.md", "text", 2000)]
