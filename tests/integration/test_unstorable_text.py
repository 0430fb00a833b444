"""Text no database column takes (NUL, lone surrogates) is cleaned on the way in, on SQLite and
on PostgreSQL, wherever it comes from: the message, its author, the thread, a setting, the model."""

from __future__ import annotations

from bots.bootstrap import build
from core.messages import Author, ConversationKey, FinalText, Inbound
from core.settings import Settings
from core.store.models import storable
from tests.conftest import upgraded
from tests.fakes.memory import ScriptedModel

HOSTILE = "nul\x00here \ud800 and\x00\x00 done"


def test_storable_drops_nul_and_replaces_lone_surrogates():
    assert storable(HOSTILE) == "nulhere \ufffd and done"
    assert storable("plain ünïcode 🦜") == "plain ünïcode 🦜"


async def test_a_message_full_of_nul_bytes_is_answered_and_stored(database_url):
    await upgraded(database_url)
    model = ScriptedModel(reply=lambda r: f"echo {r.messages[-1].text} \x00end")
    parley = await build(Settings(_env_file=None, database_url=database_url), llm=model)
    key = ConversationKey("test", "w\x00", "c\x00", "t\x00")
    author = Author("u\x00", "al\x00ice")
    try:
        reply = await parley.service.command(key, author, "system", f"be terse {HOSTILE}")
        assert reply.ok, reply.text
        inbound = Inbound(key, author, HOSTILE, event_id="ev\x00")
        events = [e async for e in parley.service.answer(inbound)]
        assert any(isinstance(e, FinalText) for e in events), events
        state = await parley.store.conversation(key)
        turns = await parley.store.recent_messages(state.id, 0, 10**12, 10)
        assert [t.content for t in reversed(turns)] == [
            storable(HOSTILE),
            storable(f"echo {HOSTILE} \x00end"),
        ]
        # the same key, cleaned the same way, finds the same conversation and its setting
        config = await parley.service.channel_config(key.channel_key)
        assert config.system_prompt == storable(f"be terse {HOSTILE}")
        again = [e async for e in parley.service.answer(inbound)]
        assert again == []  # the redelivery is recognised despite the NUL in its id
        follow_up = [e async for e in parley.service.answer(Inbound(key, author, "and?"))]
        assert any(isinstance(e, FinalText) for e in follow_up)
        assert storable(HOSTILE) in [m.text for m in model.requests[-1].messages]
    finally:
        await parley.close()
