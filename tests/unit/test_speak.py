"""``speak`` and feedback in the core, on the in-memory fakes; the text an answer is read from;
the stand-in's MP3 frames."""

from __future__ import annotations

import pytest

from adapters.standin.speech import MP3_FRAME_BYTES, MP3_FRAME_HEADER, silent_mp3
from core import sentences
from core.errors import RateLimited
from core.messages import Author, ConversationKey, Inbound
from core.pricing import DEFAULT_PRICES, speech_cost_usd
from core.service import ConversationService
from core.settings import Settings
from core.speech import MAX_SPEECH_CHARS, spoken_text
from tests.fakes.memory import MemoryStore, ScriptedModel

KEY = ConversationKey("test", "w1", "c1")
ALICE = Author("u1", "alice")


def make(
    reply: str = "ok", **settings: object
) -> tuple[ConversationService, MemoryStore, ScriptedModel]:
    store = MemoryStore()
    model = ScriptedModel(reply=lambda _request: reply)
    return ConversationService(store, model, Settings(_env_file=None, **settings)), store, model


async def ask(service: ConversationService, text: str = "hi") -> None:
    async for _ in service.answer(Inbound(KEY, ALICE, text)):
        pass


async def test_speak_reads_the_last_answer_and_charges_it_by_character():
    service, store, model = make(
        "The **answer** is [here](https://x.example).", parley_tts_model="tts-1"
    )
    await ask(service)
    reply = await service.command(KEY, ALICE, "speak")
    assert reply.ok and not reply.private
    assert reply.audio is not None and reply.audio.name == "parley-answer.mp3"
    assert reply.audio.mime_type == "audio/mpeg"
    (request,) = model.speeches
    assert request.text == "The answer is here." and request.voice == "alloy"
    spoken = store.usage[-1]
    assert spoken.model == "tts-1"
    assert spoken.cost_usd == pytest.approx(len("The answer is here.") * 15 / 1_000_000)
    assert "$0.00028" in reply.text


async def test_a_token_priced_model_without_reported_tokens_is_recorded_unpriced():
    service, store, _ = make("words")
    await ask(service)
    reply = await service.command(KEY, ALICE, "speak")
    assert reply.audio is not None and "price unknown" in reply.text
    assert store.usage[-1].cost_usd is None and store.usage[-1].estimated


async def test_speak_without_an_answer_says_so_and_calls_nothing():
    service, store, model = make()
    reply = await service.command(KEY, ALICE, "speak")
    assert not reply.ok and reply.text == sentences.NOTHING_TO_SPEAK and reply.audio is None
    assert not model.speeches and not store.usage


async def test_a_long_answer_is_cut_to_the_endpoint_limit_with_a_note():
    service, _, model = make("word " * 2000)
    await ask(service)
    reply = await service.command(KEY, ALICE, "speak")
    assert len(model.speeches[0].text) <= MAX_SPEECH_CHARS
    assert sentences.speech_cut(MAX_SPEECH_CHARS) in reply.text


async def test_a_failed_speech_call_gets_the_models_sentence_and_costs_nothing():
    service, store, model = make()
    await ask(service)
    charged = len(store.usage)
    model.failures.append(RateLimited(sentences.model_rate_limited(3)))
    reply = await service.command(KEY, ALICE, "speak")
    assert not reply.ok and reply.text == sentences.model_rate_limited(3)
    assert len(store.usage) == charged


async def test_usage_counts_the_feedback_on_the_channels_answers():
    service, _, _ = make()
    channel = KEY.channel_key
    assert await service.feedback(channel, "1.1", "u1", helpful=True) == sentences.FEEDBACK_RECORDED
    await service.feedback(channel, "1.1", "u2", helpful=False)
    await service.feedback(channel, "1.1", "u2", helpful=True)  # changed their mind
    await service.feedback(channel, "2.2", "u3", helpful=False)
    reply = await service.command(KEY, ALICE, "usage")
    assert sentences.feedback_line(2, 1) in reply.text
    quiet, _, _ = make()
    assert "Feedback" not in (await quiet.command(KEY, ALICE, "usage")).text


def test_spoken_text_keeps_the_words_and_cuts_at_a_word():
    text, cut = spoken_text("# Title\n- **bold** item\n> quoted `code`\n```py\nx = 1\n```")
    assert (text, cut) == ("Title\nbold item\nquoted code\n\nx = 1", False)
    long, cut = spoken_text("abc " * 2000, limit=10)
    assert cut and long == "abc abc"


def test_speech_prices_by_character_or_by_reported_tokens_never_a_guess():
    assert speech_cost_usd("tts-1-hd", 1000, None, DEFAULT_PRICES) == pytest.approx(0.03)
    tokens = speech_cost_usd("gpt-4o-mini-tts", 10, (100, 600), DEFAULT_PRICES)
    assert tokens == pytest.approx((100 * 0.6 + 600 * 12.0) / 1_000_000)
    assert speech_cost_usd("gpt-4o-mini-tts", 10, None, DEFAULT_PRICES) is None
    assert speech_cost_usd("someone-elses-tts", 10, (1, 1), DEFAULT_PRICES) is None


def test_the_stand_ins_audio_is_a_chain_of_whole_mp3_frames():
    audio = silent_mp3()
    assert len(audio) % MP3_FRAME_BYTES == 0
    for start in range(0, len(audio), MP3_FRAME_BYTES):
        header = audio[start : start + 4]
        assert header == MP3_FRAME_HEADER
        bitrate = (header[2] >> 4) * 16_000  # MPEG-1 Layer III index 9 is 128 kbit/s
        assert bitrate == 144_000 and 144 * 128_000 // 44_100 == MP3_FRAME_BYTES
