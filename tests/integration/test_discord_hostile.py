"""Hostile gateway dispatches (wrong types, missing fields, unknown events) are skipped: the
worker stays connected and still answers the next real mention."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from tests.fakes.discord_server import FakeDiscord
from tests.fakes.junk import Junk
from tests.integration.test_discord_adapter import Stack, StackFactory, make_stack

__all__ = ["make_stack"]  # the fixture, shared with the adapter's tests

EVENTS = (
    "MESSAGE_CREATE",
    "MESSAGE_UPDATE",
    "MESSAGE_DELETE",
    "INTERACTION_CREATE",
    "TYPING_START",
    "MESSAGE_REACTION_ADD",
    "GUILD_CREATE",
    "GUILD_MEMBER_UPDATE",
    "CHANNEL_CREATE",
    "THREAD_CREATE",
    "READY",
    "RESUMED",
    "PARLEY_NO_SUCH_EVENT",
    "",
)
DISPATCHES = 5_000
SENT_AT_ONCE = 250  # dispatches written before the next real mention checks the worker


def templates(fake: FakeDiscord) -> dict[str, dict[str, Any]]:
    """A valid payload for each event (READY and RESUMED as the gateway sends them)."""
    message = fake.message_payload("not for the bot")
    return {
        "MESSAGE_CREATE": message,
        "MESSAGE_UPDATE": message,
        "MESSAGE_DELETE": {"id": message["id"], "channel_id": fake.channel_id},
        "INTERACTION_CREATE": fake.command_payload("ask", {"question": "not for the bot"}),
        "TYPING_START": {"channel_id": fake.channel_id, "user_id": fake.user.id, "timestamp": 1},
        "MESSAGE_REACTION_ADD": {
            "user_id": fake.user.id,
            "channel_id": fake.channel_id,
            "message_id": message["id"],
            "emoji": {"id": None, "name": "x"},
        },
        "GUILD_CREATE": fake.guild_payload(fake.guild_id),
        "GUILD_MEMBER_UPDATE": {"guild_id": fake.guild_id, **fake.user.member()},
        "CHANNEL_CREATE": fake.channels[fake.channel_id],
        "THREAD_CREATE": fake.channels[fake.channel_id],
        "READY": fake.ready_payload(),
        "RESUMED": {"_trace": ["fake"]},
    }


def malformed(event: str, valid: dict[str, dict[str, Any]], junk: Junk) -> Any:
    """The event's payload broken in a few places, or junk when the event has none."""
    base = valid.get(event)
    return junk.value() if base is None else junk.broken(base)


@pytest.mark.timeout(300)  # a loaded machine; speed is not what this test measures
@pytest.mark.parametrize("seed", [1, 2])
async def test_malformed_dispatches_are_skipped_and_the_worker_still_answers(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture, seed: int
) -> None:
    junk = Junk(random.Random(seed))
    caplog.set_level(logging.INFO)
    async with make_stack() as stack:
        fake = stack.discord
        valid = templates(fake)
        for n in range(DISPATCHES // 2):
            event = junk.rng.choice(EVENTS)
            await fake.dispatch_raw(event, malformed(event, valid, junk))
            if n % SENT_AT_ONCE == SENT_AT_ONCE - 1:
                await answered(stack, f"are you still there after {n + 1}?")
        await answered(stack, "are you still there?")
        assert fake.connected.is_set() and not stack.adapter.failed.is_set()
        assert len(fake.identifies) == 1, "the worker never had to reconnect"
    problems = [
        r
        for r in caplog.records
        if (r.exc_info and r.levelno >= logging.WARNING) or "Traceback" in r.getMessage()
    ]
    assert not problems, [f"{r.name}: {r.getMessage()[:200]}" for r in problems[:5]]
    skipped = [r for r in caplog.records if "skipped a malformed" in r.getMessage()]
    assert skipped and len(skipped) < 300, "each kind of problem is logged once, not each time"
    assert not any("not for the bot" in r.getMessage() for r in caplog.records)


async def answered(stack: Stack, question: str) -> None:
    fake = stack.discord
    await fake.send_message(question, mention_bot=True)
    await fake.wait_for(
        lambda: any(
            question in text
            for text in fake.channel_messages(fake.channel_id, author_id=fake.bot.id)
        )
    )
