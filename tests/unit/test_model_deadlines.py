"""The core's deadlines on the model: a stalled or endless answer ends in a clear sentence."""

from __future__ import annotations

import asyncio

from core import sentences
from core.messages import Author, ConversationKey, FinalText, Inbound, TextDelta, UserError
from core.service import ConversationService
from core.settings import Settings
from tests.fakes.memory import MemoryStore, ScriptedModel

KEY = ConversationKey("test", "w1", "deadlines")


class Stalling(ScriptedModel):
    """Sends ``before`` words, then waits ``pause`` seconds (a stalled connection) each time."""

    def __init__(self, before: int, pause: float) -> None:
        super().__init__()
        self.before, self.pause = before, pause
        self.closed = False

    async def stream(self, request):
        try:
            for i in range(self.before):
                yield f"word{i} "
            while True:
                await asyncio.sleep(self.pause)
                yield "late "
        finally:
            self.closed = True


def service(model, **settings) -> tuple[ConversationService, MemoryStore]:
    store = MemoryStore()
    return ConversationService(store, model, Settings(_env_file=None, **settings)), store


async def answer(service: ConversationService, text: str = "hello") -> list:
    return [e async for e in service.answer(Inbound(KEY, Author("u1"), text))]


async def test_no_first_token_ends_with_the_stalled_sentence_and_a_failed_turn():
    model = Stalling(before=0, pause=3600)
    core, store = service(model, parley_first_token_timeout=0.05)
    events = await answer(core)
    assert events[-1] == UserError(sentences.model_stalled(0.05), "timeout")
    assert not any(isinstance(e, FinalText) for e in events)
    assert [(m.role, m.status) for m in store.messages] == [("user", "failed")]
    assert model.closed  # the model call was ended, not left running


async def test_an_answer_past_the_whole_deadline_is_stopped_after_its_first_words():
    model = Stalling(before=2, pause=0.02)
    core, store = service(model, parley_first_token_timeout=5, parley_answer_timeout=0.3)
    events = await answer(core)
    assert [e.text for e in events if isinstance(e, TextDelta)][:2] == ["word0 ", "word1 "]
    assert events[-1] == UserError(sentences.answer_too_slow(0.3), "timeout")
    assert [(m.role, m.status) for m in store.messages] == [("user", "failed")]
    assert model.closed


async def test_the_deadline_times_the_model_not_the_reader():
    """A slow consumer between items (a platform write) does not count against the model."""

    class Steady(ScriptedModel):
        async def stream(self, request):
            async for item in super().stream(request):
                await asyncio.sleep(0.01)
                yield item

    core, _ = service(Steady(reply=lambda r: "one two three"), parley_answer_timeout=0.3)
    events = []
    async for event in core.answer(Inbound(KEY, Author("u1"), "hi")):
        events.append(event)
        await asyncio.sleep(0.15)
    assert isinstance(events[-2], FinalText) and events[-2].text == "one two three"


async def test_summaries_are_under_the_same_deadline():
    model = Stalling(before=0, pause=3600)
    core, _ = service(model, parley_first_token_timeout=0.05)
    reply = await core.command(KEY, Author("u1"), "summarize", transcript="a: hi\nb: hello")
    assert not reply.ok and reply.text == sentences.model_stalled(0.05)
