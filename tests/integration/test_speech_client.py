"""``OpenAIChat.speak``: the real openai client against the stand-in's speech endpoint, both
ways it answers (the audio itself for tts-1, server-sent events with tokens otherwise)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.standin.server import StandinServer
from adapters.standin.speech import silent_mp3
from core import sentences
from core.errors import RateLimited
from core.llm import OpenAIChat
from core.ports import SpeechRequest
from core.pricing import STANDIN_MODEL
from core.settings import Settings


@pytest.fixture
async def standin() -> AsyncIterator[StandinServer]:
    async with StandinServer() as server:
        yield server


def client(base_url: str) -> OpenAIChat:
    settings = Settings(_env_file=None, openai_base_url=base_url, openai_max_retries=0)
    return OpenAIChat.from_settings(settings)


async def test_tts_1_answers_audio_and_reports_no_tokens(standin: StandinServer) -> None:
    chat = client(standin.base_url)
    try:
        spoken = await chat.speak(SpeechRequest("Hello there.", "tts-1", "nova", "opus"))
    finally:
        await chat.close()
    assert spoken.audio == silent_mp3()
    assert spoken.audio_format == "mp3"  # named by what came back, not by what was asked
    assert (spoken.model, spoken.input_tokens, spoken.output_tokens) == ("tts-1", None, None)
    (body,) = standin.speech_requests
    assert "stream_format" not in body and body["response_format"] == "opus"


async def test_token_billed_models_get_their_tokens_from_the_events(
    standin: StandinServer,
) -> None:
    chat = client(standin.base_url)
    try:
        spoken = await chat.speak(SpeechRequest("Hello there.", "gpt-4o-mini-tts", "alloy"))
    finally:
        await chat.close()
    assert spoken.audio == silent_mp3()
    assert spoken.input_tokens and spoken.output_tokens and spoken.output_tokens > 0
    assert standin.speech_requests[0]["stream_format"] == "sse"


async def test_a_rate_limited_speech_call_gets_the_usual_sentence(standin: StandinServer) -> None:
    standin.inject("rate_limit", retry_after=2)
    chat = client(standin.base_url)
    try:
        with pytest.raises(RateLimited) as caught:
            await chat.speak(SpeechRequest("Hello.", "gpt-4o-mini-tts", "alloy"))
    finally:
        await chat.close()
    assert caught.value.user_message == sentences.model_rate_limited(2.0)


async def test_the_offline_stand_in_speaks_as_itself_at_no_cost() -> None:
    async with StandinServer(model_name=STANDIN_MODEL) as offline:
        chat = client(offline.base_url)
        try:
            spoken = await chat.speak(SpeechRequest("Hi.", "gpt-4o-mini-tts", "alloy"))
        finally:
            await chat.close()
    assert spoken.model == STANDIN_MODEL
