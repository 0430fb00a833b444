"""An answer cancelled mid-stream (the user pressed Ctrl-C, or shutdown) leaves a history the
model can read: the interrupted question is kept on record but out of the next request."""

from __future__ import annotations

import asyncio

from core.delivery import Interval, deliver
from core.messages import Author, ConversationKey, Inbound
from core.ports import ChatRequest, Completion
from core.service import ConversationService
from core.settings import Settings
from tests.fakes.memory import MemoryStore

KEY = ConversationKey("test", "w1", "c1")
ALICE = Author("u1", "alice")


class HangingModel:
    """Answers "echo <text>"; a question containing "hang" streams one word, then waits."""

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []
        self.streaming = asyncio.Event()

    async def stream(self, request: ChatRequest):
        self.requests.append(request)
        text = f"echo {request.messages[-1].text}"
        if "hang" in text:
            yield "partial"
            self.streaming.set()
            await asyncio.Event().wait()
        yield text
        yield Completion(text, request.model, 10, 2, "stop")

    async def close(self) -> None:
        return None


class Shown:
    """A renderer that keeps what it was given."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    async def start(self) -> None: ...

    async def progress(self, text: str) -> None: ...

    async def finish(self, text: str) -> None: ...

    async def fail(self, text: str) -> None:
        self.failed.append(text)


async def test_cancelled_answer_marks_the_question_cut_and_the_next_request_alternates():
    store, model = MemoryStore(), HangingModel()
    service = ConversationService(store, model, Settings(_env_file=None))
    shown = Shown()
    task = asyncio.create_task(
        deliver(service.answer(Inbound(KEY, ALICE, "first")), shown, Interval(0))
    )
    assert (await task).outcome == "answered"
    task = asyncio.create_task(
        deliver(service.answer(Inbound(KEY, ALICE, "please hang")), shown, Interval(0))
    )
    await asyncio.wait_for(model.streaming.wait(), 5)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the delivery was not cancelled")
    assert [(m.role, m.status) for m in store.messages] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("user", "cut"),
    ]
    assert (
        await deliver(service.answer(Inbound(KEY, ALICE, "next")), shown, Interval(0))
    ).outcome == "answered"
    roles = [m.role for m in model.requests[-1].messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert model.requests[-1].messages[-1].text == "next"
