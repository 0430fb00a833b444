"""SlackReply against a stub Web API client: what ends up in Slack when writes fail, and that an
answer never stays "Thinking…"."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.render import THINKING, ReplyTarget, SlackReply

EMPTY_ANSWER = "_(empty answer)_"
THREAD = ReplyTarget("C1", "100.0", "T1", "UALICE")
DM_TOP = ReplyTarget("D1", None, "T1", "UALICE")


@dataclass
class StubSlack:
    """Records Web API calls; ``failing[method]`` calls of ``method`` fail next."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    failing: dict[str, int] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    _ts: Any = field(default_factory=lambda: itertools.count(1))

    def called(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == method]

    def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
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
        if not method.startswith("chat_"):
            raise AttributeError(method)

        async def call(**params: Any) -> dict[str, Any]:
            return self._call(method, params)

        return call


def reply_for(stub: StubSlack, target: ReplyTarget, *, stream: bool) -> SlackReply:
    return SlackReply(cast(AsyncWebClient, stub), target, stream=stream)


@pytest.mark.parametrize("answer", ["", "   ", " \n\n\t "])
async def test_blank_final_answer_replaces_the_placeholder(answer: str) -> None:
    stub = StubSlack()
    reply = reply_for(stub, DM_TOP, stream=False)
    await reply.begin()
    await reply.show(answer)
    await reply.finish(answer)
    assert list(stub.texts.values()) == [EMPTY_ANSWER]
    assert reply.finished


async def test_blank_final_answer_is_streamed_and_closed() -> None:
    stub = StubSlack()
    reply = reply_for(stub, THREAD, stream=True)
    await reply.begin()
    await reply.finish("  \n ")
    assert stub.called("chat_startStream")[0]["markdown_text"] == EMPTY_ANSWER
    assert stub.called("chat_stopStream")


async def test_failed_intermediate_update_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    stub = StubSlack(failing={"chat_update": 1})
    reply = reply_for(stub, DM_TOP, stream=False)
    await reply.begin()
    await reply.show("The secret plan is")
    await reply.show("The secret plan is to ship")
    await reply.finish("The secret plan is to ship on Friday.")
    assert list(stub.texts.values()) == ["The secret plan is to ship on Friday."]
    assert len(stub.called("chat_update")) == 3
    assert "internal_error" in caplog.text and "secret" not in caplog.text


async def test_failed_stream_append_is_skipped() -> None:
    stub = StubSlack(failing={"chat_appendStream": 1, "chat_update": 1})
    reply = reply_for(stub, THREAD, stream=True)
    await reply.begin()
    await reply.show("one")
    await reply.show("one two")
    await reply.show("one two three")
    await reply.finish("one two three four")
    assert list(stub.texts.values()) == ["one two three four"]
    assert not stub.called("chat_postMessage")


async def test_failed_final_update_is_posted_anew_and_the_placeholder_deleted() -> None:
    stub = StubSlack(failing={"chat_update": 99})
    reply = reply_for(stub, DM_TOP, stream=False)
    await reply.begin()
    await reply.show("partial")
    await reply.finish("the whole answer")
    assert list(stub.texts.values()) == ["the whole answer"]
    assert stub.called("chat_delete")
    assert reply.finished


async def test_failed_final_write_and_repost_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    stub = StubSlack(failing={"chat_update": 99})
    reply = reply_for(stub, DM_TOP, stream=False)
    await reply.begin()
    stub.failing["chat_postMessage"] = 99
    with caplog.at_level(logging.WARNING, logger="parley.slack"):
        await reply.finish("the whole answer")
    assert "posting the final answer failed too (internal_error)" in caplog.text
    assert "whole answer" not in caplog.text
    assert reply.finished


async def test_failure_after_a_failed_placeholder_edit_leaves_no_placeholder() -> None:
    stub = StubSlack(failing={"chat_update": 99})
    reply = reply_for(stub, DM_TOP, stream=False)
    await reply.begin()
    await reply.show("partial")
    await reply.fail("Parley was restarted while answering; please ask again.")
    assert THINKING not in stub.texts.values()
    assert list(stub.texts.values()) == [
        ":warning: Parley was restarted while answering; please ask again."
    ]
