"""The Slack adapter in HTTP mode: real slack_bolt/slack_sdk, the real core on SQLite, a fake
Slack and the stand-in OpenAI server, all on 127.0.0.1.

Events are posted signed, as Slack posts them; ``adapter.drain()`` waits until the handlers
bolt scheduled for them are done, so no test depends on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from slack_bolt.request.async_request import AsyncBoltRequest

from adapters.slack import SlackAdapter
from adapters.slack.render import THINKING, ReplyTarget, SlackAnswer
from adapters.slack.settings import SlackSettings
from adapters.standin.server import StandinServer
from bots.bootstrap import Parley, build
from bots.platforms import slack_adapter
from core.delivery import Interval, deliver
from core.messages import Accepted, FinalText, ReplyEvent, TextDelta
from core.sentences import GENERIC_ERROR, RESTARTED, WARNING_MARK, failure_text
from core.settings import Settings
from tests.fakes.slack_server import FakeSlack, Message

CHANNEL = "C0GENERAL"
DM = "D0ALICE"
ALICE = "UALICE"


@dataclass
class Stack:
    slack: FakeSlack
    standin: StandinServer
    parley: Parley
    adapter: SlackAdapter

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.adapter.port}/slack/events"

    async def deliver(self, event: dict[str, Any], **kwargs: Any) -> int:
        """Post ``event`` like Slack, then wait until the adapter has handled it."""
        status = await self.post(event, **kwargs)
        await self.adapter.drain()
        return status

    async def post(self, event: dict[str, Any], **kwargs: Any) -> int:
        """Post ``event`` like Slack; returns once the adapter acked it (still answering)."""
        body = self.slack.event_body(event, event_id=kwargs.pop("event_id", None))
        return await self.slack.post_event(self.url, body, **kwargs)

    def mention(
        self,
        text: str,
        *,
        channel: str = CHANNEL,
        thread_ts: str | None = None,
        files: list[dict[str, Any]] | None = None,
        user: str = ALICE,
    ) -> dict[str, Any]:
        """An app_mention event for a new message (also stored in the fake workspace)."""
        message = self.slack.add_message(
            channel, f"<@{self.slack.bot_user_id}> {text}", user=user, thread_ts=thread_ts
        )
        event = {
            "type": "app_mention",
            "user": user,
            "text": message.text,
            "ts": message.ts,
            "channel": channel,
            "team": self.slack.team_id,
            "event_ts": message.ts,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        if files:
            event["files"] = files
        return event

    def message(
        self,
        text: str,
        *,
        channel: str = CHANNEL,
        channel_type: str = "channel",
        thread_ts: str | None = None,
        user: str = ALICE,
        **extra: Any,
    ) -> dict[str, Any]:
        """A message event for a new message (also stored in the fake workspace)."""
        message = self.slack.add_message(channel, text, user=user, thread_ts=thread_ts)
        event = {
            "type": "message",
            "channel_type": channel_type,
            "user": user,
            "text": text,
            "ts": message.ts,
            "channel": channel,
            "team": self.slack.team_id,
            "event_ts": message.ts,
            **extra,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        return event


def answer_text(messages: list[Message]) -> str:
    return "\n".join(m.text for m in messages)


@contextlib.asynccontextmanager
async def make_stack(
    tmp_path: Any, slack: FakeSlack, core: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[Stack]:
    """The adapter in HTTP mode on a real core; ``core`` overrides core settings, the keyword
    arguments Slack settings."""
    async with StandinServer() as standin:
        values: dict[str, Any] = {
            "openai_base_url": standin.base_url,
            "openai_api_key": "test",
            "openai_max_retries": 0,
            "database_url": f"sqlite+aiosqlite:///{tmp_path}/p.db",
            **(core or {}),
        }
        section: dict[str, Any] = {
            "bot_token": slack.bot_token,
            "signing_secret": slack.signing_secret,
            "mode": "http",
            "api_url": slack.base_url,
            "update_interval": 0.01,
            **overrides,
        }
        parley = await build(Settings(_env_file=None, **values))
        adapter = slack_adapter(
            parley, SlackSettings(_env_file=None, **section), host="127.0.0.1", port=0
        )
        await adapter.start()
        try:
            yield Stack(slack, standin, parley, adapter)
        finally:
            await adapter.stop()
            await parley.close()


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def stack(tmp_path: Any, slack: FakeSlack) -> AsyncIterator[Stack]:
    async with make_stack(tmp_path, slack) as s:
        yield s


@pytest.fixture
async def edit_stack(tmp_path: Any) -> AsyncIterator[Stack]:
    """A workspace where the chat streaming methods are unknown: answers use chat.update."""
    async with FakeSlack(streaming=False) as fake:
        async with make_stack(tmp_path, fake) as s:
            yield s


# --- mentions --------------------------------------------------------------------------------


async def test_mention_streams_the_answer_into_the_thread(stack: Stack) -> None:
    event = stack.mention("what does **this** mean?")
    assert await stack.deliver(event) == 200

    start = stack.slack.called("chat.startStream")
    assert len(start) == 1 and start[0].ok
    assert start[0].params["thread_ts"] == event["ts"]
    assert start[0].params["recipient_user_id"] == ALICE
    assert start[0].params["recipient_team_id"] == stack.slack.team_id
    assert stack.slack.called("chat.stopStream")
    replies = stack.slack.thread(CHANNEL, event["ts"])
    assert len(replies) == 1
    assert not replies[0].streaming
    assert "You said: what does **this** mean?" in replies[0].text
    assert not stack.slack.called("chat.postMessage")


async def test_mention_in_the_thread_continues_the_conversation(stack: Stack) -> None:
    first = stack.mention("my name is Ada")
    await stack.deliver(first)
    second = stack.mention("what is my name?", thread_ts=first["ts"])
    await stack.deliver(second)

    starts = stack.slack.called("chat.startStream")
    assert [c.params["thread_ts"] for c in starts] == [first["ts"], first["ts"]]
    request = stack.standin.requests[-1]
    contents = [m["content"] for m in request["messages"] if m["role"] == "user"]
    assert contents[-2:] == ["my name is Ada", "what is my name?"]


async def test_answers_fall_back_to_chat_update_without_streaming(edit_stack: Stack) -> None:
    slack = edit_stack.slack
    first = edit_stack.mention("hello **there**")
    await edit_stack.deliver(first)

    assert slack.called("chat.startStream")[0].error == "unknown_method"
    replies = slack.thread(CHANNEL, first["ts"])
    assert len(replies) == 1
    # Converted to mrkdwn: bold is *x*.
    assert "You said: hello *there*" in replies[0].text

    # The adapter remembers: the next answer does not try streaming, it shows a placeholder
    # and edits it.
    second = edit_stack.mention("again")
    await edit_stack.deliver(second)
    assert len(slack.called("chat.startStream")) == 1
    post = slack.called("chat.postMessage")[-1]
    assert post.params["text"] == THINKING and post.params["thread_ts"] == second["ts"]
    replies = slack.thread(CHANNEL, second["ts"])
    assert len(replies) == 1 and "You said: again" in replies[0].text
    assert slack.called("chat.update")[-1].params["ts"] == replies[0].ts


async def test_long_answer_is_split_into_thread_replies(stack: Stack) -> None:
    event = stack.mention("tell me a lot [[fault:long_answer:2500]]")
    await stack.deliver(event)

    replies = stack.slack.thread(CHANNEL, event["ts"])
    assert len(replies) >= 2
    assert all(len(m.text) <= 3900 for m in replies)
    assert not any(m.streaming for m in replies)
    final = stack.standin.requests[-1]
    assert final["stream"] is True
    # Every piece's code fences are balanced.
    assert all(m.text.count("```") % 2 == 0 for m in replies)
    # The final text wins over any later snapshot (the model hit max_output_tokens).
    assert replies[-1].text.endswith("_(answer cut off at the output token limit)_")


async def test_long_answer_is_split_when_editing(edit_stack: Stack) -> None:
    event = edit_stack.mention("tell me a lot [[fault:long_answer:2500]]")
    await edit_stack.deliver(event)

    replies = edit_stack.slack.thread(CHANNEL, event["ts"])
    assert len(replies) >= 2
    assert all(len(m.text) <= 4000 for m in replies)
    assert all(THINKING not in m.text for m in replies)
    assert replies[-1].text.endswith("_(answer cut off at the output token limit)_")


async def test_commands_typed_in_a_mention(stack: Stack) -> None:
    first = stack.mention("remember the word banana")
    await stack.deliver(first)
    reset = stack.mention("reset", thread_ts=first["ts"])
    await stack.deliver(reset)

    posted = stack.slack.called("chat.postMessage")
    assert len(posted) == 1 and "forgot this conversation" in posted[0].params["text"]
    assert posted[0].params["thread_ts"] == first["ts"]
    usage = stack.mention("usage", thread_ts=first["ts"])
    await stack.deliver(usage)
    ephemeral = stack.slack.called("chat.postEphemeral")
    assert len(ephemeral) == 1 and ephemeral[0].params["user"] == ALICE
    # A command with an argument is marked with "!" (or "/").
    await stack.deliver(stack.mention("!system be terse", thread_ts=first["ts"]))
    assert "System prompt updated" in stack.slack.called("chat.postMessage")[-1].params["text"]
    # Commands never reach the model.
    assert len(stack.standin.requests) == 1


async def test_a_question_starting_with_a_command_word_is_a_question(stack: Stack) -> None:
    event = stack.mention("system design question: what is a queue?")
    await stack.deliver(event)
    assert len(stack.standin.requests) == 1
    assert "You said: system design question" in stack.slack.thread(CHANNEL, event["ts"])[-1].text


# --- direct messages and threads ------------------------------------------------------------


async def test_direct_message_is_its_own_conversation(stack: Stack) -> None:
    await stack.deliver(stack.message("hi in private", channel=DM, channel_type="im"))
    await stack.deliver(stack.message("second", channel=DM, channel_type="im"))

    answers = stack.slack.bot_messages(DM)
    assert len(answers) == 2
    assert "You said: hi in private" in answers[0].text
    assert "You said: second" in answers[1].text
    # Top-level DM answers cannot be streamed (no thread): placeholder, then chat.update.
    assert all(c.params.get("thread_ts") is None for c in stack.slack.called("chat.postMessage"))
    contents = [m["content"] for m in stack.standin.requests[-1]["messages"] if m["role"] == "user"]
    assert contents == ["hi in private", "second"]


async def test_channel_mention_also_delivered_as_message_gets_one_answer(stack: Stack) -> None:
    mention = stack.mention("only once please")
    as_message = dict(mention, type="message", channel_type="channel")
    await stack.deliver(as_message)
    await stack.deliver(mention)

    assert len(stack.slack.thread(CHANNEL, mention["ts"])) == 1
    assert len(stack.standin.requests) == 1


async def test_thread_replies_are_followed_only_when_enabled(
    tmp_path: Any, slack: FakeSlack
) -> None:
    async with make_stack(tmp_path, slack, follow_threads=False) as stack:
        first = stack.mention("start")
        await stack.deliver(first)
        await stack.deliver(stack.message("no mention here", thread_ts=first["ts"]))
        assert len(stack.standin.requests) == 1


async def test_thread_replies_are_followed_when_enabled(tmp_path: Any, slack: FakeSlack) -> None:
    async with make_stack(tmp_path, slack, follow_threads=True) as stack:
        first = stack.mention("start")
        await stack.deliver(first)
        await stack.deliver(stack.message("and a follow-up", thread_ts=first["ts"]))
        answers = slack.bot_messages(CHANNEL, first["ts"])
        assert len(answers) == 2
        assert "You said: and a follow-up" in answers[-1].text

        # A thread the bot never answered is left alone (checked with conversations.replies).
        parent = slack.add_message(CHANNEL, "people talking")
        await stack.deliver(stack.message("just chatting", thread_ts=parent.ts))
        assert slack.called("conversations.replies")
        assert slack.thread(CHANNEL, parent.ts)[-1].bot_id is None
        assert len(stack.standin.requests) == 2
        # Top-level channel messages without a mention are never answered.
        await stack.deliver(stack.message("top level chatter"))
        assert len(stack.standin.requests) == 2


async def test_followed_thread_found_through_conversations_replies(
    tmp_path: Any, slack: FakeSlack
) -> None:
    """After a restart the adapter no longer remembers; Slack's thread history tells it."""
    parent = slack.add_message(CHANNEL, f"<@{slack.bot_user_id}> earlier question")
    slack.add_message(
        CHANNEL, "earlier answer", user=slack.bot_user_id, bot_id=slack.bot_id, thread_ts=parent.ts
    )
    async with make_stack(tmp_path, slack, follow_threads=True) as stack:
        await stack.deliver(stack.message("a follow-up", thread_ts=parent.ts))
        assert "You said: a follow-up" in slack.thread(CHANNEL, parent.ts)[-1].text


