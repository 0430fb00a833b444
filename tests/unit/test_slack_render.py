"""SlackAnswer (the Slack Renderer) against a stub Web API client: what ends up in Slack when
writes fail, that an answer never stays "Thinking…", and that nothing is written before the
core accepted the message."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.budget import WriteDeferred
from adapters.slack.render import FEEDBACK_ACTION, THINKING, ReplyTarget, SlackAnswer
from core.delivery import Interval, deliver
from core.messages import Accepted, FinalText, ReplyEvent, TextDelta
from core.sentences import EMPTY_ANSWER, RESTARTED, answer_text, failure_text

THREAD = ReplyTarget("C1", "100.0", "T1", "UALICE")
DM_TOP = ReplyTarget("D1", None, "T1", "UALICE")


@dataclass
class StubSlack:
    """Records Web API calls; ``failing[method]`` calls of ``method`` fail next."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    failing: dict[str, int] = field(default_factory=dict)
    # Methods whose write budget has no room: they raise WriteDeferred, as BudgetedWebClient.
    deferring: set[str] = field(default_factory=set)
    texts: dict[str, str] = field(default_factory=dict)
    _ts: Any = field(default_factory=lambda: itertools.count(1))

    def called(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == method]

    def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method in self.deferring:
            raise WriteDeferred(method)
        self.calls.append((method, params))
        if self.failing.get(method, 0) > 0:
            self.failing[method] -= 1
            raise SlackApiError("failed", {"ok": False, "error": "internal_error"})  # type: ignore[no-untyped-call]
        text = str(params.get("text") or params.get("markdown_text") or "")
        if method in {"chat_postMessage", "chat_startStream"}:
            ts = f"200.{next(self._ts)}"
            self.texts[ts] = text
            return {"ok": True, "ts": ts}
        ts = str(params.get("ts"))
        if method == "chat_update":
            self.texts[ts] = text
        elif method in {"chat_appendStream", "chat_stopStream"}:
            self.texts[ts] = self.texts.get(ts, "") + text
        elif method == "chat_delete":
            self.texts.pop(ts, None)
        return {"ok": True, "ts": ts}

    def __getattr__(self, method: str) -> Any:
        if not method.startswith(("chat_", "assistant_")):
            raise AttributeError(method)

        async def call(**params: Any) -> dict[str, Any]:
            return self._call(method, params)

        return call


def reply_for(
    stub: StubSlack, target: ReplyTarget, *, stream: bool, status: bool = False
) -> SlackAnswer:
    return SlackAnswer(cast(AsyncWebClient, stub), target, stream=stream, status=status)


async def events(*items: ReplyEvent) -> AsyncIterator[ReplyEvent]:
    for item in items:
        yield item


@pytest.mark.parametrize("answer", ["", "   ", " \n\n\t "])
async def test_blank_final_answer_replaces_the_placeholder(answer: str) -> None:
    stub = StubSlack()
    reply = reply_for(stub, DM_TOP, stream=False)
    done = await deliver(
        events(Accepted(), TextDelta(answer), FinalText(answer, "m")), reply, Interval(0)
    )
    assert done.outcome == "answered"
    assert list(stub.texts.values()) == [EMPTY_ANSWER]
    assert reply.finished


async def test_blank_final_answer_is_streamed_and_closed() -> None:
    stub = StubSlack()
    reply = reply_for(stub, THREAD, stream=True)
    await deliver(events(Accepted(), FinalText("  \n ", "m")), reply, Interval(0))
    assert stub.called("chat_startStream")[0]["markdown_text"] == EMPTY_ANSWER
    assert stub.called("chat_stopStream")


@pytest.mark.parametrize("stream", [True, False])
async def test_a_redelivered_message_writes_nothing(stream: bool) -> None:
    """The core yields nothing for a message it already answered: no placeholder, no status."""
    stub = StubSlack()
    target = ReplyTarget("D1", "100.0", "T1", "UALICE")
    done = await deliver(events(), reply_for(stub, target, stream=stream, status=True), Interval(0))
    assert done.outcome == "nothing"
    assert stub.calls == []


