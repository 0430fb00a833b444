"""Discord answers that outlive their worker: two Parley workers (the real discord.py client)
on one database and one fake Discord. The first worker's answer is cut in the middle of its
stream (its model never says another word and its leases run out, as after `kill -9`); the
second worker's sweeper finishes it in the same place, and Discord shows one answer: the
model's, with no "thinking…" and no partial message left."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from discord.webhook.async_ import AsyncWebhookAdapter, async_context
from sqlalchemy import text, update

from adapters.discord import DiscordAdapter
from adapters.discord import adapter as discord_adapter
from adapters.discord.settings import DiscordSettings
from adapters.standin.server import PREFIX, StandinServer
from bots import platforms
from bots.bootstrap import Parley, build
from bots.ops import answer_sweeper
from core.ports import ChatRequest
from core.settings import Settings
from core.store import schema
from core.store.models import LeaseRow
from core.store.sql import SqlStore, make_engine
from tests.fakes.discord_server import LOADING, FakeDiscord
from tests.fakes.memory import ScriptedModel

PARTIAL = "The answer is " + "very " * 500  # more than one Discord message (2,000 characters)


class Cut(ScriptedModel):
    """Says a long first part, then never another word (its worker is about to die)."""

    def __init__(self, partial: str = PARTIAL) -> None:
        super().__init__()
        self.partial = partial
        self.talking = asyncio.Event()

    async def stream(self, request: ChatRequest) -> AsyncIterator[Any]:
        self.requests.append(request)
        yield self.partial
        self.talking.set()
        await asyncio.Event().wait()


@dataclass
class Worker:
    parley: Parley
    adapter: DiscordAdapter

    @property
    def store(self) -> SqlStore:
        assert isinstance(self.parley.store, SqlStore)
        return self.parley.store

    async def die(self) -> None:
        """What `kill -9` leaves: the worker's leases are no longer renewed and run out."""
        await self.store.leases.close_heartbeat()
        async with self.store.engine.begin() as conn:
            holder = LeaseRow.holder == self.store.leases.holder
            await conn.execute(update(LeaseRow).where(holder).values(until=0))

    async def sweep(self) -> int:
        """One sweep of this worker's sweeper, waiting for what it resumes."""
        sweeper = answer_sweeper(self.parley, [self.adapter])
        taken = await sweeper.sweep()
        for task in list(sweeper._running):
            await task
        return taken


@contextlib.asynccontextmanager
async def worker(
    url: str, fake: FakeDiscord, standin: StandinServer, llm: Any = None
) -> AsyncIterator[Worker]:
    store = SqlStore(make_engine(url), lease_seconds=30)
    await schema.upgrade(store.engine)
    settings = Settings(
        _env_file=None,
        database_url=url,
        openai_base_url=standin.base_url,
        openai_api_key="test",
        openai_max_retries=0,
    )
    parley = await build(settings, store=store, llm=llm)
    parley.opened.push_async_callback(store.close)  # the store passed in is this test's
    section = DiscordSettings(
        _env_file=None,
        token="x",
        api_url=fake.api_url,
        gateway_url=fake.gateway_url,
        guild_ids=[int(fake.guild_id)],
        edit_interval=0.01,
    )
    adapter = platforms.discord_adapter(parley, section)
    await adapter.start()
    try:
        await asyncio.wait_for(adapter.ready.wait(), 10)
        yield Worker(parley, adapter)
    finally:
        await adapter.stop()
        await parley.close()


@pytest.fixture
async def places(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[FakeDiscord, Any]]:
    monkeypatch.setattr(discord_adapter, "STOP_GRACE_SECONDS", 0.05)
    async with FakeDiscord() as fake, StandinServer() as standin:
        yield fake, standin


def said(prompt: str) -> str:
    return f"{PREFIX} You said: {prompt}"


async def states(store: SqlStore) -> list[str]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(text("SELECT state FROM processed_events ORDER BY id"))
        return [row[0] for row in rows]


async def deliveries(store: SqlStore) -> list[str]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(text("SELECT delivery FROM processed_events ORDER BY id"))
        return [row[0] or "" for row in rows]