# --- what must not be answered ---------------------------------------------------------------


async def test_own_and_other_bot_messages_and_edits_are_ignored(stack: Stack) -> None:
    slack = stack.slack
    own = stack.message(
        "my own words", channel=DM, channel_type="im", user=slack.bot_user_id, bot_id=slack.bot_id
    )
    other_bot = stack.message(
        "beep", channel=DM, channel_type="im", user="UOTHERBOT", bot_id="BOTHER"
    )
    edited = stack.message("changed", channel=DM, channel_type="im", subtype="message_changed")
    deleted = stack.message("", channel=DM, channel_type="im", subtype="message_deleted")
    joined = stack.message("joined", subtype="channel_join")
    for event in (own, other_bot, edited, deleted, joined):
        assert await stack.deliver(event) == 200
    assert stack.standin.requests == []
    assert not slack.called("chat.postMessage") and not slack.called("chat.startStream")


async def test_redeliveries_get_one_answer(stack: Stack) -> None:
    event = stack.mention("answer me once")
    event_id = "Ev0RETRIED"
    for retry in (None, 1, 2, 3):
        assert await stack.deliver(event, event_id=event_id, retry_num=retry) == 200
    assert len(stack.slack.thread(CHANNEL, event["ts"])) == 1
    assert len(stack.standin.requests) == 1


