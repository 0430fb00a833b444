"""Answers that outlive their worker: a worker that stops in the middle of an answer (it never
runs another line, as after `kill -9`) leaves its claim to another worker, which finishes it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sqlalchemy import update

from bots.bootstrap import Parley, build
from core.delivery import Interval, deliver
from core.messages import Author, ConversationKey, Inbound
from core.recovery import Resumed, Sweeper
from core.settings import Settings
from core.store import schema
from core.store.models import LeaseRow
from core.store.sql import SqlStore, make_engine
from tests.fakes.memory import ScriptedModel

KEY = ConversationKey("slack", "T1", "C1", "1700000000.000100")


class Screen:
    """A renderer that remembers what it shows, with the record an adapter keeps."""

    def __init__(self, *, hang_on_finish: bool = False) -> None:
        self.shown: list[str] = []
        self.final: str | None = None
        self.hang_on_finish = hang_on_finish
        self.reached_finish = asyncio.Event()
        self.withdrawn = False

    async def start(self) -> None:
        self.shown.append("placeholder")

    async def progress(self, text: str) -> None:
        self.shown.append(text)

    async def finish(self, text: str) -> None:
        self.reached_finish.set()
        if self.hang_on_finish:
            await asyncio.Event().wait()  # the worker dies before this write
        self.final = text

    async def fail(self, text: str) -> None:
        self.final = text

    def record(self) -> dict[str, Any]:
        return {"messages": ["ts-1"], "showing": len(self.shown)}

    async def withdraw(self) -> None:
        self.withdrawn = True


class Stalls(ScriptedModel):
    """Says a few words, then never another (its worker is about to die)."""

    def __init__(self) -> None:
        super().__init__()
        self.talking = asyncio.Event()

    async def stream(self, request):
        yield "The answer is"
        self.talking.set()
        await asyncio.Event().wait()


class Gated(ScriptedModel):
    """Says a few words, then waits for ``gate`` before the rest (its worker stalls)."""

    def __init__(self) -> None:
        super().__init__(reply=lambda r: "stalled answer")
        self.talking = asyncio.Event()
        self.gate = asyncio.Event()

    async def stream(self, request):
        async for item in super().stream(request):
            if not isinstance(item, str):
                self.talking.set()
                await self.gate.wait()
            yield item


async def _worker(url: str, llm: ScriptedModel) -> Parley:
    store = SqlStore(make_engine(url), lease_seconds=30)
    await schema.upgrade(store.engine)
    parley = await build(Settings(_env_file=None, database_url=url), store=store, llm=llm)
    parley.opened.push_async_callback(store.close)  # the store passed in is this test's
    return parley


async def _die(parley: Parley) -> None:
    """What `kill -9` leaves: the worker's leases stop being renewed and run out."""
    store = parley.store
    assert isinstance(store, SqlStore)
    await store.leases.close_heartbeat()
    async with store.engine.begin() as conn:
        await conn.execute(
            update(LeaseRow).where(LeaseRow.holder == store.leases.holder).values(until=0)
        )


def _question(text: str, event_id: str) -> Inbound:
    return Inbound(KEY, Author("U1", "Ada"), text, event_id=event_id, reply_to=(("channel", "C1"),))


async def _sweep_into(parley: Parley, resumed: list[Resumed], screen: Screen) -> int:
    """One sweep of ``parley``'s worker, finishing what it takes on ``screen``."""
    service = parley.service

    async def resume(item: Resumed) -> None:
        resumed.append(item)
        events = (
            service.replay(item.inbound, item.answer)
            if item.answer is not None
            else service.answer(item.inbound, resumed=True)
        )
        await deliver(events, screen, Interval(0), journal=service.journal(item.inbound))

    sweeper = Sweeper(parley.store, {"slack": resume}, every=1)
    taken = await sweeper.sweep()
    await asyncio.gather(*sweeper._running)
    return taken


async def _history(parley: Parley) -> list[tuple[str, str]]:
    state = await parley.store.conversation(KEY)
    turns = await parley.store.recent_messages(state.id, 0, 10**12, 100)
    return [(t.role, t.content) for t in reversed(turns)]


