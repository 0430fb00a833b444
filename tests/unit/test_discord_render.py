"""Discord's renderer under ``core.delivery.deliver``: edits, overflow, errors, notes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest

from adapters.discord.layout import MessageLayout, open_fence
from adapters.discord.render import DiscordAnswer
from core import sentences
from core.delivery import Interval, deliver
from core.messages import (
    Accepted,
    FinalText,
    Notice,
    ReplyEvent,
    TextDelta,
    UsageReport,
    UserError,
)

LIMIT = 2000


class RecordingSurface:
    """A Discord stand-in that keeps the messages' current text and every write."""

    def __init__(self, forbid_after: int | None = None) -> None:
        self.messages: list[str] = []
        self.writes: list[tuple[str, int]] = []
        self.history: list[list[str]] = []  # every text each message ever had
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
        self.history.append([text])
        self.writes.append(("post", len(self.messages) - 1))

    async def edit(self, index: int, text: str) -> None:
        self._check()
        self.messages[index] = text
        self.history[index].append(text)
        self.writes.append(("edit", index))

    async def delete(self, index: int) -> None:
        self._check()
        del self.messages[index]
        self.writes.append(("delete", index))


class _Response:
    def __init__(self, status: int) -> None:
        self.status = status
        self.reason = "Forbidden"


async def _events(*events: ReplyEvent) -> AsyncIterator[ReplyEvent]:
    for event in events:
        yield event


async def _render(surface: RecordingSurface, *events: ReplyEvent) -> str:
    done = await deliver(_events(*events), DiscordAnswer(surface), Interval(0))
    return done.outcome


async def test_short_answer_grows_in_one_message() -> None:
    surface = RecordingSurface()
    outcome = await _render(
        surface, Accepted(), TextDelta("Hel"), TextDelta("lo"), FinalText("Hello", "gpt-4o")
    )
    assert outcome == "answered" and surface.messages == ["Hello"]
    assert surface.writes[0] == ("post", 0)
    assert all(kind == "edit" for kind, _ in surface.writes[1:])


async def test_long_answer_overflows_into_new_messages() -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "word " * 60 for i in range(40))
    surface = RecordingSurface()
    deltas = [TextDelta(text[i : i + 500]) for i in range(0, len(text), 500)]
    await _render(surface, Accepted(), *deltas, FinalText(text, "gpt-4o"))
    assert len(surface.messages) > 3
    assert all(len(m) <= LIMIT for m in surface.messages)
    assert " ".join(" ".join(surface.messages).split()) == " ".join(text.split())


def _code_answer(pad: int = 0, late_fence: bool = False) -> str:
    """About 6,000 characters of prose and fenced code, the kind that gets split mid-block.

    ``late_fence`` ends it with a block fenced by ten tildes: splitting the whole text again
    at every write would then leave less room in every message, and move earlier cuts.
    """
    parts = []
    for i in range(14):
        parts.append(f"Step {i}: " + "explain the change in plain words " * 4 + "x" * pad)
        code = "\n".join(f"    value_{i}_{n} = compute({n}, {i})  # keep" for n in range(6))
        parts.append(f"```python\ndef step_{i}():\n{code}\n```")
    if late_fence:
        parts.append("~~~~~~~~~~text\na late block with a long fence\n~~~~~~~~~~")
    return "\n\n".join(parts)


def _unsplit(pieces: list[str]) -> str:
    """The answer the pieces show: fences added at cuts removed, whitespace normalised."""
    out = list(pieces)
    for i in range(1, len(out)):
        head, _, last = out[i - 1].rpartition("\n")
        first, _, rest = out[i].partition("\n")
        if re.match(r"^(`{3,}|~{3,})$", last) and open_fence(head) and open_fence(first):
            out[i - 1], out[i] = head, rest
    return " ".join(" ".join(out).split())


@pytest.mark.parametrize(
    ("step", "pad", "late_fence"), [(7, 0, False), (61, 0, False), (300, 0, False), (5, 31, True)]
)
async def test_no_text_moves_between_messages_while_streaming(
    step: int, pad: int, late_fence: bool
) -> None:
    text = _code_answer(pad, late_fence)
    assert 5500 <= len(text) <= 7000 and text.count("```") >= 20
    surface = RecordingSurface()
    deltas = [TextDelta(text[i : i + step]) for i in range(0, len(text), step)]
    await _render(surface, Accepted(), *deltas, FinalText(text, "gpt-4o"))

    # once message k+1 exists, message k never changes again
    posted_at = {index: n for n, (kind, index) in enumerate(surface.writes) if kind == "post"}
    for n, (kind, index) in enumerate(surface.writes):
        later = [k for k, at in posted_at.items() if k > index and at < n]
        assert not (kind == "edit" and later), f"message {index} edited after {later} existed"
    assert ("delete", 0) not in surface.writes and len(surface.messages) >= 3
    assert all(len(t) <= LIMIT for texts in surface.history for t in texts)
    assert all(not open_fence(m) for m in surface.messages[:-1]), "each renders on its own"
    assert _unsplit(surface.messages) == " ".join(text.split())