async def test_forged_or_stale_signatures_are_rejected(stack: Stack) -> None:
    body = stack.slack.event_body(stack.mention("let me in"))
    assert await stack.slack.post_event(stack.url, body, secret="not-the-secret") == 401
    stale = int(time.time()) - 60 * 10
    assert await stack.slack.post_event(stack.url, body, timestamp=stale) == 401
    await stack.adapter.drain()
    assert stack.standin.requests == []


# --- files ------------------------------------------------------------------------------------


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


async def test_image_and_text_files_reach_the_model(stack: Stack) -> None:
    slack = stack.slack
    image = slack.add_file("chart.png", PNG, "image/png")
    notes = slack.add_file("notes.txt", b"line one\nline two", "text/plain")
    archive = slack.add_file("data.zip", b"PK..", "application/zip")
    event = stack.message(
        "what is in these?",
        channel=DM,
        channel_type="im",
        subtype="file_share",
        files=[image, notes, archive],
    )
    await stack.deliver(event)

    assert slack.downloads(image) == 1 and slack.downloads(notes) == 1
    assert slack.downloads(archive) == 0
    request = stack.standin.requests[-1]
    user = request["messages"][-1]
    parts = user["content"]
    assert any(
        p["type"] == "image_url" and p["image_url"]["url"].startswith("data:image/png;base64,")
        for p in parts
    )
    text = next(p["text"] for p in parts if p["type"] == "text")
    assert "line one\nline two" in text
    answer = slack.bot_messages(DM)[-1].text
    assert "data.zip was not read" in answer
    assert "(I received 1 image.)" in answer