async def test_an_answer_cut_by_a_dead_worker_is_asked_again_by_another(database_url):
    dying = await _worker(database_url, Stalls())
    survivor = await _worker(
        database_url, ScriptedModel(reply=lambda r: f"answer to {r.messages[-1].text}")
    )
    first_screen, second_screen = Screen(), Screen()
    question = _question("what is the answer?", "Ev-cut")
    service = dying.service
    cut = asyncio.create_task(
        deliver(
            service.answer(question), first_screen, Interval(0), journal=service.journal(question)
        )
    )
    try:
        await asyncio.wait_for(dying.llm.talking.wait(), 10)
        assert await _sweep_into(survivor, [], second_screen) == 0  # its worker still lives
        await _die(dying)
        resumed: list[Resumed] = []
        assert await _sweep_into(survivor, resumed, second_screen) == 1
        [item] = resumed
        assert item.inbound.text == "what is the answer?"
        assert item.inbound.reply_to == (("channel", "C1"),)
        assert item.shown["messages"] == ["ts-1"]  # what the dead worker showed, to clear
        assert item.answer is None
        assert second_screen.final == "answer to what is the answer?"
        # one question, one answer: the dead worker's pending copy stays out of the history
        assert await _history(survivor) == [
            ("user", "what is the answer?"),
            ("assistant", "answer to what is the answer?"),
        ]
        assert await _sweep_into(survivor, [], Screen()) == 0  # nothing is finished twice
        assert not await survivor.store.claim_event("slack", "Ev-cut", settled=False)
    finally:
        cut.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cut
        await dying.close()
        await survivor.close()


async def test_an_answer_stored_but_not_shown_is_shown_without_asking_again(database_url):
    model = ScriptedModel(reply=lambda r: "forty-two")
    dying = await _worker(database_url, model)
    survivor = await _worker(database_url, ScriptedModel(reply=lambda r: "asked twice!"))
    stuck, screen = Screen(hang_on_finish=True), Screen()
    question = _question("the answer?", "Ev-stored")
    service = dying.service
    shown = asyncio.create_task(
        deliver(service.answer(question), stuck, Interval(0), journal=service.journal(question))
    )
    try:
        await asyncio.wait_for(stuck.reached_finish.wait(), 10)
        await _die(dying)
        resumed: list[Resumed] = []
        assert await _sweep_into(survivor, resumed, screen) == 1
        assert resumed[0].answer == "forty-two"
        assert screen.final == "forty-two"
        assert survivor.llm.requests == []
        assert await _history(survivor) == [("user", "the answer?"), ("assistant", "forty-two")]
        assert await _sweep_into(survivor, [], Screen()) == 0
    finally:
        shown.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await shown
        await dying.close()
        await survivor.close()


async def test_an_answer_shown_in_full_is_left_alone(database_url):
    parley = await _worker(database_url, ScriptedModel(reply=lambda r: "done"))
    other = await _worker(database_url, ScriptedModel(reply=lambda r: "again!"))
    try:
        question = _question("hello", "Ev-done")
        service = parley.service
        screen = Screen()
        await deliver(
            service.answer(question), screen, Interval(0), journal=service.journal(question)
        )
        assert screen.final == "done"
        await _die(parley)
        assert await _sweep_into(other, [], Screen()) == 0
    finally:
        await parley.close()
        await other.close()


