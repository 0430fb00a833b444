"""A stalled model behind the real openai client is noticed at the first-token deadline."""

from __future__ import annotations

from sqlalchemy import select

from bots.bootstrap import build
from core import sentences
from core.messages import Author, ConversationKey, FinalText, Inbound, UserError
from core.settings import Settings
from core.store import schema
from core.store.models import MessageRow
from core.store.sql import make_engine


async def test_a_stalled_model_fails_the_turn_with_a_clear_sentence(database_url, standin):
    engine = make_engine(database_url)
    await schema.upgrade(engine)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        openai_base_url=standin.base_url,
        openai_api_key="test-key",
        openai_timeout=60,
        openai_max_retries=2,
        parley_first_token_timeout=0.5,
    )
    parley = await build(settings)
    key = ConversationKey("test", "w", "stalled")
    try:
        standin.inject("stall", seconds=30)
        inbound = Inbound(key, Author("u1"), "are you there?")
        events = [e async for e in parley.service.answer(inbound)]
        assert events[-1] == UserError(sentences.model_stalled(0.5), "timeout")
        assert not any(isinstance(e, FinalText) for e in events)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(MessageRow.role, MessageRow.status))).all()
        assert [tuple(r) for r in rows] == [("user", "failed")]
        # the next question is answered as usual
        events = [e async for e in parley.service.answer(Inbound(key, Author("u1"), "again?"))]
        assert any(isinstance(e, FinalText) for e in events)
    finally:
        await parley.close()
        await engine.dispose()
