"""Hostile gateway dispatches (wrong types, missing fields, unknown events) are skipped: the
worker stays connected and still answers the next real mention."""

from __future__ import annotations

import copy
import logging
import random
from typing import Any

import pytest

from tests.integration.test_discord_adapter import Stack, StackFactory, make_stack

__all__ = ["make_stack"]  # the fixture, shared with the adapter's tests

EVENTS = (
    "MESSAGE_CREATE",
    "MESSAGE_UPDATE",
    "MESSAGE_DELETE",
    "INTERACTION_CREATE",
    "TYPING_START",
    "MESSAGE_REACTION_ADD",
    "PARLEY_NO_SUCH_EVENT",
)
WRONG = (None, 123, -1, 2**70, "x", "", [], {}, True, 1.5, ["a", 1], {"id": None})


def malformed(base: dict[str, Any], rng: random.Random) -> Any:
    """A copy of ``base`` broken in one to three ways, or no object at all."""
    if rng.random() < 0.1:
        return rng.choice(WRONG)
    data = copy.deepcopy(base)
    for _ in range(rng.randint(1, 3)):
        target = data
        if isinstance(data.get("author"), dict) and data["author"] and rng.random() < 0.3:
            target = data["author"]
        if not target:
            break
        key = rng.choice(sorted(target))
        if rng.random() < 0.4:
            del target[key]
        else:
            target[key] = rng.choice(WRONG)
    return data


@pytest.mark.parametrize("seed", [1, 2])
async def test_malformed_dispatches_are_skipped_and_the_worker_still_answers(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture, seed: int
) -> None:
    rng = random.Random(seed)
    caplog.set_level(logging.DEBUG)
    async with make_stack() as stack:
        fake = stack.discord
        base = fake.message_payload("not for the bot")
        for _ in range(300):
            await fake.dispatch_raw(rng.choice(EVENTS), malformed(base, rng))
        await answered(stack, "are you still there?")
        assert fake.connected.is_set() and not stack.adapter.failed.is_set()
    problems = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not problems, [r.getMessage() for r in problems[:5]]
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