async def test_placeholder_and_status_come_when_the_core_accepts() -> None:
    stub = StubSlack()
    target = ReplyTarget("D1", "100.0", "T1", "UALICE")
    reply = reply_for(stub, target, stream=False, status=True)
    await reply.start()
    assert [name for name, _ in stub.calls] == ["assistant_threads_setStatus", "chat_postMessage"]
    assert stub.called("chat_postMessage")[0]["text"] == THINKING
    await reply.finish("done")
    statuses = [c["status"] for c in stub.called("assistant_threads_setStatus")]
    assert statuses == ["is thinking…", ""]
    assert list(stub.texts.values()) == ["done"]


async def test_the_status_is_cleared_when_the_answer_fails() -> None:
    stub = StubSlack()
    target = ReplyTarget("D1", "100.0", "T1", "UALICE")
    reply = reply_for(stub, target, stream=True, status=True)
    await reply.start()
    await reply.fail(failure_text("The model is busy."))
    statuses = [c["status"] for c in stub.called("assistant_threads_setStatus")]
    assert statuses == ["is thinking…", ""]
    assert list(stub.texts.values()) == [failure_text("The model is busy.")]


async def test_notes_follow_the_answer() -> None:
    stub = StubSlack()
    reply = reply_for(stub, DM_TOP, stream=False)
    await reply.start()
    await reply.finish(answer_text("the answer", ["big.png was not read"]))
    assert list(stub.texts.values()) == ["the answer\n\n_big.png was not read_"]


async def test_failed_intermediate_update_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    stub = StubSlack(failing={"chat_update": 1})
    reply = reply_for(stub, DM_TOP, stream=False)
    await reply.start()
    await reply.progress("The secret plan is")
    await reply.progress("The secret plan is to ship")
    await reply.finish("The secret plan is to ship on Friday.")
    assert list(stub.texts.values()) == ["The secret plan is to ship on Friday."]
    assert len(stub.called("chat_update")) == 3
    assert "internal_error" in caplog.text and "secret" not in caplog.text


async def test_failed_stream_append_is_skipped() -> None:
    stub = StubSlack(failing={"chat_appendStream": 1, "chat_update": 1})
    reply = reply_for(stub, THREAD, stream=True)
    await reply.start()
    await reply.progress("one")
    await reply.progress("one two")
    await reply.progress("one two three")
    await reply.finish("one two three four")
    assert list(stub.texts.values()) == ["one two three four"]
    assert not stub.called("chat_postMessage")


async def test_failed_final_update_is_posted_anew_and_the_placeholder_deleted() -> None:
    stub = StubSlack(failing={"chat_update": 99})
    reply = reply_for(stub, DM_TOP, stream=False)
    await reply.start()
    await reply.progress("partial")
    await reply.finish("the whole answer")
    assert list(stub.texts.values()) == ["the whole answer"]
    assert stub.called("chat_delete")
    assert reply.finished


async def test_a_deferred_final_edit_posts_that_piece_and_the_next_anew_in_order() -> None:
    """chat.update has no room: the pieces from the first one that needs an edit are posted
    anew, in order, the feedback buttons on the last; the replaced message is deleted (later,
    through ``later``); a piece already final stays where it is."""
    stub = StubSlack()
    cleanups: list[Coroutine[Any, Any, None]] = []
    reply = SlackAnswer(
        cast(AsyncWebClient, stub),
        THREAD,
        stream=False,
        limit=60,
        feedback=True,
        later=cleanups.append,
    )
    await reply.start()
    words = [f"word{n:02d}" for n in range(20)]
    await reply.progress(" ".join(words[:5]))
    assert len(stub.texts) == 1  # the placeholder shows the first words
    stub.deferring.add("chat_update")
    await reply.finish(" ".join(words))
    posts = stub.called("chat_postMessage")
    assert posts[0]["text"] == THINKING and len(posts) == 4
    assert not stub.called("chat_delete")  # not yet: the answer is whole already
    assert len(stub.texts) == 4
    for cleanup in cleanups:
        await cleanup
    assert [c["ts"] for c in stub.called("chat_delete")] == ["200.1"]
    assert " ".join(stub.texts.values()).split() == words and len(stub.texts) == 3
    assert [bool(p.get("blocks")) for p in posts[1:]] == [False, False, True]
    assert posts[-1]["blocks"][-1]["block_id"] == FEEDBACK_ACTION


