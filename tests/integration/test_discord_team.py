"""Team conversations on Discord: the real discord.py client against the fake Discord, the real
core on SQLite and the stand-in model, which records every request.

The fake's ``user`` (alice) is an ordinary member; its ``moderator`` (mod) may change settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from core import sentences
from core.context import SPEAKERS_NOTE, memory_block
from tests.integration.test_discord_adapter import (
    Stack,
    StackFactory,
    make_stack,  # noqa: F401  (the fixture, reached by name)
)

WHO = "members with the Manage Messages permission"


@pytest.fixture
async def stack(make_stack: StackFactory) -> AsyncIterator[Stack]:  # noqa: F811
    async with make_stack() as s:
        yield s


def user_turns(request: dict[str, Any]) -> list[str]:
    return [str(m["content"]) for m in request["messages"] if m["role"] == "user"]


async def answered(stack: Stack, count: int) -> None:
    await stack.discord.wait_for(lambda: len(stack.openai.requests) >= count)
    await stack.adapter.inflight.wait(30)


async def test_two_people_in_a_channel_are_named_to_the_model(stack: Stack) -> None:
    fake = stack.discord
    await fake.send_message("we ship friday", mention_bot=True)
    await answered(stack, 1)
    assert user_turns(stack.openai.requests[-1]) == ["we ship friday"]
    await fake.send_message("no, thursday", mention_bot=True, author=fake.moderator)
    await answered(stack, 2)
    request = stack.openai.requests[-1]
    assert user_turns(request) == ["alice: we ship friday", "mod: no, thursday"]
    assert request["messages"][0]["content"].endswith(SPEAKERS_NOTE)
    assert fake.user.id not in str(request) and fake.moderator.id not in str(request)


async def test_channel_memory_through_slash_commands(stack: Stack) -> None:
    fake = stack.discord
    names = {c["name"] for c in fake.commands[fake.guild_id]}
    assert {"remember", "forget", "memory"} <= names
    added = await fake.send_command("remember", {"fact": "Standup is at 9:30"}, user=fake.moderator)
    assert await fake.wait_for(lambda: stack.shown(added)) == [sentences.remembered(1)]
    refused = await fake.send_command("forget", {"number": "1"}, user=fake.user)
    assert await fake.wait_for(lambda: stack.shown(refused)) == [
        sentences.not_allowed("forget", WHO, setting=True, shown_by="memory")
    ]
    listed = await fake.send_command("memory", user=fake.user)
    assert "1. Standup is at 9:30" in "".join(await fake.wait_for(lambda: stack.shown(listed)))

    await fake.send_message("when is standup?", mention_bot=True)
    await answered(stack, 1)
    system = stack.openai.requests[-1]["messages"][0]["content"]
    assert system.endswith(memory_block(["Standup is at 9:30"]))

    gone = await fake.send_command("forget", {"number": "1"}, user=fake.moderator)
    assert await fake.wait_for(lambda: stack.shown(gone)) == [
        sentences.fact_forgotten(1, "Standup is at 9:30")
    ]