async def test_oversized_image_is_not_downloaded(tmp_path: Any, slack: FakeSlack) -> None:
    async with make_stack(tmp_path, slack, {"parley_max_image_bytes": 10}) as stack:
        image = slack.add_file("big.png", PNG, "image/png")
        event = stack.mention("look", files=[image])
        await stack.deliver(event)
        assert slack.downloads(image) == 0
        assert "big.png was not read" in answer_text(slack.thread(CHANNEL, event["ts"]))


async def test_long_text_file_is_cut_to_the_limit(tmp_path: Any, slack: FakeSlack) -> None:
    async with make_stack(tmp_path, slack, {"parley_max_text_file_bytes": 8}) as stack:
        notes = slack.add_file("notes.txt", b"line one\nline two", "text/plain")
        event = stack.mention("read this", files=[notes])
        await stack.deliver(event)
        sent = stack.standin.requests[-1]["messages"][-1]["content"]
        assert "line one" in sent and "line two" not in sent
        assert "notes.txt is long" in answer_text(slack.bot_messages(CHANNEL, event["ts"]))


# --- assistant threads and slash commands -------------------------------------------------------


async def test_assistant_thread_gets_prompts_status_and_answer(stack: Stack) -> None:
    slack = stack.slack
    slack.channel_names[CHANNEL] = "general"
    thread_ts = slack.next_ts()
    started = {
        "type": "assistant_thread_started",
        "assistant_thread": {
            "user_id": ALICE,
            "context": {"channel_id": CHANNEL, "team_id": slack.team_id},
            "channel_id": DM,
            "thread_ts": thread_ts,
        },
        "event_ts": thread_ts,
    }
    await stack.deliver(started)
    prompts = slack.called("assistant.threads.setSuggestedPrompts")
    assert len(prompts) == 1 and prompts[0].params["thread_ts"] == thread_ts
    assert len(prompts[0].params["prompts"]) >= 2

    await stack.deliver(
        stack.message("help me out", channel=DM, channel_type="im", thread_ts=thread_ts)
    )
    statuses = [c.params["status"] for c in slack.called("assistant.threads.setStatus")]
    assert statuses == ["is thinking…", ""]
    # The model is told which channel the person has open beside the thread.
    assert "You said: (viewing #general) help me out" in slack.thread(DM, thread_ts)[-1].text
    assert slack.called("chat.startStream")[0].params["thread_ts"] == thread_ts


async def test_assistant_thread_follows_the_channel_the_person_views(stack: Stack) -> None:
    slack = stack.slack
    slack.channel_names.update({CHANNEL: "general", "C0RANDOM": "random"})
    thread_ts = slack.next_ts()

    def thread_event(kind: str, viewing: str | None) -> dict[str, Any]:
        thread: dict[str, Any] = {"user_id": ALICE, "channel_id": DM, "thread_ts": thread_ts}
        if viewing is not None:
            thread["context"] = {"channel_id": viewing, "team_id": slack.team_id}
        return {"type": kind, "assistant_thread": thread, "event_ts": slack.next_ts()}

    async def ask(text: str) -> str:
        await stack.deliver(stack.message(text, channel=DM, channel_type="im", thread_ts=thread_ts))
        request = stack.standin.requests[-1]
        return str([m for m in request["messages"] if m["role"] == "user"][-1]["content"])

    await stack.deliver(thread_event("assistant_thread_started", CHANNEL))
    assert await ask("what is discussed here?") == "(viewing #general) what is discussed here?"
    await stack.deliver(thread_event("assistant_thread_context_changed", "C0RANDOM"))
    assert await ask("and here?") == "(viewing #random) and here?"
    assert await ask("still here?") == "(viewing #random) still here?"
    # Each channel's name was asked once.
    asked = [c.params["channel"] for c in slack.called("conversations.info")]
    assert asked == [CHANNEL, "C0RANDOM"]

    # Viewing nothing Slack can name (no context): the words go as they are; a plain DM too.
    await stack.deliver(thread_event("assistant_thread_context_changed", None))
    assert await ask("now?") == "now?"
    await stack.deliver(stack.message("top level", channel=DM, channel_type="im"))
    assert stack.standin.requests[-1]["messages"][-1]["content"] == "top level"


async def test_slash_commands_answer_through_the_response_url(stack: Stack) -> None:
    slack = stack.slack
    assert await slack.post_command(stack.url, "/parley", "help") == 200
    await stack.adapter.drain()
    assert await slack.post_command(stack.url, "/parley", "temperature 0.3") == 200
    await stack.adapter.drain()
    assert await slack.post_command(stack.url, "/parley", "temperature hot") == 200
    await stack.adapter.drain()

    responses = slack.called("response_url")
    assert [r.params["response_type"] for r in responses] == [
        "ephemeral",
        "in_channel",
        "ephemeral",
    ]
    assert "Parley commands" in responses[0].params["text"]
    assert "Temperature set to 0.3" in responses[1].params["text"]
    assert "not a number" in responses[2].params["text"]

    # The setting applies to the channel's conversations.
    await stack.deliver(stack.mention("hello"))
    assert stack.standin.requests[-1]["temperature"] == pytest.approx(0.3)


async def test_slash_summarize_reads_the_channel(stack: Stack) -> None:
    slack = stack.slack
    slack.add_message(CHANNEL, "we decided to ship on friday", user="UBOB")
    slack.add_message(CHANNEL, "ok, I will write the notes", user=ALICE)
    await slack.post_command(stack.url, "/parley", "summarize 10")
    await stack.adapter.drain()
    responses = slack.called("response_url")
    assert len(responses) == 1 and responses[0].params["response_type"] == "in_channel"
    sent = stack.standin.requests[-1]["messages"][-1]["content"]
    assert "UBOB: we decided to ship on friday" in sent


