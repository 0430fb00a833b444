"""Team conversations on Slack: real slack_bolt/slack_sdk against the fake Slack, the real core
on SQLite and the stand-in model, which records every request.

UALICE is a workspace admin in the fake; UBOB and UCAROL are ordinary members.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from core import sentences
from core.context import SPEAKERS_NOTE, memory_block
from tests.fakes.slack_server import FakeSlack
from tests.integration.test_slack_http import ALICE, CHANNEL, Stack, make_stack

BOB = "UBOB"
CAROL = "UCAROL"
NAMES = {ALICE: "Alice", BOB: "Bob the Builder", CAROL: "Carol"}


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        fake.display_names.update(NAMES)
        yield fake


@pytest.fixture
async def stack(tmp_path: Any, slack: FakeSlack) -> AsyncIterator[Stack]:
    async with make_stack(tmp_path, slack) as s:
        yield s


async def slash(stack: Stack, text: str, *, user: str) -> str:
    """``/parley text`` as ``user`` in the channel; the reply sent to its response_url."""
    await stack.slack.post_command(stack.url, "/parley", text, channel=CHANNEL, user=user)
    await stack.adapter.drain()
    return str(stack.slack.called("response_url")[-1].params["text"])


def user_turns(request: dict[str, Any]) -> list[str]:
    return [str(m["content"]) for m in request["messages"] if m["role"] == "user"]


async def test_a_three_person_thread_names_each_speaker_to_the_model(stack: Stack) -> None:
    first = stack.mention("we ship on friday", user=ALICE)
    await stack.deliver(first)
    request = stack.standin.requests[-1]
    assert user_turns(request) == ["we ship on friday"], "one person: sent as typed"
    assert SPEAKERS_NOTE not in request["messages"][0]["content"]

    await stack.deliver(stack.mention("no, thursday", user=BOB, thread_ts=first["ts"]))
    await stack.deliver(stack.mention("who is right?", user=CAROL, thread_ts=first["ts"]))
    request = stack.standin.requests[-1]
    assert user_turns(request) == [
        "Alice: we ship on friday",
        "Bob the Builder: no, thursday",
        "Carol: who is right?",
    ]
    assert request["messages"][0]["role"] == "system"
    assert request["messages"][0]["content"].endswith(SPEAKERS_NOTE)
    assert not any(user in str(request) for user in NAMES), "no user id reaches the model"
    # Each name was looked up once, however many messages the person sent.
    looked_up = [c.params["user"] for c in stack.slack.called("users.info")]
    assert sorted(looked_up) == sorted(NAMES)
    await stack.deliver(stack.mention("I say friday", user=ALICE, thread_ts=first["ts"]))
    assert len(stack.slack.called("users.info")) == len(NAMES)


async def test_a_person_slack_will_not_name_is_someone(stack: Stack) -> None:
    first = stack.mention("hello", user=ALICE)
    await stack.deliver(first)
    stack.slack.fail("users.info", "user_not_visible")
    await stack.deliver(stack.mention("hi too", user=BOB, thread_ts=first["ts"]))
    assert user_turns(stack.standin.requests[-1]) == ["Alice: hello", "Someone: hi too"]


async def test_channel_memory_through_the_slash_command(stack: Stack) -> None:
    assert sentences.MEMORY_EMPTY.split("`")[0] in await slash(stack, "memory", user=BOB)
    added = await slash(stack, "remember Releases happen on Thursdays.", user=ALICE)
    assert added == sentences.remembered(1)
    assert stack.slack.called("response_url")[-1].params["response_type"] == "in_channel"
    await slash(stack, "remember The staging host is staging.example", user=ALICE)
    listed = await slash(stack, "memory", user=BOB)
    assert "1. Releases happen on Thursdays." in listed
    assert "2. The staging host is staging.example" in listed

    # Every prompt of the channel carries it, in any thread.
    await stack.deliver(stack.mention("when do we release?", user=CAROL))
    system = stack.standin.requests[-1]["messages"][0]["content"]
    assert system.endswith(
        memory_block(["Releases happen on Thursdays.", "The staging host is staging.example"])
    )

    # An ordinary member may see it, not change it.
    for text in ("remember Fridays are free", "forget 1"):
        refused = await slash(stack, text, user=BOB)
        assert refused.startswith("Only workspace admins and owners can")
        assert stack.slack.called("response_url")[-1].params["response_type"] == "ephemeral"
    assert "Fridays are free" not in await slash(stack, "memory", user=BOB)

    gone = await slash(stack, "forget 1", user=ALICE)
    assert gone == sentences.fact_forgotten(1, "Releases happen on Thursdays.")
    await stack.deliver(stack.mention("and the staging host?", user=CAROL))
    system = stack.standin.requests[-1]["messages"][0]["content"]
    assert "Thursdays" not in system
    assert system.endswith(memory_block(["The staging host is staging.example"]))


async def test_a_memory_over_its_share_of_the_budget_is_refused_in_slack(
    tmp_path: Any, slack: FakeSlack
) -> None:
    async with make_stack(tmp_path, slack, core={"parley_input_budget": 800}) as stack:
        fact = " ".join(["go"] * 60)
        assert await slash(stack, f"remember {fact}", user=ALICE) == sentences.remembered(1)
        refused = await slash(stack, f"remember {fact}", user=ALICE)
        assert refused.startswith("With that fact this channel's memory would be")
        assert "it may take at most 100" in refused


async def test_memory_commands_typed_in_a_thread(stack: Stack) -> None:
    first = stack.mention("hello", user=ALICE)
    await stack.deliver(first)
    await stack.deliver(
        stack.mention("!remember Standup is at 9:30", user=ALICE, thread_ts=first["ts"])
    )
    shown = "\n".join(m.text for m in stack.slack.thread(CHANNEL, first["ts"]))
    assert sentences.remembered(1) in shown
    requests = len(stack.standin.requests)
    await stack.deliver(stack.mention("/memory", user=BOB, thread_ts=first["ts"]))
    assert len(stack.standin.requests) == requests, "commands never reach the model"
    private = stack.slack.called("chat.postEphemeral")[-1].params  # a listing is for the asker
    assert private["user"] == BOB and private["thread_ts"] == first["ts"]
    assert "1. Standup is at 9:30" in str(private["text"])
