"""Who may change a Slack channel's settings or reset it: real slack_bolt/slack_sdk against the
fake Slack (users.info, usergroups.users.list, conversations.info), the real core on SQLite.

UALICE is a workspace admin in the fake; UBOB is an ordinary member.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from core import sentences
from core.messages import ConversationKey
from core.service import ChannelConfig
from tests.fakes.slack_server import FakeSlack
from tests.integration.test_slack_http import ALICE, CHANNEL, DM, Stack, make_stack

BOB = "UBOB"
CHANGES = ("system be terse", "model gpt-4", "temperature 0.3", "json on")
WHO = "Only workspace admins and owners"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def stack(tmp_path: Any, slack: FakeSlack) -> AsyncIterator[Stack]:
    async with make_stack(tmp_path, slack) as s:
        yield s


async def config(stack: Stack, channel: str = CHANNEL) -> ChannelConfig:
    key = ConversationKey("slack", stack.slack.team_id, channel)
    return await stack.parley.service.channel_config(key.channel_key)


async def slash(stack: Stack, text: str, *, user: str, channel: str = CHANNEL) -> str:
    """``/parley text`` as ``user``; the text of the reply sent to its response_url."""
    await stack.slack.post_command(stack.url, "/parley", text, channel=channel, user=user)
    await stack.adapter.drain()
    return str(stack.slack.called("response_url")[-1].params["text"])


async def test_an_ordinary_member_cannot_change_settings(stack: Stack) -> None:
    before = await config(stack)
    for text in CHANGES:
        reply = await slash(stack, text, user=BOB)
        name = text.split()[0]
        assert WHO in reply and f"change `{name}`" in reply, text
        assert stack.slack.called("response_url")[-1].params["response_type"] == "ephemeral"
    assert await config(stack) == before
    # Seeing a setting, the usage and the help stays open to everyone.
    assert "temperature" in (await slash(stack, "temperature", user=BOB)).lower()
    assert "Only" not in await slash(stack, "usage", user=BOB)
    assert "Parley commands" in await slash(stack, "help", user=BOB)


async def test_typed_changes_by_an_ordinary_member_are_refused(stack: Stack) -> None:
    first = stack.mention("remember the word banana")
    await stack.deliver(first)
    for text in ("!model gpt-4", "!system be terse", "!temp 1.5", "!json on", "reset"):
        await stack.deliver(stack.mention(text, thread_ts=first["ts"], user=BOB))
        refusal = stack.slack.called("chat.postEphemeral")[-1].params
        assert refusal["user"] == BOB and "Only workspace admins" in refusal["text"], text
    assert await config(stack) == await config(stack, "C0OTHER")  # still the defaults
    # The thread's history is untouched: the admin's reset still finds both turns.
    await stack.deliver(stack.mention("reset", thread_ts=first["ts"]))
    posted = stack.slack.called("chat.postMessage")[-1].params["text"]
    assert "forgot this conversation (2 messages)" in posted


async def test_an_ordinary_member_cannot_reset_the_channel(stack: Stack) -> None:
    key = ConversationKey("slack", stack.slack.team_id, CHANNEL)
    store = stack.parley.store
    state = await store.conversation(key)
    await store.add_message(state.id, "user", "keep me", 2, author_id=ALICE)
    reply = await slash(stack, "reset", user=BOB)
    assert WHO in reply and "`reset`" in reply
    assert "forgot this conversation (1 message" in await slash(stack, "reset", user=ALICE)


async def test_an_admin_changes_every_setting(stack: Stack) -> None:
    for text in CHANGES:
        reply = await slash(stack, text, user=ALICE)
        assert "Only" not in reply, text
    changed = await config(stack)
    assert (changed.system_prompt, changed.model) == ("be terse", "gpt-4")
    assert (changed.temperature, changed.json_mode) == (0.3, True)
    assert stack.slack.called("users.info")[-1].params["user"] == ALICE


async def test_owners_listed_users_and_group_members_may_change_settings(
    tmp_path: Any, slack: FakeSlack
) -> None:
    slack.admins.clear()
    slack.owners.add("UOWNER")
    slack.usergroups["S0MODS"] = ["UMOD"]
    async with make_stack(tmp_path, slack, admin_users="UCAROL", admin_groups="S0MODS") as stack:
        for user, value in (("UOWNER", "0.1"), ("UCAROL", "0.2"), ("UMOD", "0.4")):
            assert "Only" not in await slash(stack, f"temperature {value}", user=user)
            assert (await config(stack)).temperature == float(value)
        refused = await slash(stack, "temperature 2", user=ALICE)
        assert "named in Parley's settings" in refused
        assert (await config(stack)).temperature == 0.4


async def test_the_channel_creator_counts_only_when_configured(
    tmp_path: Any, slack: FakeSlack
) -> None:
    slack.creators[CHANNEL] = BOB
    async with make_stack(tmp_path, slack) as stack:
        assert WHO in await slash(stack, "model gpt-4", user=BOB)
    async with make_stack(tmp_path, slack, channel_creator_is_admin=True) as stack:
        assert "Only" not in await slash(stack, "model gpt-4", user=BOB)
        assert (await config(stack)).model == "gpt-4"
        refused = await slash(stack, "model gpt-4o", user="UDAVE", channel="C0OTHER")
        assert "the channel's creator" in refused


async def test_anyone_may_change_their_own_dm(stack: Stack) -> None:
    assert "Only" not in await slash(stack, "system be brief", user=BOB, channel=DM)
    assert (await config(stack, DM)).system_prompt == "be brief"
    assert stack.slack.called("users.info") == []  # nothing to look up in one's own DM


async def test_a_failed_lookup_refuses(stack: Stack) -> None:
    stack.slack.fail("users.info", "missing_scope")
    assert WHO in await slash(stack, "json on", user=ALICE)
    assert not (await config(stack)).json_mode
    # Failures are not cached: once Slack answers, the admin may.
    assert "Only" not in await slash(stack, "json on", user=ALICE)
    assert (await config(stack)).json_mode


def test_the_refusal_sentence_names_who_may() -> None:
    text = sentences.not_allowed("model", "workspace admins and owners", setting=True)
    assert text.startswith("Only workspace admins and owners can change `model` here.")
    assert "`reset` this conversation" in sentences.not_allowed("reset", "x", setting=False)