async def test_a_deferred_final_edit_that_only_adds_the_buttons_leaves_no_copy() -> None:
    """The whole answer is shown already (its last write came before the model had ended):
    with no room for chat.update it stays as it is, without buttons, never posted twice."""
    stub = StubSlack()
    reply = SlackAnswer(cast(AsyncWebClient, stub), THREAD, stream=False, feedback=True)
    await reply.start()
    await reply.progress("the whole answer")
    stub.deferring.add("chat_update")
    await reply.finish("the whole answer")
    assert list(stub.texts.values()) == ["the whole answer"]
    assert len(stub.called("chat_postMessage")) == 1 and not stub.called("chat_delete")
    assert reply.finished


async def test_a_deferred_final_edit_of_a_later_piece_keeps_the_first() -> None:
    stub = StubSlack()
    reply = SlackAnswer(cast(AsyncWebClient, stub), THREAD, stream=False, limit=40)
    await reply.start()
    words = [f"word{n:02d}" for n in range(10)]
    await reply.progress(" ".join(words[:8]))
    assert len(stub.texts) == 2  # the first piece is final, the second grows
    stub.deferring.add("chat_update")
    await reply.finish(" ".join(words))
    assert [c["ts"] for c in stub.called("chat_delete")] == ["200.2"]
    shown = list(stub.texts.values())
    assert " ".join(shown).split() == words and len(shown) == 3
    assert next(iter(stub.texts)) == "200.1"  # the first piece, final already, stays


async def test_failed_final_write_and_repost_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    stub = StubSlack(failing={"chat_update": 99})
    reply = reply_for(stub, DM_TOP, stream=False)
    await reply.start()
    stub.failing["chat_postMessage"] = 99
    with caplog.at_level(logging.WARNING, logger="parley.slack"):
        await reply.finish("the whole answer")
    assert "posting the final answer failed too (internal_error)" in caplog.text
    assert "whole answer" not in caplog.text
    assert reply.finished


async def test_failure_after_a_failed_placeholder_edit_leaves_no_placeholder() -> None:
    stub = StubSlack(failing={"chat_update": 99})
    reply = reply_for(stub, DM_TOP, stream=False)
    await reply.start()
    await reply.progress("partial")
    await reply.fail(failure_text(RESTARTED))
    assert THINKING not in stub.texts.values()
    assert list(stub.texts.values()) == [failure_text(RESTARTED)]


async def test_an_answer_cut_by_shutdown_ends_with_the_restart_sentence() -> None:
    """deliver calls ``fail`` before the cancellation goes on: no placeholder stays."""
    stub = StubSlack()
    reply = reply_for(stub, DM_TOP, stream=False)
    stalled = asyncio.Event()

    async def stalling() -> AsyncIterator[ReplyEvent]:
        yield Accepted()
        yield TextDelta("partial")
        stalled.set()
        await asyncio.Event().wait()
        yield FinalText("never", "m")  # pragma: no cover

    task = asyncio.create_task(deliver(stalling(), reply, Interval(0)))
    await stalled.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(stub.texts.values()) == ["partial", failure_text(RESTARTED)]
    assert reply.finished


@pytest.mark.parametrize("stream", [True, False])
async def test_broadcast_mentions_never_reach_slack(stream: bool) -> None:
    """Also when a mention arrives split across two deltas."""
    stub = StubSlack()
    reply = reply_for(stub, THREAD, stream=stream)
    answer = ["Hi <", "!here> and <!channel|all> and <!ever", "yone> [x](!here)"]
    deltas = [TextDelta(piece) for piece in answer]
    await deliver(events(Accepted(), *deltas, FinalText("".join(answer), "m")), reply, Interval(0))
    sent = repr(stub.calls)
    assert "<!here" not in sent and "<!channel" not in sent and "<!everyone" not in sent
    assert "here" in "".join(stub.texts.values())