def test_final_pieces_stay_as_they_are_when_the_answer_grows() -> None:
    layout = MessageLayout(100)
    first = layout.pieces("para one " * 10 + "\n\n" + "two " * 20)
    assert len(first) == 2
    grown = layout.pieces("para one " * 10 + "\n\n" + "two " * 20 + "more " * 40)
    assert grown[0] == first[0] and len(grown) >= 3
    assert all(len(p) <= 100 for p in grown)


async def test_a_final_answer_that_differs_from_the_stream_is_laid_out_again() -> None:
    surface = RecordingSurface()
    answer = DiscordAnswer(surface, limit=100)
    await answer.progress("a " * 120)
    assert len(surface.messages) == 3
    await answer.finish("b " * 30)
    assert surface.messages == ["b " * 30]


async def test_nothing_is_posted_for_a_redelivered_event() -> None:
    surface = RecordingSurface()
    assert await _render(surface) == "nothing"
    assert surface.writes == []


async def test_error_before_any_text_is_the_message() -> None:
    surface = RecordingSurface()
    await _render(
        surface,
        Accepted(),
        Notice("big.bin was not read"),
        UserError("The model is busy.", "rate_limited"),
    )
    assert surface.messages == ["⚠️ The model is busy.\n\n_big.bin was not read_"]


async def test_error_after_partial_text_is_a_new_message() -> None:
    surface = RecordingSurface()
    await _render(
        surface,
        Accepted(),
        TextDelta("partial answer"),
        UserError("The stream broke.", "broken_stream"),
    )
    assert surface.messages == ["partial answer", "⚠️ The stream broke."]


async def test_notes_follow_the_answer() -> None:
    surface = RecordingSurface()
    await _render(
        surface,
        Accepted(),
        Notice("notes.pdf was not read"),
        FinalText("Answer", "gpt-4o"),
        UsageReport("gpt-4o", 10, 2, 0.0),
    )
    assert surface.messages == ["Answer\n\n_notes.pdf was not read_"]


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
        await deliver(events(), DiscordAnswer(surface), Interval(0))
    assert len(drained) == 3, "the core's answer runs to the end, so the turn is stored"
    assert surface.writes == []


@pytest.mark.parametrize("blank", ["", "   ", " \n\t\n "])
async def test_blank_answer_still_shows_something(blank: str) -> None:
    surface = RecordingSurface()
    await _render(surface, Accepted(), TextDelta(blank), FinalText(blank, "gpt-4o"))
    assert surface.messages == [sentences.EMPTY_ANSWER]


async def test_blank_answer_keeps_its_notes() -> None:
    surface = RecordingSurface()
    await _render(surface, Accepted(), Notice("big.bin was not read"), FinalText("  ", "gpt-4o"))
    assert surface.messages == [f"{sentences.EMPTY_ANSWER}\n\n_big.bin was not read_"]


async def test_unchanged_pieces_are_not_edited_again() -> None:
    surface = RecordingSurface()
    answer = DiscordAnswer(surface, limit=100)
    await answer.progress("first paragraph " * 5)
    await answer.progress("first paragraph " * 5 + "\n\nsecond " * 20)
    before = list(surface.writes)
    await answer.progress("first paragraph " * 5 + "\n\nsecond " * 20)
    assert surface.writes == before


async def test_cut_by_shutdown_says_so_after_the_text_shown() -> None:
    surface = RecordingSurface()
    started = asyncio.Event()

    async def events() -> AsyncIterator[ReplyEvent]:
        yield Accepted()
        yield TextDelta("half an answer")
        started.set()
        await asyncio.sleep(30)
        yield FinalText("never", "gpt-4o")

    task = asyncio.create_task(deliver(events(), DiscordAnswer(surface), Interval(0)))
    await started.wait()
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert surface.messages == [
        "half an answer",
        sentences.failure_text(sentences.RESTARTED),
    ]