async def test_slash_summarize_reads_the_last_n_messages(stack: Stack) -> None:
    slack = stack.slack
    slack.add_message(CHANNEL, "an old remark", user="UBOB")
    slack.add_message(CHANNEL, "we decided to ship on friday", user="UBOB")
    slack.add_message(CHANNEL, "ok, I will write the notes", user=ALICE)
    # "summarise" (an alias) with a count, as typed after /parley.
    await slack.post_command(stack.url, "/parley", "summarise 2")
    await stack.adapter.drain()
    assert int(slack.called("conversations.history")[-1].params["limit"]) == 2
    assert slack.called("response_url")[-1].params["response_type"] == "in_channel"
    sent = stack.standin.requests[-1]["messages"][-1]["content"]
    assert "UBOB: we decided to ship on friday" in sent and "ALICE: ok" in sent
    assert "an old remark" not in sent
    # Without a count: the last 50.
    await slack.post_command(stack.url, "/parley", "summarize")
    await stack.adapter.drain()
    assert int(slack.called("conversations.history")[-1].params["limit"]) == 50
    assert "an old remark" in stack.standin.requests[-1]["messages"][-1]["content"]


async def test_slash_summarize_says_when_the_channel_cannot_be_read(stack: Stack) -> None:
    slack = stack.slack
    slack.fail("conversations.history", "not_in_channel")
    await slack.post_command(stack.url, "/parley", "summarize")
    await stack.adapter.drain()
    response = slack.called("response_url")[-1].params
    assert response["response_type"] == "ephemeral"
    assert "not_in_channel" in response["text"] and "/invite @parley" in response["text"]
    assert stack.standin.requests == []


async def test_slash_reset_in_a_channel_says_how_to_reset_a_thread(stack: Stack) -> None:
    await stack.slack.post_command(stack.url, "/parley", "reset")
    await stack.adapter.drain()
    response = stack.slack.called("response_url")[-1].params
    assert response["response_type"] == "ephemeral"
    assert "top-level conversation" in response["text"]
    assert "`@parley reset` in that thread" in response["text"]


async def test_slash_reset_in_a_dm_forgets_the_dm_conversation(stack: Stack) -> None:
    await stack.deliver(stack.message("remember banana", channel=DM, channel_type="im"))
    await stack.slack.post_command(stack.url, "/parley", "reset", channel=DM)
    await stack.adapter.drain()
    text = stack.slack.called("response_url")[-1].params["text"]
    assert "forgot this conversation (2 messages)" in text
    assert "`@parley reset` in that thread" in text
    await stack.deliver(stack.message("what fruit?", channel=DM, channel_type="im"))
    request = stack.standin.requests[-1]
    assert [m["content"] for m in request["messages"] if m["role"] == "user"] == ["what fruit?"]


# --- failures -------------------------------------------------------------------------------------


async def test_model_failure_is_a_clear_message_in_the_thread(stack: Stack) -> None:
    event = stack.mention("break please [[fault:server_error]]")
    await stack.deliver(event)
    replies = stack.slack.thread(CHANNEL, event["ts"])
    assert len(replies) == 1
    assert replies[0].text.startswith(WARNING_MARK)
    assert not any(m.streaming for m in replies)


async def test_model_failure_replaces_the_placeholder(edit_stack: Stack) -> None:
    edit_stack.standin.inject("server_error")
    event = edit_stack.mention("break please")
    await edit_stack.deliver(event)
    replies = edit_stack.slack.thread(CHANNEL, event["ts"])
    assert len(replies) == 1
    assert replies[0].text.startswith(WARNING_MARK)
    assert THINKING not in replies[0].text


async def test_assistant_status_is_cleared_when_the_answer_fails(stack: Stack) -> None:
    thread_ts = stack.slack.next_ts()
    event = stack.message(
        "fail [[fault:server_error]]", channel=DM, channel_type="im", thread_ts=thread_ts
    )
    await stack.deliver(event)
    statuses = [c.params["status"] for c in stack.slack.called("assistant.threads.setStatus")]
    assert statuses == ["is thinking…", ""]
    assert stack.slack.bot_messages(DM, thread_ts)[-1].text.startswith(WARNING_MARK)


async def test_broken_model_stream_leaves_no_open_stream(stack: Stack) -> None:
    event = stack.mention("a long one [[fault:cut_stream:5]] " + "word " * 40)
    await stack.deliver(event)
    replies = stack.slack.thread(CHANNEL, event["ts"])
    assert replies and not any(m.streaming for m in replies)
    assert replies[-1].text.startswith(WARNING_MARK)


async def test_rate_limited_update_is_retried_after_retry_after(edit_stack: Stack) -> None:
    slack = edit_stack.slack
    slack.rate_limit("chat.update", times=2, retry_after=0)
    slack.rate_limit("chat.postMessage", times=1, retry_after=0)
    # Slow enough to be shown while it grows: posted first, then edited.
    edit_stack.standin.latency = 0.03
    event = edit_stack.mention("still complete?")
    await edit_stack.deliver(event)
    updates = slack.called("chat.update")
    assert [c.status for c in updates[:2]] == [429, 429]
    assert updates[-1].ok
    assert [c.status for c in slack.called("chat.postMessage")[:2]] == [429, 200]
    assert len(slack.bot_messages(CHANNEL, event["ts"])) == 1
    assert "You said: still complete?" in slack.thread(CHANNEL, event["ts"])[-1].text


