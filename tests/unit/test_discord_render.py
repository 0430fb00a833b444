"""Rendering the core's reply events as Discord messages: edits, overflow, errors, notices."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest

from adapters.discord.render import EMPTY_ANSWER, GrowingAnswer, render_answer
from core.messages import FinalText, Notice, ReplyEvent, TextDelta, UsageReport, UserError


class RecordingSurface:
    """A Discord stand-in that keeps the messages' current text and every write."""

    def __init__(self, forbid_after: int | None = None) -> None:
        self.messages: list[str] = []
        self.writes: list[tuple[str, int]] = []
        self.forbid_after = forbid_after
        self.attempted = asyncio.Event()  # set at the first write, even a refused one

    def _check(self) -> None:
        self.attempted.set()
        if self.forbid_after is not None and len(self.writes) >= self.forbid_after:
            raise discord.Forbidden(
                _Response(403),  # type: ignore[arg-type]
                {"message": "Missing Permissions", "code": 50013},
            )

    async def post(self, text: str) -> None:
        self._check()
        self.messages.append(text)
        self.writes.append(("post", len(self.messages) - 1))

    async def edit(self, index: int, text: str) -> None:
        self._check()
        self.messages[index] = text
        self.writes.append(("edit", index))


class _Response:
    def __init__(self, status: int) -> None:
        self.status = status
        self.reason = "Forbidden"


async def _events(*events: ReplyEvent) -> AsyncIterator[ReplyEvent]:
    for event in events:
        yield event


async def test_short_answer_grows_in_one_message() -> None:
    surface = RecordingSurface()
    shown = await render_answer(
        _events(TextDelta("Hel"), TextDelta("lo"), FinalText("Hello", "gpt-4o")),
        surface,
        interval=0.0,
    )
    assert shown and surface.messages == ["Hello"]
    assert surface.writes[0] == ("post", 0)
    assert all(kind == "edit" for kind, _ in surface.writes[1:])


async def test_long_answer_overflows_into_new_messages() -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "word " * 60 for i in range(40))
    surface = RecordingSurface()
    deltas = [TextDelta(text[i : i + 500]) for i in range(0, len(text), 500)]
    await render_answer(_events(*deltas, FinalText(text, "gpt-4o")), surface, interval=0.0)
    assert len(surface.messages) > 3
    assert all(len(m) <= 2000 for m in surface.messages)
    assert " ".join(" ".join(surface.messages).split()) == " ".join(text.split())


async def test_nothing_is_posted_for_a_redelivered_event() -> None:
    surface = RecordingSurface()
    assert not await render_answer(_events(), surface, interval=0.0)
    assert surface.writes == []


async def test_error_before_any_text_is_the_message() -> None:
    surface = RecordingSurface()
    await render_answer(
        _events(Notice("big.bin was not read"), UserError("The model is busy.", "rate_limited")),
        surface,
        interval=0.0,
    )
    assert surface.messages == ["⚠️ The model is busy.\n\n-# big.bin was not read"]


async def test_error_after_partial_text_is_a_new_message() -> None:
    surface = RecordingSurface()
    await render_answer(
        _events(TextDelta("partial answer"), UserError("The stream broke.", "broken_stream")),
        surface,
        interval=0.0,
    )
    assert surface.messages == ["partial answer", "⚠️ The stream broke."]


async def test_notices_follow_the_answer() -> None:
    surface = RecordingSurface()
    await render_answer(
        _events(
            Notice("notes.pdf was not read"),
            FinalText("Answer", "gpt-4o"),
            UsageReport("gpt-4o", 10, 2, 0.0),
        ),
        surface,
        interval=0.0,
    )
    assert surface.messages == ["Answer\n\n-# notes.pdf was not read"]


async def test_forbidden_write_drains_the_answer_then_raises() -> None:
    surface = RecordingSurface(forbid_after=0)
    drained: list[Any] = []

    async def events() -> AsyncIterator[ReplyEvent]:
        # Gated: nothing after the first delta exists until the refused write has happened,
        # so only a renderer that keeps reading after the refusal drains the whole answer.
        drained.append("a")
        yield TextDelta("a")
        await surface.attempted.wait()
        for event in (TextDelta("b"), FinalText("ab", "gpt-4o")):
            await asyncio.sleep(0)
            drained.append(event)
            yield event

    with pytest.raises(discord.Forbidden):
        await render_answer(events(), surface, interval=0.0)
    assert len(drained) == 3, "the core's answer runs to the end, so the turn is stored"
    assert surface.writes == []


@pytest.mark.parametrize("blank", ["", "   ", " \n\t\n "])
async def test_blank_answer_still_shows_something(blank: str) -> None:
    surface = RecordingSurface()
    shown = await render_answer(
        _events(TextDelta(blank), FinalText(blank, "gpt-4o")), surface, interval=0.0
    )
    assert shown and surface.messages == [EMPTY_ANSWER]


async def test_blank_answer_keeps_its_notices() -> None:
    surface = RecordingSurface()
    await render_answer(
        _events(Notice("big.bin was not read"), FinalText("  ", "gpt-4o")), surface, interval=0.0
    )
    assert surface.messages == [f"{EMPTY_ANSWER}\n\n-# big.bin was not read"]


async def test_unchanged_pieces_are_not_edited_again() -> None:
    surface = RecordingSurface()
    answer = GrowingAnswer(surface, limit=100)
    await answer.show("first paragraph " * 5)
    await answer.show("first paragraph " * 5 + "\n\nsecond " * 20)
    before = list(surface.writes)
    await answer.show("first paragraph " * 5 + "\n\nsecond " * 20)
    assert surface.writes == before
