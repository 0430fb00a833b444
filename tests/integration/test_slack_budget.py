"""Slack answers inside Slack's per-method limits: the real adapter (slack_bolt/slack_sdk, the
real core on SQLite, the stand-in model) against the fake Slack that answers 429 past Slack's
tiers, with the write budget's clock stopped so the counts do not depend on timing.

When chat.update's budget cannot take an answer's final edit, the answer is posted anew with
chat.postMessage (its budget is per channel) and the placeholder is deleted afterwards (with
chat.delete's own budget); ``adapter.drain()`` waits for that delete too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from adapters.slack import SlackAdapter
from adapters.slack.budget import LIMITS, OPENINGS, OPENINGS_RATE, BudgetedWebClient
from adapters.slack.render import FEEDBACK_ACTION, THINKING
from adapters.slack.settings import SlackSettings
from adapters.standin.server import StandinServer
from bots.bootstrap import build
from bots.platforms import slack_adapter
from core import budget
from core.budget import LocalBudget
from core.settings import Settings
from tests.fakes.slack_server import Message
from tests.fakes.slack_tiers import TieredSlack

CHANNEL = "C0GENERAL"


def stopped_clock() -> float:
    """The budget's clock, stopped: spent tokens never come back during a test."""
    return 1000.0


@contextlib.asynccontextmanager
async def slack_stack(
    tmp_path: Any, clock: Callable[[], float] = stopped_clock
) -> AsyncIterator[tuple[TieredSlack, SlackAdapter]]:
    """The adapter in HTTP mode answering by editing a "Thinking…" placeholder (the workspace
    cannot stream), under a budget with ``clock`` (stopped unless told)."""
    previous = budget.use(LocalBudget(clock))
    slack = await TieredSlack(streaming=False).start()
    try:
        async with StandinServer() as standin:
            settings = Settings(
                _env_file=None,
                openai_base_url=standin.base_url,
                openai_api_key="test",
                openai_max_retries=0,
                database_url=f"sqlite+aiosqlite:///{tmp_path}/p.db",
            )
            parley = await build(settings)
            section = SlackSettings(
                _env_file=None,
                bot_token=slack.bot_token,
                signing_secret=slack.signing_secret,
                mode="http",
                api_url=slack.base_url,
                update_interval=0.01,
            )
            adapter = slack_adapter(parley, section, host="127.0.0.1", port=0)
            await adapter.start()
            adapter.streaming = False  # as after the first answer found streaming unknown
            try:
                yield slack, adapter
            finally:
                await adapter.stop()
                await parley.close()
    finally:
        await slack.stop()
        budget.use(previous)


async def mention(slack: TieredSlack, adapter: SlackAdapter, text: str) -> str:
    """Post a mention like Slack (answered in a thread of its own); its thread's ts."""
    message = slack.add_message(CHANNEL, f"<@{slack.bot_user_id}> {text}", user="UALICE")
    event = {
        "type": "app_mention",
        "user": "UALICE",
        "text": message.text,
        "ts": message.ts,
        "channel": CHANNEL,
        "team": slack.team_id,
        "event_ts": message.ts,
    }
    url = f"http://127.0.0.1:{adapter.port}/slack/events"
    assert await slack.post_event(url, slack.event_body(event)) == 200
    return message.ts


def bot_replies(slack: TieredSlack, thread_ts: str) -> list[Message]:
    return [m for m in slack.thread(CHANNEL, thread_ts) if m.bot_id]


def has_buttons(message: Message) -> bool:
    return any(block.get("block_id") == FEEDBACK_ACTION for block in message.blocks or [])


async def spend(adapter: SlackAdapter, method: str, leave: int) -> None:
    """Take ``method``'s tokens from the workspace's bucket until ``leave`` are left."""
    assert isinstance(adapter.client, BudgetedWebClient)
    rate = LIMITS[method].rate
    key = f"slack:{adapter.client.workspace}:{method}"
    for _ in range(int(rate.burst) - leave):
        assert await budget.shared().take(key, rate, 0.0) == 0.0


async def test_with_chat_update_spent_the_answer_is_posted_anew_and_the_placeholder_deleted(
    tmp_path: Any,
) -> None:
    async with slack_stack(tmp_path) as (slack, adapter):
        await spend(adapter, "chat.update", leave=0)
        thread = await mention(slack, adapter, "how busy is it?")
        await adapter.drain()

        replies = bot_replies(slack, thread)
        assert len(replies) == 1 and "You said: how busy is it?" in replies[0].text
        assert has_buttons(replies[0])
        posts = slack.called("chat.postMessage")
        assert [p.text for p in posts][0] == THINKING and len(posts) == 2
        deleted = [c.params["ts"] for c in slack.called("chat.delete") if c.ok]
        assert len(deleted) == 1 and deleted[0] != replies[0].ts
        assert not [c for c in slack.called("chat.update") if c.ok]
        assert all(call.status != 429 for call in slack.calls)


async def test_with_no_room_to_finish_a_message_none_is_opened_and_the_answer_is_posted_once(
    tmp_path: Any,
) -> None:
    """Messages already opened will need all of chat.update's budget: this answer opens no
    placeholder, so nothing partial is left to edit or delete; it comes whole, in one post."""
    async with slack_stack(tmp_path) as (slack, adapter):
        assert isinstance(adapter.client, BudgetedWebClient)
        key = f"slack:{adapter.client.workspace}:{OPENINGS}"
        for _ in range(int(OPENINGS_RATE.burst)):
            assert await budget.shared().take(key, OPENINGS_RATE, 0.0) == 0.0
        await spend(adapter, "chat.update", leave=0)
        thread = await mention(slack, adapter, "is there room?")
        await adapter.drain()

        replies = bot_replies(slack, thread)
        assert len(replies) == 1 and "You said: is there room?" in replies[0].text
        assert has_buttons(replies[0])
        assert [p.text for p in slack.called("chat.postMessage")] == [replies[0].text]
        assert not slack.called("chat.update") and not slack.called("chat.delete")
        assert all(call.status != 429 for call in slack.calls)


@pytest.mark.parametrize("left", [None, 1])
async def test_with_room_in_chat_update_the_placeholder_is_edited(
    tmp_path: Any, left: int | None
) -> None:
    """A full bucket, or a last token (below the progress writes' reserve) for the final edit."""
    async with slack_stack(tmp_path) as (slack, adapter):
        if left is not None:
            await spend(adapter, "chat.update", leave=left)
        thread = await mention(slack, adapter, "a quiet day?")
        await adapter.drain()

        replies = bot_replies(slack, thread)
        assert len(replies) == 1 and "You said: a quiet day?" in replies[0].text
        assert has_buttons(replies[0])
        assert len(slack.called("chat.postMessage")) == 1
        assert not slack.called("chat.delete")
        if left is not None:
            assert len(slack.called("chat.update")) == 1
        assert all(call.status != 429 for call in slack.calls)


async def test_mentions_at_once_ask_auth_test_only_at_start(tmp_path: Any) -> None:
    async with slack_stack(tmp_path, time.monotonic) as (slack, adapter):
        threads = await asyncio.gather(*(mention(slack, adapter, f"hi {n}") for n in range(4)))
        await adapter.drain()

        assert len(slack.called("auth.test")) == 1
        for n, thread in enumerate(threads):
            replies = bot_replies(slack, thread)
            assert len(replies) == 1 and f"You said: hi {n}" in replies[0].text
