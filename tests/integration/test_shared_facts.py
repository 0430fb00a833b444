"""Two workers on one database: what one changes (a channel's settings and memory, a reset)
reaches the next turn the other answers, though that worker plans its turns with what it
read before (PostgreSQL checks them in the statement that stores the question)."""

from __future__ import annotations

from typing import Any

import pytest

from bots.bootstrap import Parley, build
from core.messages import Attachment, Author, ConversationKey, FinalText, Inbound
from core.ports import ChatRequest
from core.settings import Settings
from tests.conftest import upgraded
from tests.fakes.memory import ScriptedModel

KEY = ConversationKey("test", "w", "c", "thread")
ADA = Author("U1", "Ada")
PICTURE = Attachment("cat.png", "image/png", b"\x89PNG fake", "image")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def workers(url: str) -> Any:
    await upgraded(url)
    model = ScriptedModel(reply=lambda r: f"answer to {r.messages[-1].text}")
    settings = Settings(_env_file=None, database_url=url)
    parleys = [await build(settings, llm=model) for _ in range(2)]
    yield model, parleys[0], parleys[1]
    for parley in parleys:
        await parley.close()


async def _ask(parley: Parley, model: ScriptedModel, text: str, **more: Any) -> ChatRequest:
    inbound = Inbound(KEY, ADA, text, **more)
    events = [e async for e in parley.service.answer(inbound)]
    assert any(isinstance(e, FinalText) for e in events), events
    return model.requests[-1]


async def _command(parley: Parley, name: str, args: str = "") -> None:
    reply = await parley.service.command(KEY, ADA, name, args)
    assert reply.ok, reply.text


async def test_settings_changed_by_another_worker_reach_the_next_turn(workers):
    model, first, second = workers
    await _ask(first, model, "q1")
    asked = await _ask(first, model, "q2")  # planned with the facts the first turn read
    assert asked.model == "gpt-4o" and "pirate" not in asked.messages[0].text

    await _command(second, "system", "You are a pirate.")
    asked = await _ask(first, model, "q3")
    assert asked.messages[0].text.startswith("You are a pirate.")
    assert [m.text for m in asked.messages[1:]] == [
        "q1",
        "answer to q1",
        "q2",
        "answer to q2",
        "q3",
    ]

    await _command(second, "remember", "The deploy day is Friday.")
    asked = await _ask(first, model, "q4")
    assert "The deploy day is Friday." in asked.messages[0].text

    await _command(second, "model", "gpt-3.5-turbo")
    asked = await _ask(first, model, "q5")
    assert asked.model == "gpt-3.5-turbo"


async def test_a_question_planned_for_the_old_model_is_stored_as_the_new_one_reads_it(workers):
    model, first, second = workers
    await _ask(first, model, "q1")
    await _command(second, "model", "gpt-3.5-turbo")  # no image input on this model
    asked = await _ask(first, model, "look", attachments=(PICTURE,))
    assert asked.model == "gpt-3.5-turbo"
    assert asked.messages[-1].text == "look" and not asked.messages[-1].images
    state = await first.store.conversation(KEY)
    stored = await first.store.recent_messages(state.id, 0, 0, 10)
    assert [t.content for t in reversed(stored)] == ["q1", "answer to q1", "look", "answer to look"]


async def test_a_reset_by_another_worker_empties_the_next_turns_history(workers):
    model, first, second = workers
    await _ask(first, model, "q1")
    await _ask(first, model, "q2")
    await _command(second, "reset")
    asked = await _ask(first, model, "q3")
    assert [m.text for m in asked.messages[1:]] == ["q3"]
    asked = await _ask(first, model, "q4")
    assert [m.text for m in asked.messages[1:]] == ["q3", "answer to q3", "q4"]
