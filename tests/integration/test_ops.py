"""What operators see of a worker: ``/healthz`` (200 only while the platforms are connected and
the database answers) and Prometheus ``/metrics``, over real HTTP, with the real discord.py and
slack_bolt clients against the fake platforms."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from adapters.discord.settings import DiscordSettings
from adapters.slack.settings import SlackSettings
from bots import platforms
from bots.bootstrap import build
from bots.health import Health, database_ping
from bots.metrics import Metrics
from bots.ops import OpsServer, OpsSettings, worker_health
from bots.shared import RedisSettings
from core.settings import Settings
from core.store.sql import SqlStore, make_engine
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.memory import MemoryStore, ScriptedModel
from tests.fakes.slack_server import FakeSlack

CORE = Settings(_env_file=None)  # type: ignore[call-arg]
# Nothing listens on port 1: a PostgreSQL server that is down.
DOWN = "postgresql+asyncpg://parley@127.0.0.1:1/parley"


class DeadStore(MemoryStore):
    """A store whose database has gone away."""

    async def ping(self) -> None:
        raise ConnectionRefusedError("database is down")


@asynccontextmanager
async def serving(health: Health, metrics: Metrics | None = None) -> AsyncIterator[str]:
    """``/healthz`` and ``/metrics`` on one free port; yields the base URL."""
    settings = OpsSettings(_env_file=None, health_port=0, metrics_port=0)  # type: ignore[call-arg]
    server = OpsServer(settings, health, metrics)
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.ports['/healthz']}"
    finally:
        await server.stop()


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


def scraped(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus scrape: (name, sorted labels) → value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_healthz_follows_the_discord_connection_and_metrics_count_the_answer(
    tmp_path: Any,
) -> None:
    metrics = Metrics()
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path}/p.db"
    )
    model = ScriptedModel(reply=lambda request: "the answer")
    async with FakeDiscord() as fake:
        parley = await build(settings, llm=model, redis=RedisSettings(), metrics=metrics)
        section = DiscordSettings(  # type: ignore[call-arg]
            _env_file=None, token="x", api_url=fake.api_url, gateway_url=fake.gateway_url
        )
        adapter = platforms.discord_adapter(parley, section)
        health = worker_health(parley, [adapter])
        try:
            async with serving(health, metrics) as url:
                status, body = await get(f"{url}/healthz")
                assert (status, body) == (
                    503,
                    {"ok": False, "problems": ["discord is not connected"]},
                )

                await adapter.start()
                await asyncio.wait_for(adapter.ready.wait(), 30)
                assert await get(f"{url}/healthz") == (200, {"ok": True})

                # the first post of the answer is refused once with a 429, then retried
                fake.fail("POST", r"/channels/\d+/messages$", status=429, retry_after=0.01)
                await fake.send_message("hello", mention_bot=True)
                await fake.wait_for(
                    lambda: (
                        "the answer"
                        in fake.channel_messages(fake.channel_id, author_id=fake.bot.id)
                    )
                )
                await adapter.inflight.wait(10)
                status, text = await get(f"{url}/metrics")
                assert status == 200
                samples = scraped(text)
                post = (("method", "POST /channels/{id}/messages"), ("platform", "discord"))
                assert samples[("parley_answers_total", (("platform", "discord"),))] == 1
                assert samples[("parley_answers_in_flight", (("platform", "discord"),))] == 0
                assert samples[("parley_platform_rate_limited_total", post)] == 1
                assert samples[("parley_platform_writes_total", post)] >= 2

                await adapter.stop()
                status, body = await get(f"{url}/healthz")
                assert (status, body) == (
                    503,
                    {"ok": False, "problems": ["discord is not connected"]},
                )
        finally:
            await adapter.stop()
            await parley.close()


async def test_healthz_is_503_when_the_database_does_not_answer() -> None:
    async with serving(Health([], database_ping(MemoryStore()))) as url:
        assert await get(f"{url}/healthz") == (200, {"ok": True})
    async with serving(Health([], database_ping(DeadStore()))) as url:
        status, body = await get(f"{url}/healthz")
        assert status == 503
        assert body == {
            "ok": False,
            "problems": ["the database does not answer (ConnectionRefusedError)"],
        }


async def test_the_sql_store_is_pinged_with_a_query(tmp_path: Any) -> None:
    up = SqlStore(make_engine(f"sqlite+aiosqlite:///{tmp_path}/p.db"))
    down = SqlStore(make_engine(DOWN))
    try:
        assert await Health([], database_ping(up)).check() == (True, {"ok": True})
        healthy, body = await Health([], database_ping(down)).check()
        assert not healthy
        assert body["problems"][0].startswith("the database does not answer")
    finally:
        await up.close()
        await down.close()


async def test_slack_http_mode_answers_the_same_check_on_its_own_port() -> None:
    metrics = Metrics()
    async with FakeSlack() as slack:
        for store, expected in ((MemoryStore(), 200), (DeadStore(), 503)):
            parley = await build(
                CORE, store=store, llm=ScriptedModel(), redis=RedisSettings(), metrics=metrics
            )
            section = SlackSettings(  # type: ignore[call-arg]
                _env_file=None,
                bot_token=slack.bot_token,
                signing_secret=slack.signing_secret,
                mode="http",
                api_url=slack.base_url,
            )
            adapter = platforms.slack_adapter(parley, section, host="127.0.0.1", port=0)
            worker_health(parley, [adapter])
            await adapter.start()
            try:
                assert adapter.connected
                status, body = await get(f"http://127.0.0.1:{adapter.port}/healthz")
                assert status == expected and body["ok"] is (expected == 200)
            finally:
                await adapter.stop()
                await parley.close()
            assert not adapter.connected


async def test_slack_writes_and_429s_are_counted_by_method() -> None:
    metrics = Metrics()
    async with FakeSlack() as slack:
        parley = await build(
            CORE, store=MemoryStore(), llm=ScriptedModel(), redis=RedisSettings(), metrics=metrics
        )
        section = SlackSettings(  # type: ignore[call-arg]
            _env_file=None,
            bot_token=slack.bot_token,
            signing_secret=slack.signing_secret,
            mode="http",
            api_url=slack.base_url,
        )
        adapter = platforms.slack_adapter(parley, section, host="127.0.0.1", port=0)
        await adapter.start()
        try:
            slack.rate_limit("chat.stopStream")
            message = slack.add_message("C0GENERAL", f"<@{slack.bot_user_id}> hi", user="UALICE")
            event = {
                "type": "app_mention",
                "user": "UALICE",
                "text": message.text,
                "ts": message.ts,
                "channel": "C0GENERAL",
                "team": slack.team_id,
                "event_ts": message.ts,
            }
            url = f"http://127.0.0.1:{adapter.port}/slack/events"
            assert await slack.post_event(url, slack.event_body(event)) == 200
            await adapter.drain()
        finally:
            await adapter.stop()
            await parley.close()

    def value(name: str, method: str) -> float:
        labels = {"platform": "slack", "method": method}
        return metrics.registry.get_sample_value(name, labels) or 0.0

    assert value("parley_platform_rate_limited_total", "chat.stopStream") == 1
    assert value("parley_platform_writes_total", "chat.stopStream") == 2
    assert value("parley_platform_writes_total", "chat.startStream") == 1
    assert value("parley_platform_writes_total", "auth.test") == 0
    assert metrics.registry.get_sample_value("parley_answers_total", {"platform": "slack"}) == 1
