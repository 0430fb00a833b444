"""Voice answers and feedback buttons on Slack: real slack_bolt/slack_sdk in HTTP mode, the real
core on SQLite, the fake Slack and the stand-in OpenAI server (speech endpoint included)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.slack.render import FEEDBACK_ACTION
from adapters.standin.speech import MP3_FRAME_HEADER
from core import sentences
from core.messages import ChannelKey
from tests.fakes.slack_server import FakeSlack
from tests.integration.test_slack_http import ALICE, CHANNEL, Stack, make_stack


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def stack(tmp_path: Any, slack: FakeSlack) -> AsyncIterator[Stack]:
    async with make_stack(tmp_path, slack) as s:
        yield s


async def test_speak_in_a_thread_uploads_the_last_answer_read_aloud(stack: Stack) -> None:
    first = stack.mention("tell me about **owls**")
    await stack.deliver(first)
    await stack.deliver(stack.mention("speak", thread_ts=first["ts"]))

    slack = stack.slack
    asked = slack.called("files.getUploadURLExternal")
    assert len(asked) == 1 and asked[0].ok
    completed = slack.called("files.completeUploadExternal")
    assert len(completed) == 1 and completed[0].ok
    assert completed[0].params["channel_id"] == CHANNEL
    assert completed[0].params["thread_ts"] == first["ts"]
    shared = [m for m in slack.thread(CHANNEL, first["ts"]) if m.files]
    assert len(shared) == 1
    (file,) = shared[0].files
    assert file["filename"] == "parley-answer.mp3"
    assert file["data"].startswith(MP3_FRAME_HEADER)
    assert "read aloud" in shared[0].text
    # what was read: the answer's words, without its Markdown marks
    spoken = stack.standin.speech_requests[-1]
    assert "owls" in spoken["input"] and "**" not in spoken["input"]
    assert spoken["model"] == "gpt-4o-mini-tts" and spoken["voice"] == "alloy"
    # charged: the chat answer, then the speech call with the tokens the server reported
    usage = await stack.parley.store.channel_usage(ChannelKey("slack", slack.team_id, CHANNEL))
    assert usage.turns == 2
    assert usage.unpriced_calls == 0 and usage.estimated_calls == 0


async def test_speak_before_any_answer_says_so_and_uploads_nothing(stack: Stack) -> None:
    assert await stack.slack.post_command(stack.url, "/parley", "speak") == 200
    await stack.adapter.drain()

    assert not stack.slack.called("files.getUploadURLExternal")
    (response,) = stack.slack.called("response_url")
    assert sentences.NOTHING_TO_SPEAK in response.params["text"]
    assert "@parley speak" in response.params["text"]  # answers live in threads here
    assert response.params["response_type"] == "ephemeral"


async def test_speak_with_a_missing_speech_model_says_so(tmp_path: Any, slack: FakeSlack) -> None:
    async with make_stack(tmp_path, slack, {"parley_tts_model": "missing-tts"}) as s:
        first = s.mention("hello")
        await s.deliver(first)
        await s.deliver(s.mention("speak", thread_ts=first["ts"]))
        assert not slack.called("files.completeUploadExternal")
        (said,) = slack.called("chat.postEphemeral")
        assert "PARLEY_TTS_MODEL" in said.params["text"]
        usage = await s.parley.store.channel_usage(ChannelKey("slack", slack.team_id, CHANNEL))
        assert usage.turns == 1  # the answer only: a failed speech call costs nothing


async def test_feedback_buttons_are_recorded_and_counted_in_usage(stack: Stack) -> None:
    event = stack.mention("rate this answer")
    await stack.deliver(event)
    (answer,) = stack.slack.thread(CHANNEL, event["ts"])
    assert answer.blocks is not None
    ids = [e["action_id"] for b in answer.blocks for e in b.get("elements", [])]
    assert ids == [f"{FEEDBACK_ACTION}_up", f"{FEEDBACK_ACTION}_down"]

    slack = stack.slack
    assert await slack.post_action(stack.url, answer, f"{FEEDBACK_ACTION}_up") == 200
    assert await slack.post_action(stack.url, answer, f"{FEEDBACK_ACTION}_down", user="UBOB") == 200
    # a second click by the same person replaces the first
    assert await slack.post_action(stack.url, answer, f"{FEEDBACK_ACTION}_up", user="UBOB") == 200
    await stack.adapter.drain()

    channel = ChannelKey("slack", slack.team_id, CHANNEL)
    assert await stack.parley.store.channel_feedback(channel) == (2, 0)
    thanks = slack.called("chat.postEphemeral")
    assert len(thanks) == 3 and thanks[0].params["text"] == sentences.FEEDBACK_RECORDED
    assert thanks[0].params["user"] == ALICE

    await slack.post_command(stack.url, "/parley", "usage")
    await stack.adapter.drain()
    (usage,) = slack.called("response_url")
    assert "👍 2, 👎 0" in usage.params["text"]


async def test_a_forged_feedback_click_is_refused(stack: Stack) -> None:
    event = stack.mention("rate this answer")
    await stack.deliver(event)
    (answer,) = stack.slack.thread(CHANNEL, event["ts"])
    status = await stack.slack.post_action(
        stack.url, answer, f"{FEEDBACK_ACTION}_up", secret="not-the-secret"
    )
    await stack.adapter.drain()
    assert status == 401
    channel = ChannelKey("slack", stack.slack.team_id, CHANNEL)
    assert await stack.parley.store.channel_feedback(channel) == (0, 0)


async def test_answers_shown_by_editing_carry_the_buttons_under_their_text(
    tmp_path: Any,
) -> None:
    async with FakeSlack(streaming=False) as fake, make_stack(tmp_path, fake) as s:
        event = s.mention("hello there")
        await s.deliver(event)
        (answer,) = fake.thread(CHANNEL, event["ts"])
        assert answer.blocks is not None
        assert answer.blocks[0]["type"] == "section"
        assert "You said: hello there" in answer.blocks[0]["text"]["text"]
        assert answer.blocks[-1]["block_id"] == FEEDBACK_ACTION