async def test_rate_limited_stream_start_is_retried(stack: Stack) -> None:
    slack = stack.slack
    slack.rate_limit("chat.startStream", times=1, retry_after=0)
    event = stack.mention("hurry")
    await stack.deliver(event)
    starts = slack.called("chat.startStream")
    assert [c.status for c in starts] == [429, 200]
    replies = slack.thread(CHANNEL, event["ts"])
    assert len(replies) == 1 and "You said: hurry" in replies[0].text


LONG_QUESTION = "tell me about " + " ".join(f"word{n}" for n in range(30))


async def test_failed_intermediate_update_does_not_end_the_answer(stack: Stack) -> None:
    slack = stack.slack
    slack.fail("chat.update", "internal_error", times=1)
    stack.standin.latency = 0.03  # an answer growing for a while: several snapshots
    # A top-level DM answer: a placeholder, then chat.update for every snapshot.
    await stack.deliver(stack.message(LONG_QUESTION, channel=DM, channel_type="im"))
    updates = slack.called("chat.update")
    assert updates[0].error == "internal_error" and len(updates) >= 2
    answers = slack.bot_messages(DM)
    assert len(answers) == 1
    assert answers[0].text.endswith("word29")
    assert THINKING not in answers[0].text and WARNING_MARK not in answers[0].text


async def test_failed_stream_append_does_not_end_the_answer(stack: Stack) -> None:
    slack = stack.slack
    stack.standin.latency = 0.02  # every chunk is a snapshot of its own
    slack.fail("chat.appendStream", "internal_error", times=1)
    slack.fail("chat.update", "internal_error", times=1)
    event = stack.mention(LONG_QUESTION)
    await stack.deliver(event)
    assert slack.called("chat.appendStream")[0].error == "internal_error"
    replies = slack.thread(CHANNEL, event["ts"])
    assert len(replies) == 1 and not replies[0].streaming
    assert replies[0].text.endswith("word29") and WARNING_MARK not in replies[0].text


async def test_failed_final_update_is_posted_as_a_new_message(stack: Stack) -> None:
    slack = stack.slack
    slack.fail("chat.update", "internal_error", times=99)
    await stack.deliver(stack.message(LONG_QUESTION, channel=DM, channel_type="im"))
    answers = slack.bot_messages(DM)
    assert len(answers) == 1 and answers[0].text.endswith("word29")
    assert slack.called("chat.delete")  # the placeholder
    assert THINKING not in answers[0].text


