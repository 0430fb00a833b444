"""``/speak`` on Discord: the real discord.py client against the fake Discord, the real core on
SQLite and the stand-in OpenAI server's speech endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.standin.speech import MP3_FRAME_HEADER
from core import sentences
from core.messages import ChannelKey, ConversationKey
from tests.integration.test_discord_adapter import Stack, StackFactory
from tests.integration.test_discord_adapter import make_stack as make_stack  # noqa: F401


@pytest.fixture
async def stack(make_stack: StackFactory) -> AsyncIterator[Stack]:  # noqa: F811
    async with make_stack() as s:
        yield s


def attachments(stack: Stack, interaction: dict[str, Any]) -> list[dict[str, Any]]:
    token = interaction["token"]
    found = [m for k, m in stack.discord.webhook_messages.items() if k.startswith(token)]
    return [a for m in found for a in m.get("attachments") or []]


async def test_speak_attaches_the_last_answer_read_aloud_and_charges_it(stack: Stack) -> None:
    fake = stack.discord
    store = stack.parley.store
    key = ConversationKey("discord", fake.guild_id, fake.channel_id)
    state = await store.conversation(key)
    await store.add_message(state.id, "user", "what is an owl?", 5, author_id=fake.user.id)
    await store.add_message(state.id, "assistant", "An **owl** is a bird of prey.", 9)

    interaction = await fake.send_command("speak", user=fake.user)
    (audio,) = await fake.wait_for(lambda: attachments(stack, interaction) or None)

    assert audio["filename"] == "parley-answer.mp3"
    assert fake.uploads[audio["id"]].startswith(MP3_FRAME_HEADER)
    assert "read aloud" in "".join(stack.visible(interaction))
    spoken = stack.openai.speech_requests[-1]
    assert spoken["input"] == "An owl is a bird of prey."
    usage = await store.channel_usage(ChannelKey("discord", fake.guild_id, fake.channel_id))
    assert usage.turns == 1 and usage.output_tokens > 0 and usage.unpriced_calls == 0


async def test_speak_before_any_answer_says_so_privately(stack: Stack) -> None:
    fake = stack.discord
    interaction = await fake.send_command("speak", user=fake.user)
    await fake.wait_for(lambda: sentences.NOTHING_TO_SPEAK in "".join(stack.visible(interaction)))
    assert not attachments(stack, interaction)
    assert not stack.openai.speech_requests