async def on_record(store: SqlStore, check: Any) -> dict[str, Any]:
    """Wait until the answer's record (what it has shown) passes ``check``; the record."""
    for _ in range(200):
        [shown] = await deliveries(store)
        if shown and check(json.loads(shown)):
            return dict(json.loads(shown))
        await asyncio.sleep(0.05)
    raise AssertionError("the answer's record never got there")


async def cut_answer(fake: FakeDiscord, store: SqlStore) -> str:
    """``/ask`` on a worker whose model stream is cut, until the cut answer shows in the
    reply and a follow-up and its record names them; the interaction's token."""
    await fake.wait_for(lambda: fake.commands)
    asked = await fake.send_command("ask", {"prompt": "what is a lease?"})
    token = str(asked["token"])
    await fake.wait_for(lambda: len(fake.interaction_messages(token)) == 2)
    await on_record(store, lambda r: r["followups"])
    return token


async def test_a_slash_command_cut_by_a_dead_worker_is_finished_in_its_reply(
    database_url: str, places: tuple[FakeDiscord, Any]
) -> None:
    fake, standin = places
    async with worker(database_url, fake, standin, Cut()) as dying:
        # The cut answer shows in the reply and a follow-up.
        token = await cut_answer(fake, dying.store)
        assert "".join(fake.interaction_messages(token)).startswith("The answer is very")
        async with worker(database_url, fake, standin) as survivor:
            assert await survivor.sweep() == 0  # its worker still lives
            await dying.die()
            assert await survivor.sweep() == 1

            assert fake.interaction_messages(token) == [said("what is a lease?")]
            original = fake.webhook_messages[f"{token}:@original"]
            assert not original["flags"] & LOADING
            assert fake.channel_messages(fake.channel_id, author_id=fake.bot.id) == []
            assert await states(survivor.store) == ["answered"]
            # The interaction's token is gone from the record once the answer is shown.
            assert token not in "".join(await deliveries(survivor.store))
            assert await survivor.sweep() == 0  # nothing is finished twice


async def test_a_mention_cut_by_a_dead_worker_is_finished_in_its_reply(
    database_url: str, places: tuple[FakeDiscord, Any]
) -> None:
    fake, standin = places
    async with worker(database_url, fake, standin, Cut()) as dying:
        mention = await fake.send_message("what is a lease?", mention_bot=True)

        def bot_messages() -> list[dict[str, Any]]:
            return [m for m in fake.messages[fake.channel_id] if m["author"]["id"] == fake.bot.id]

        await fake.wait_for(lambda: len(bot_messages()) == 2)
        first = bot_messages()[0]
        await on_record(dying.store, lambda r: len(r["messages"]) == 2)
        async with worker(database_url, fake, standin) as survivor:
            await dying.die()
            assert await survivor.sweep() == 1

            [answer] = bot_messages()
            assert answer["content"] == said("what is a lease?")
            # The same message, still the reply to the question.
            assert answer["id"] == first["id"]
            assert answer["message_reference"]["message_id"] == int(mention["id"])
            assert await states(survivor.store) == ["answered"]
            assert await survivor.sweep() == 0


async def test_an_answer_stored_but_not_shown_is_shown_without_asking_again(
    database_url: str, places: tuple[FakeDiscord, Any]
) -> None:
    fake, standin = places
    model = ScriptedModel(reply=lambda r: "forty-two, as stored")
    # The dying worker's writes to the reply never come back.
    fake.hold("PATCH", r"/messages/@original$")
    async with worker(database_url, fake, standin, model) as dying:
        await fake.wait_for(lambda: fake.commands)
        asked = await fake.send_command("ask", {"prompt": "the answer?"})
        await fake.wait_for(lambda: fake.held)
        store = dying.store
        for _ in range(200):
            if await states(store) == ["stored"]:
                break
            await asyncio.sleep(0.05)
        assert await states(store) == ["stored"]
        # Another process: discord.py's webhook requests (one per token at a time in a
        # process) don't wait behind the dying worker's.
        async_context.set(AsyncWebhookAdapter())
        async with worker(database_url, fake, standin) as survivor:
            await dying.die()
            assert await survivor.sweep() == 1
            assert fake.interaction_messages(asked["token"]) == ["forty-two, as stored"]
            assert standin.requests == []  # shown again, not asked again
            assert await states(survivor.store) == ["answered"]