async def test_an_answer_taken_over_while_its_worker_stalled_is_given_up_by_it(postgres_url):
    stalling = await _worker(postgres_url, Gated())
    survivor = await _worker(
        postgres_url, ScriptedModel(reply=lambda r: f"answer to {r.messages[-1].text}")
    )
    stalled_screen, screen = Screen(), Screen()
    question = _question("who answers?", "Ev-stalled")
    service = stalling.service
    stalled = asyncio.create_task(
        deliver(
            service.answer(question), stalled_screen, Interval(0), journal=service.journal(question)
        )
    )
    try:
        await asyncio.wait_for(stalling.llm.talking.wait(), 10)
        await _die(stalling)  # its leases run out while it still lives
        assert await _sweep_into(survivor, [], screen) == 1
        assert screen.final == "answer to who answers?"
        stalling.llm.gate.set()  # it wakes up with its own answer
        result = await asyncio.wait_for(stalled, 10)
        assert result.outcome == "nothing"
        assert stalled_screen.withdrawn and stalled_screen.final is None
        assert await _history(survivor) == [
            ("user", "who answers?"),
            ("assistant", "answer to who answers?"),
        ]
        assert await _sweep_into(survivor, [], Screen()) == 0
    finally:
        stalled.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stalled
        await stalling.close()
        await survivor.close()


class Split(Screen):
    """Its final write posts the end of a long answer as a second message."""

    def record(self) -> dict[str, Any]:
        return {"messages": ["ts-1", "ts-2"] if self.final else ["ts-1"]}


async def _refuse(store: SqlStore, name: str, column: str, state: str) -> None:
    """The database refuses every update of ``column`` of a claim to (or in) ``state``."""
    sqlite = [
        f"CREATE TRIGGER {name} BEFORE UPDATE OF {column} ON processed_events "
        f"WHEN NEW.state = '{state}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
    ]
    postgresql = [
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused'; END $$",
        f"CREATE TRIGGER {name} BEFORE UPDATE OF {column} ON processed_events "
        f"FOR EACH ROW WHEN (NEW.state = '{state}') EXECUTE FUNCTION {name}()",
    ]
    async with store.engine.begin() as conn:
        for sql in postgresql if store.engine.dialect.name == "postgresql" else sqlite:
            await conn.exec_driver_sql(sql)


SETTLING = ("refuse_settling", "state", "answered")  # no claim marked answered


async def _finished_after_a_crash(url: str, screen: Screen, *refused: tuple[str, ...]) -> Resumed:
    """``screen`` shows an answer while the database refuses what ``refused`` says (each the
    arguments of ``_refuse``); its worker dies, and another finishes the claim: what it is
    given to finish (the stored answer, so the model is not asked again)."""
    parley = await _worker(url, ScriptedModel(reply=lambda r: "the answer"))
    survivor = await _worker(url, ScriptedModel(reply=lambda r: "asked twice!"))
    try:
        assert isinstance(parley.store, SqlStore)
        for refusal in refused:
            await _refuse(parley.store, *refusal)
        question, service = _question("tell me", "Ev-refused"), parley.service
        await deliver(
            service.answer(question), screen, Interval(0), journal=service.journal(question)
        )
        assert screen.final == "the answer"
        await _die(parley)  # the worker dies with its claim unsettled
        resumed: list[Resumed] = []
        assert await _sweep_into(survivor, resumed, Screen()) == 1
        assert resumed[0].answer == "the answer" and survivor.llm.requests == []
        return resumed[0]
    finally:
        await parley.close()
        await survivor.close()


async def test_what_an_answer_showed_in_the_end_outlives_a_failed_settle(database_url):
    """The settle that would keep the final record fails: the record is kept on its own, so
    the worker finishing the claim after a crash edits both messages (none posted anew)."""
    resumed = await _finished_after_a_crash(database_url, Split(), SETTLING)
    assert resumed.shown == {"messages": ["ts-1", "ts-2"]}


class Still(Screen):
    """Shows its answer in one message from the first write to the last."""

    def record(self) -> dict[str, Any]:
        return {"messages": ["ts-1"]}


async def test_a_record_whose_write_failed_is_written_again_at_the_end(database_url):
    """Keeping what the answer showed fails while it streams (the record stays the same to
    the end), and so does the settle: the record is still kept, and the worker finishing the
    claim after a crash edits that message instead of posting the answer again."""
    records = ("refuse_records", "delivery", "answering")  # none kept while it streams
    resumed = await _finished_after_a_crash(database_url, Still(), records, SETTLING)
    assert resumed.shown == {"messages": ["ts-1"]}
