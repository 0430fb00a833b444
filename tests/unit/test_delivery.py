"""``core.delivery.deliver``: the one path every adapter's answer takes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from core import sentences
from core.delivery import Interval, deliver
from core.messages import Accepted, FinalText, Notice, ReplyEvent, TextDelta, UsageReport, UserError


class Recorder:
    """A renderer that keeps every write, with the time it was made."""

    def __init__(self, *, fail_progress: bool = False, refuse_final: bool = False) -> None:
        self.writes: list[tuple[str, str, float]] = []
        self.wrote = asyncio.Event()
        self.fail_progress = fail_progress
        self.refuse_final = refuse_final

    async def start(self) -> None:
        self.writes.append(("start", "", time.monotonic()))

    async def progress(self, text: str) -> None:
        self.writes.append(("progress", text, time.monotonic()))
        self.wrote.set()
        if self.fail_progress:
            raise RuntimeError("edit refused")

    async def finish(self, text: str) -> None:
        self.writes.append(("finish", text, time.monotonic()))
        if self.refuse_final:
            raise PermissionError("no access")

    async def fail(self, text: str) -> None:
        self.writes.append(("fail", text, time.monotonic()))

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.writes]

    def last(self) -> str:
        return self.writes[-1][1]


async def stream(*events: ReplyEvent, gap: float = 0.0) -> AsyncIterator[ReplyEvent]:
    for event in events:
        if gap:
            await asyncio.sleep(gap)
        yield event


USAGE = UsageReport("gpt-4o", 10, 5, 0.001)


async def test_answer_grows_then_finishes_with_its_usage():
    renderer = Recorder()
    done = await deliver(
        stream(TextDelta("Hel"), TextDelta("lo"), FinalText("Hello", "gpt-4o"), USAGE),
        renderer,
        Interval(0),
    )
    assert done.outcome == "answered" and done.usage == USAGE
    progress = [text for kind, text, _ in renderer.writes if kind == "progress"]
    assert progress and progress[-1] in {"Hel", "Hello"} and progress[0] == "Hel"
    assert renderer.kinds()[-1] == "finish" and renderer.last() == "Hello"


async def test_notes_follow_the_answer_and_an_empty_answer_says_so():
    renderer = Recorder()
    await deliver(
        stream(Notice("big.bin was not read"), FinalText("  ", "gpt-4o")), renderer, Interval(0)
    )
    assert renderer.writes[-1][:2] == (
        "finish",
        f"{sentences.EMPTY_ANSWER}\n\n_big.bin was not read_",
    )


async def test_an_error_ends_with_the_sentence_and_its_code():
    renderer = Recorder()
    done = await deliver(
        stream(Notice("x.png was not read"), UserError("Too long.", "too_long")),
        renderer,
        Interval(0),
    )
    assert done.outcome == "failed" and done.error_code == "too_long"
    assert renderer.writes == [
        ("fail", "⚠️ Too long.\n\n_x.png was not read_", renderer.writes[0][2])
    ]


async def test_accepted_shows_that_an_answer_is_coming_before_anything_else():
    renderer = Recorder()
    await deliver(stream(Accepted(), FinalText("hi", "gpt-4o")), renderer, Interval(0))
    assert renderer.kinds() == ["start", "finish"]


async def test_an_accepted_request_that_ends_silently_still_gets_a_sentence():
    renderer = Recorder()
    done = await deliver(stream(Accepted()), renderer, Interval(0))
    assert done.outcome == "failed" and renderer.kinds() == ["start", "fail"]


async def test_a_redelivery_writes_nothing():
    renderer = Recorder()
    done = await deliver(stream(), renderer, Interval(0))
    assert done.outcome == "nothing" and renderer.writes == []


async def test_a_stream_that_stops_without_an_answer_is_never_left_open():
    renderer = Recorder()
    done = await deliver(stream(TextDelta("half an ans")), renderer, Interval(0))
    assert done.outcome == "failed"
    assert renderer.kinds()[-1] == "fail"
    assert renderer.last() == sentences.failure_text(sentences.GENERIC_ERROR)


async def test_an_iterator_that_raises_ends_with_the_generic_sentence():
    async def broken() -> AsyncIterator[ReplyEvent]:
        yield TextDelta("a")
        raise RuntimeError("bug")

    renderer = Recorder()
    done = await deliver(broken(), renderer, Interval(0))
    assert done == type(done)("failed", "internal", None)
    assert renderer.last() == sentences.failure_text(sentences.GENERIC_ERROR)


async def test_shutdown_cuts_the_answer_with_the_restart_sentence_after_the_core_cleans_up():
    cleaned = asyncio.Event()

    async def slow() -> AsyncIterator[ReplyEvent]:
        try:
            yield TextDelta("partial")
            await asyncio.sleep(30)
            yield FinalText("never", "gpt-4o")
        finally:
            cleaned.set()

    renderer = Recorder()
    task = asyncio.create_task(deliver(slow(), renderer, Interval(0)))
    await renderer.wrote.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set()
    assert renderer.kinds() == ["progress", "fail"]
    assert renderer.last() == sentences.failure_text(sentences.RESTARTED)


async def test_pacing_spaces_every_write_including_the_final_one():
    interval = 0.15
    deltas = [TextDelta("word ") for _ in range(20)]
    renderer = Recorder()
    await deliver(
        stream(*deltas, FinalText("done", "gpt-4o"), gap=0.02), renderer, Interval(interval)
    )
    times = [at for _, _, at in renderer.writes]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert renderer.kinds()[-1] == "finish"
    # 20 deltas over ~0.4 s: a few progress writes, never two within the interval
    assert 2 <= len(renderer.writes) <= 6
    assert min(gaps) >= interval - 0.02


async def test_an_answer_complete_before_its_first_write_is_due_is_written_once():
    renderer = Recorder()

    async def late_then_quick() -> AsyncIterator[ReplyEvent]:
        yield Accepted()
        await asyncio.sleep(0.3)  # longer than the interval: the model is slow to start
        yield TextDelta("Hel")
        yield TextDelta("lo")
        yield FinalText("Hello", "gpt-4o")

    await deliver(late_then_quick(), renderer, Interval(0.1))
    # no partial "Hel" first: the first write is due an interval after the first text
    assert renderer.kinds() == ["start", "finish"] and renderer.last() == "Hello"


async def test_a_long_answer_still_grows_by_progress_writes():
    renderer = Recorder()
    deltas = [TextDelta("word ") for _ in range(10)]
    first = time.monotonic()
    await deliver(stream(*deltas, FinalText("done", "gpt-4o"), gap=0.03), renderer, Interval(0.1))
    progress = [at for kind, _, at in renderer.writes if kind == "progress"]
    assert len(progress) >= 2 and renderer.kinds()[-1] == "finish"
    # the first one an interval after the first text, not at once
    assert progress[0] - first >= 0.1


async def test_failed_progress_is_skipped_and_the_answer_still_finishes():
    renderer = Recorder(fail_progress=True)
    done = await deliver(
        stream(TextDelta("a"), TextDelta("b"), FinalText("ab", "gpt-4o")), renderer, Interval(0)
    )
    assert done.outcome == "answered" and renderer.writes[-1][:2] == ("finish", "ab")


async def test_a_refused_final_write_is_raised_after_the_core_finished():
    finished = asyncio.Event()

    async def answer() -> AsyncIterator[ReplyEvent]:
        yield FinalText("all", "gpt-4o")
        yield USAGE
        finished.set()

    with pytest.raises(PermissionError):
        await deliver(answer(), Recorder(refuse_final=True), Interval(0))
    assert finished.is_set()


async def test_nothing_is_written_after_the_final_text():
    async def answer() -> AsyncIterator[ReplyEvent]:
        yield TextDelta("first ")
        yield TextDelta("second")
        yield FinalText("first second (cut off)", "gpt-4o")
        yield TextDelta(" stray")
        await asyncio.sleep(0.1)

    renderer = Recorder()
    await deliver(answer(), renderer, Interval(0.02))
    assert renderer.kinds()[-1] == "finish" and renderer.kinds().count("finish") == 1
