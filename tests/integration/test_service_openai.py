"""The core end to end: real openai client, the stand-in server, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import select

from bots.bootstrap import build
from core.messages import (
    Author,
    ConversationKey,
    FinalText,
    Inbound,
    TextDelta,
    UsageReport,
    UserError,
)
from core.pricing import cost_usd
from core.settings import DEFAULT_PRICES, Settings
from core.store.models import MessageRow
from tests.conftest import upgraded


@pytest.fixture
async def parley(database_url, standin):
    await upgraded(database_url)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        openai_base_url=standin.base_url,
        openai_api_key="test-key",
        openai_timeout=2.0,
        openai_max_retries=1,
    )
    parley = await build(settings)
    yield parley
    await parley.close()


DEFAULT_KEY = ConversationKey("test", "w", "c")


async def ask(parley, text, key=DEFAULT_KEY, user="u1"):
    return [e async for e in parley.service.answer(Inbound(key, Author(user, user), text))]


async def test_streamed_answer_usage_and_ledger(parley, standin):
    standin.latency = 0.02  # the chunks arrive apart, as a model writes them
    events = await ask(parley, "What is Parley?")
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    final = next(e for e in events if isinstance(e, FinalText))
    usage = next(e for e in events if isinstance(e, UsageReport))
    assert len(deltas) > 1 and "".join(deltas) == final.text
    assert "offline stand-in" in final.text and "What is Parley?" in final.text
    body = standin.requests[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.cost_usd == pytest.approx(
        cost_usd("gpt-4o", usage.input_tokens, usage.output_tokens, DEFAULT_PRICES)
    )
    reply = await parley.service.command(ConversationKey("test", "w", "c"), Author("u1"), "usage")
    assert f"{usage.input_tokens:,} input" in reply.text


async def test_fallback_model_answers_when_first_is_missing(parley, standin):
    key = ConversationKey("test", "w", "fallback")
    await parley.service.command(key, Author("u1"), "model", "missing-model")
    events = await ask(parley, "hello", key=key)
    final = next(e for e in events if isinstance(e, FinalText))
    assert final.model == "gpt-4o-mini"
    assert [r["model"] for r in standin.requests[-2:]] == ["missing-model", "gpt-4o-mini"]


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("server_error", "model_unavailable"),
        ("rate_limit:0", "rate_limited"),
        ("quota", "quota"),
        ("stall:5", "timeout"),
        ("cut_stream", "broken_stream"),
        ("content_filter", "refused"),
    ],
)
async def test_faults_become_clear_messages_and_nothing_partial_is_stored(
    parley, standin, fault, code
):
    key = ConversationKey("test", "w", f"fault-{code}")
    events = await ask(parley, f"please answer [[fault:{fault}]]", key=key)
    assert isinstance(events[-1], UserError), events
    assert events[-1].code == code and len(events[-1].text) > 20
    assert "Traceback" not in events[-1].text
    state = await parley.store.conversation(key)
    assert await parley.store.recent_messages(state.id, 0, 10**12, 10) == []
    async with parley.store.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(MessageRow.role, MessageRow.status).where(
                    MessageRow.conversation_id == state.id
                )
            )
        ).all()
    # the question stays on record, out of the context; no answer is stored
    assert [tuple(r) for r in rows] == [("user", "failed")]


async def test_json_mode_round_trip_and_repair(parley, standin):
    key = ConversationKey("test", "w", "json")
    await parley.service.command(key, Author("u1"), "json", "on")
    events = await ask(parley, "list three colours", key=key)
    final = next(e for e in events if isinstance(e, FinalText))
    body = final.text.removeprefix("```json\n").removesuffix("\n```")
    assert isinstance(json.loads(body), dict)
    assert standin.requests[-1]["response_format"] == {"type": "json_object"}
    standin.inject("invalid_json", times=1)
    events = await ask(parley, "again please", key=key)
    assert any(isinstance(e, FinalText) for e in events)
    standin.inject("invalid_json", times=2)
    events = await ask(parley, "and again", key=key)
    assert isinstance(events[-1], UserError) and events[-1].code == "invalid_json"


async def test_history_persists_across_restart(database_url, standin):
    await upgraded(database_url)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        openai_base_url=standin.base_url,
        openai_api_key="k",
    )
    key = ConversationKey("test", "w", "restart")
    first = await build(settings)
    await ask(first, "remember the word pineapple", key=key)
    await first.close()
    second = await build(settings)
    try:
        await ask(second, "what was the word?", key=key)
    finally:
        await second.close()
    sent = json.dumps(standin.requests[-1]["messages"])
    assert "pineapple" in sent


async def test_fifty_conversations_and_twenty_messages_into_one(parley, standin):
    keys = [ConversationKey("test", "w", f"conc-{i}") for i in range(50)]
    runs = await asyncio.gather(*(ask(parley, f"hello from {k.channel}", key=k) for k in keys))
    for key, events in zip(keys, runs, strict=True):
        finals = [e for e in events if isinstance(e, FinalText)]
        assert len(finals) == 1 and key.channel in finals[0].text
    one = ConversationKey("test", "w", "busy")
    runs = await asyncio.gather(*(ask(parley, f"message {i}", key=one) for i in range(20)))
    assert all(sum(isinstance(e, FinalText) for e in events) == 1 for events in runs)
    state = await parley.store.conversation(one)
    turns = list(reversed(await parley.store.recent_messages(state.id, 0, 10**12, 100)))
    assert len(turns) == 40
    assert [t.role for t in turns] == ["user", "assistant"] * 20
    for user_turn, answer in zip(turns[::2], turns[1::2], strict=True):
        assert user_turn.content in answer.content