async def test_past_the_token_the_answer_moves_to_the_channel(
    database_url: str, places: tuple[FakeDiscord, Any]
) -> None:
    fake, standin = places
    async with worker(database_url, fake, standin, Cut()) as dying:
        token = await cut_answer(fake, dying.store)
        # Time passes: the token's safe end is behind us (the token itself still works).
        async with dying.store.engine.begin() as conn:
            [row] = (await conn.execute(text("SELECT id, delivery FROM processed_events"))).all()
            record = {**json.loads(row[1]), "until": time.time() - 1}
            assert record["followups"]
            await conn.execute(
                text("UPDATE processed_events SET delivery = :d WHERE id = :i"),
                {"d": json.dumps(record), "i": row[0]},
            )
        async with worker(database_url, fake, standin) as survivor:
            await dying.die()
            assert await survivor.sweep() == 1

            assert fake.interaction_messages(token) == ["-# The answer continues below."]
            note, answer = fake.channel_messages(fake.channel_id, author_id=fake.bot.id)
            assert "continues here" in note
            assert answer == said("what is a lease?")
            assert await states(survivor.store) == ["answered"]


async def test_a_reply_the_dead_worker_posted_but_never_recorded_is_continued(
    database_url: str, places: tuple[FakeDiscord, Any]
) -> None:
    fake, standin = places
    async with worker(database_url, fake, standin, Cut("The answer is")) as dying:
        mention = await fake.send_message("what is a lease?", mention_bot=True)

        def bot_messages() -> list[dict[str, Any]]:
            return [m for m in fake.messages[fake.channel_id] if m["author"]["id"] == fake.bot.id]

        await fake.wait_for(lambda: bot_messages() and bot_messages()[0]["content"])
        await on_record(dying.store, lambda r: r["messages"])
        # It died after posting, before recording it.
        async with dying.store.engine.begin() as conn:
            await conn.execute(text("UPDATE processed_events SET delivery = NULL"))
        later = await fake.send_message("unrelated", author=fake.moderator)
        async with worker(database_url, fake, standin) as survivor:
            await dying.die()
            assert await survivor.sweep() == 1

            [answer] = bot_messages()
            assert answer["content"] == said("what is a lease?")
            assert answer["message_reference"]["message_id"] == int(mention["id"])
            assert later in fake.messages[fake.channel_id]


async def test_a_mention_is_answered_when_the_channel_history_cannot_be_read(
    database_url: str, places: tuple[FakeDiscord, Any]
) -> None:
    fake, standin = places
    model = Cut("")
    async with worker(database_url, fake, standin, model) as dying:
        mention = await fake.send_message("what is a lease?", mention_bot=True)
        await asyncio.wait_for(model.talking.wait(), 10)
        # It died before posting anything; the survivor may not read the channel's history
        # (no Read Message History) to look for a reply it did not record.
        fake.fail("GET", rf"/channels/{fake.channel_id}/messages$", status=403)
        async with worker(database_url, fake, standin) as survivor:
            await dying.die()
            assert await survivor.sweep() == 1

            answers = fake.channel_messages(fake.channel_id, author_id=fake.bot.id)
            assert answers == [said("what is a lease?")]
            assert await states(survivor.store) == ["answered"]
            assert mention in fake.messages[fake.channel_id]


async def test_a_resume_refused_by_discord_leaves_no_token_behind(
    database_url: str, places: tuple[FakeDiscord, Any]
) -> None:
    fake, standin = places
    async with worker(database_url, fake, standin, Cut()) as dying:
        token = await cut_answer(fake, dying.store)
        async with worker(database_url, fake, standin) as survivor:
            await dying.die()
            # Every write to the reply is refused (403) while the survivor finishes it.
            fake.fail("PATCH", r"/messages/@original$", status=403, times=100)
            assert await survivor.sweep() == 1  # the sweeper lives on

            assert token not in "".join(await deliveries(survivor.store))
            assert await survivor.sweep() == 0