async def test_failed_final_write_and_repost_are_logged(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    slack = stack.slack
    slack.fail("chat.update", "internal_error", times=99)
    slack.fail("chat.postMessage", "internal_error", times=99, after=1)  # after the placeholder
    with caplog.at_level(logging.INFO, logger="parley.slack"):
        event = stack.message("a confidential question", channel=DM, channel_type="im")
        assert await stack.deliver(event) == 200
    assert "posting the final answer failed too (internal_error)" in caplog.text
    assert "confidential" not in caplog.text


async def test_database_error_while_claiming_gets_an_apology(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(platform: str, event_id: str, **_: object) -> bool:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(stack.parley.service, "claim_event", broken)
    monkeypatch.setattr(stack.parley.store, "claim_turn", broken)  # the claim a turn makes
    event = stack.mention("a confidential question")
    with caplog.at_level(logging.INFO, logger="parley.slack"):
        assert await stack.deliver(event) == 200
    replies = stack.slack.thread(CHANNEL, event["ts"])
    assert len(replies) == 1 and replies[0].text == failure_text(GENERIC_ERROR)
    assert stack.standin.requests == []
    # The core claims the message, and says why it could not.
    assert "failed" in caplog.text and "RuntimeError" in caplog.text
    assert "confidential" not in caplog.text
    # A command typed in a mention gets the same apology, once.
    command = stack.mention("usage", thread_ts=event["ts"])
    assert await stack.deliver(command) == 200
    ephemeral = stack.slack.called("chat.postEphemeral")
    assert len(ephemeral) == 1 and GENERIC_ERROR in ephemeral[0].params["text"]


async def test_database_error_on_a_new_assistant_thread_still_suggests_prompts(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(platform: str, event_id: str, **_: object) -> bool:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(stack.parley.service, "claim_event", broken)
    thread_ts = stack.slack.next_ts()
    started = {
        "type": "assistant_thread_started",
        "assistant_thread": {"user_id": ALICE, "channel_id": DM, "thread_ts": thread_ts},
        "event_ts": thread_ts,
    }
    assert await stack.deliver(started) == 200
    assert len(stack.slack.called("assistant.threads.setSuggestedPrompts")) == 1


# --- shutdown -------------------------------------------------------------------------------------


async def test_stop_refuses_new_events_and_lets_answers_finish(stack: Stack) -> None:
    slack = stack.slack
    stack.standin.latency = 0.05
    event = stack.mention(LONG_QUESTION)
    assert await stack.post(event) == 200
    await slack.wait_for(lambda: slack.called("chat.startStream"))

    stopping = asyncio.create_task(stack.adapter.stop())
    await asyncio.sleep(0)  # stop() has begun
    late = stack.mention("too late")
    raw = json.dumps(slack.event_body(late))
    headers = {"content-type": "application/json", **slack.signed_headers(raw)}
    refused = await stack.adapter.app.async_dispatch(AsyncBoltRequest(body=raw, headers=headers))
    assert refused.status == 503  # not acked: Slack delivers it again
    await stopping

    replies = slack.thread(CHANNEL, event["ts"])
    assert len(replies) == 1 and not replies[0].streaming
    assert replies[0].text.endswith("word29")
    assert slack.thread(CHANNEL, late["ts"]) == [] and len(stack.standin.requests) == 1


async def test_stop_cuts_a_stalled_answer_and_leaves_no_placeholder(stack: Stack) -> None:
    slack = stack.slack
    stack.adapter.stop_grace = 0.2
    await stack.post(
        stack.message("[[fault:stall:30]] still there?", channel=DM, channel_type="im")
    )
    await slack.wait_for(lambda: slack.called("chat.postMessage"))
    await stack.adapter.stop()
    answers = slack.bot_messages(DM)
    assert len(answers) == 1
    assert answers[0].text == failure_text(RESTARTED)


async def test_stop_cuts_a_streaming_answer_and_closes_the_stream(stack: Stack) -> None:
    slack = stack.slack
    stack.adapter.stop_grace = 0.2
    stack.standin.latency = 0.5
    event = stack.mention(LONG_QUESTION)
    await stack.post(event)
    await slack.wait_for(lambda: slack.called("chat.startStream"))
    await stack.adapter.stop()
    replies = slack.thread(CHANNEL, event["ts"])
    assert len(replies) == 2 and not any(m.streaming for m in replies)
    assert replies[0].text.startswith("(offline stand-in model)")
    assert not replies[0].text.endswith("word29")
    assert replies[1].text == failure_text(RESTARTED)


# --- what reaches Slack: broadcast mentions, message length --------------------------------------

BROADCASTS = ("<!here", "<!channel", "<!everyone")
# What a person typing "<!here>" literally sends: Slack escapes it, and Parley gives the model
# "<!here>", which the stand-in echoes back in its answer.
TYPED_BROADCASTS = "ping &lt;!here&gt; &lt;!channel|all&gt; &lt;!everyone&gt; or [all](!everyone)"


def sent_bodies(slack: FakeSlack) -> str:
    return json.dumps([call.params for call in slack.calls], ensure_ascii=False)


@pytest.mark.parametrize("path", ["stream", "edit", "dm"])
async def test_broadcast_mentions_in_answers_never_reach_slack(
    path: str, stack: Stack, edit_stack: Stack
) -> None:
    s = edit_stack if path == "edit" else stack
    s.standin.latency = 0.03  # shown while it grows too, not only when it is whole
    if path == "dm":
        event = s.message(TYPED_BROADCASTS, channel=DM, channel_type="im")
    else:
        event = s.mention(TYPED_BROADCASTS)
    await s.deliver(event)
    # The model got (and the stand-in echoed) the mentions; people see them, nobody is pinged.
    assert "ping <!here> <!channel|all>" in s.standin.requests[-1]["messages"][-1]["content"]
    shown = s.slack.bot_messages(DM) if path == "dm" else s.slack.thread(CHANNEL, event["ts"])
    assert "You said: ping &lt;!here" in shown[-1].text
    written = s.slack.called("chat.startStream" if path == "stream" else "chat.update")
    assert written and written[-1].ok
    sent = sent_bodies(s.slack)
    assert "here" in sent and not any(mention in sent for mention in BROADCASTS)


async def test_broadcast_mentions_in_command_replies_never_reach_slack(stack: Stack) -> None:
    slack = stack.slack
    # Through response_url: the system prompt shown back.
    await slack.post_command(stack.url, "/parley", "system <!here> <!everyone> be loud")
    await stack.adapter.drain()
    await slack.post_command(stack.url, "/parley", "system")
    await stack.adapter.drain()
    assert "be loud" in slack.called("response_url")[-1].params["text"]
    # chat.postMessage: the same, asked in a thread; chat.postEphemeral: an error quoting it.
    first = stack.mention("hello")
    await stack.deliver(first)
    await stack.deliver(stack.mention("system", thread_ts=first["ts"]))
    assert "be loud" in slack.called("chat.postMessage")[-1].params["text"]
    await stack.deliver(stack.mention("!model &lt;!channel&gt;", thread_ts=first["ts"]))
    assert "not a valid model name" in slack.called("chat.postEphemeral")[-1].params["text"]
    sent = sent_bodies(slack)
    assert not any(mention in sent for mention in BROADCASTS)


# Grows by a third or more when escaped for Slack ("&" is "&amp;" there, "<" "&lt;").
HEAVY_ANSWER = "\n\n".join(
    [
        "Compare a && b <with> c >> d & e; " * 14,
        "```python\n" + "if a < b and c > d and e & f:\n    x = y << 2\n" * 40 + "```",
        "<<>>&&" * 400,
    ]
    * 3
)
_FENCES = re.compile(r"^\s*```[^\n]*$", re.MULTILINE)


def _content(text: str) -> str:
    """What the pieces must carry between them: the text without fence lines, white space and
    the characters Slack escapes (escaped or not; a piece may start with ">", which mrkdwn shows
    as a quote)."""
    text = re.sub(r"&(amp|lt|gt);", "", _FENCES.sub("", text))
    return re.sub(r"[\s<>&]+", "", text)


async def _heavy_events() -> AsyncIterator[ReplyEvent]:
    yield Accepted()
    for start in range(0, len(HEAVY_ANSWER), 250):
        yield TextDelta(HEAVY_ANSWER[start : start + 250])
    yield FinalText(HEAVY_ANSWER, "gpt-4o")


@pytest.mark.parametrize("stream", [True, False])
async def test_every_message_fits_slack_after_escaping(stack: Stack, stream: bool) -> None:
    slack = stack.slack
    parent = slack.add_message(CHANNEL, "<@UPARLEYBOT> something long")
    target = ReplyTarget(CHANNEL, parent.ts, slack.team_id, ALICE)
    answer = SlackAnswer(stack.adapter.client, target, stream=stream)
    done = await deliver(_heavy_events(), answer, Interval(0))
    assert done.outcome == "answered"

    for call in slack.calls:
        for field in ("text", "markdown_text"):
            assert len(str(call.params.get(field) or "")) <= 3900
    replies = slack.thread(CHANNEL, parent.ts)
    assert len(replies) >= 4 and not any(m.streaming for m in replies)
    assert all(len(m.text) <= 3900 for m in replies)
    shown = "".join(m.text for m in replies)
    assert _content(shown) == _content(HEAVY_ANSWER)
    if stream:  # streamed pieces are only ever appended to
        # (past Slack's chat.startStream budget, further pieces are posted and edited instead)
        streamed = {m.ts for m in replies if m.markdown}
        assert streamed
        assert not [c for c in slack.called("chat.update") if c.params["ts"] in streamed]


# --- redelivery, summaries, the runtime protocol ----------------------------------------------------


async def test_a_redelivered_message_writes_nothing_when_editing(edit_stack: Stack) -> None:
    slack = edit_stack.slack
    await edit_stack.deliver(edit_stack.mention("first: streaming turns out unavailable"))
    event = edit_stack.mention("answer me once")
    for retry in (None, 1):
        await edit_stack.deliver(event, event_id="Ev0RETRIED", retry_num=retry)
    placeholders = [c for c in slack.called("chat.postMessage") if c.params["text"] == THINKING]
    assert len(placeholders) == 1
    assert len(slack.thread(CHANNEL, event["ts"])) == 1


async def test_a_command_delivered_twice_runs_once(stack: Stack) -> None:
    first = stack.mention("hello")
    await stack.deliver(first)
    reset = stack.mention("reset", thread_ts=first["ts"])
    await stack.deliver(reset)
    await stack.deliver(dict(reset, type="message", channel_type="channel"), retry_num=1)
    await stack.deliver(reset, retry_num=2)
    posted = stack.slack.called("chat.postMessage")
    assert len(posted) == 1 and "forgot this conversation" in posted[0].params["text"]


async def test_summarize_in_a_thread_reads_the_thread(stack: Stack) -> None:
    slack = stack.slack
    first = stack.mention("we should ship on friday")
    await stack.deliver(first)
    slack.add_message(CHANNEL, "agreed, friday it is", user="UBOB", thread_ts=first["ts"])
    slack.add_message(CHANNEL, "unrelated channel talk", user="UBOB")
    await stack.deliver(stack.mention("!summarize 2", thread_ts=first["ts"]))
    assert slack.called("conversations.replies")[-1].params["ts"] == first["ts"]
    sent = stack.standin.requests[-1]["messages"][-1]["content"]
    assert "UBOB: agreed, friday it is" in sent and "Parley:" in sent
    assert "UALICE" not in sent and "summarize" not in sent  # only the last 2, not the command
    assert "unrelated" not in sent


async def test_summarize_at_the_top_of_a_channel_reads_the_channel(stack: Stack) -> None:
    slack = stack.slack
    slack.add_message(CHANNEL, "an old remark", user="UBOB")
    slack.add_message(CHANNEL, "we decided to ship on friday", user="UBOB")
    await stack.deliver(stack.mention("!summarise 1"))
    assert int(slack.called("conversations.history")[-1].params["limit"]) == 2
    sent = stack.standin.requests[-1]["messages"][-1]["content"]
    assert sent == "UBOB: we decided to ship on friday"


async def test_summarize_at_the_top_of_a_dm_reads_the_stored_conversation(stack: Stack) -> None:
    slack = stack.slack
    await stack.deliver(stack.message("remember banana", channel=DM, channel_type="im"))
    await stack.deliver(stack.message("summarize", channel=DM, channel_type="im"))
    await slack.post_command(stack.url, "/parley", "summarize 5", channel=DM)
    await stack.adapter.drain()
    assert not slack.called("conversations.history") and not slack.called("conversations.replies")
    for request in stack.standin.requests[-2:]:
        assert "remember banana" in request["messages"][-1]["content"]
    assert "Summary" in slack.called("response_url")[-1].params["text"]


async def test_the_adapter_runs_through_the_runtime_protocol(stack: Stack) -> None:
    assert stack.adapter.name == "slack"
    waiting = asyncio.create_task(stack.adapter.wait_failed())
    done, _ = await asyncio.wait({waiting}, timeout=0.05)
    assert not done  # Slack reconnects by itself: it never fails for good on its own
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
