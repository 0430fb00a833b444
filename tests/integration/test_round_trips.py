"""What one turn asks of the database, pinned: statements and transactions per turn, on SQLite
and on PostgreSQL, for a plain turn and for a Slack-style one (an event claimed, the answer
shown and settled). Real openai client against the stand-in server; counted by a hook on
SQLAlchemy's engines. A change that adds a round trip fails here; one that saves some lowers
the pins."""

from __future__ import annotations

from typing import Any

import pytest

from bots.bootstrap import Parley, build
from core.delivery import Interval, deliver
from core.messages import Author, ConversationKey, FinalText, Inbound
from core.settings import Settings
from tests.conftest import upgraded
from tests.fakes.counting import Counting

KEY = ConversationKey("slack", "T1", "C1", "1700000000.000100")
TURNS = 3

# (statements, transactions, round trips) per turn, once the worker and the conversation are
# warm. Round trips: statements, plus BEGIN and COMMIT of transactions of more than one
# statement (a lone statement commits itself on PostgreSQL). A Slack turn's event is claimed
# by its first transaction (PostgreSQL: the statement that takes the lease and stores the
# question); only the settling after the answer is shown is a transaction of its own.
PLAIN = {"sqlite": (6, 2, 10), "postgresql": (2, 2, 2)}
SLACK = {"sqlite": (9, 3, 13), "postgresql": (3, 3, 3)}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, str]:
    if request.param == "sqlite":
        return "sqlite", f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    return "postgresql", request.getfixturevalue("postgres_url")


@pytest.fixture
async def parley(backend: tuple[str, str], standin: Any) -> Any:
    await upgraded(backend[1])
    settings = Settings(
        _env_file=None,
        database_url=backend[1],
        openai_base_url=standin.base_url,
        openai_api_key="test-key",
        # no heartbeat renewal lands inside the counted turns
        database_lease_seconds=600,
    )
    parley = await build(settings)
    yield parley
    await parley.close()


class Screen:
    """A renderer keeping the record a Slack answer keeps: nothing until its one message is
    posted (an instant answer's final write), then that message."""

    posted = False

    async def start(self) -> None:
        pass

    async def progress(self, text: str) -> None:
        pass

    async def finish(self, text: str) -> None:
        self.final = text
        self.posted = True

    async def fail(self, text: str) -> None:
        self.final = text

    def record(self) -> dict[str, Any]:
        return {"channel": "C1", "messages": ["ts-1"] if self.posted else []}


async def _plain(parley: Parley, i: int) -> None:
    events = [e async for e in parley.service.answer(Inbound(KEY, Author("U1", "Ada"), f"q{i}"))]
    assert any(isinstance(e, FinalText) for e in events)


async def _slack(parley: Parley, i: int) -> None:
    # An instant answer is written once, whole, at the end (no progress write before it).
    inbound = Inbound(KEY, Author("U1", "Ada"), f"q{i}", event_id=f"Ev{i}")
    service = parley.service
    screen = Screen()
    done = await deliver(
        service.answer(inbound), screen, Interval(60), journal=service.journal(inbound)
    )
    assert done.outcome == "answered", done


async def _per_turn(parley: Parley, turn: Any) -> tuple[float, float, float]:
    await turn(parley, -1)  # the worker announces itself, the conversation is made
    with Counting() as counting:
        for i in range(TURNS):
            await turn(parley, i)
    counted = (counting.statements, counting.transactions, counting.round_trips)
    return (counted[0] / TURNS, counted[1] / TURNS, counted[2] / TURNS)


async def test_a_plain_turn_costs_its_pinned_round_trips(parley, backend):
    assert await _per_turn(parley, _plain) == PLAIN[backend[0]]


async def test_a_slack_turn_with_its_event_claim_costs_its_pinned_round_trips(parley, backend):
    assert await _per_turn(parley, _slack) == SLACK[backend[0]]
