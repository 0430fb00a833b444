"""Metrics counted from outside the core: answers and errors from the service's events, the
write budget's waits and skips, Discord routes as labels."""

from __future__ import annotations

import asyncio

from bots.metrics import MeteredBudget, MeteredService, Metrics, discord_route
from core.budget import LocalBudget, Rate, admit
from core.delivery import Interval, deliver
from core.errors import RateLimited
from core.messages import Author, ConversationKey, Inbound
from core.settings import Settings
from tests.fakes.memory import MemoryStore, ScriptedModel

KEY = ConversationKey("console", "local", "room")


def service(metrics: Metrics, model: ScriptedModel) -> MeteredService:
    metered = MeteredService(MemoryStore(), model, Settings(_env_file=None))  # type: ignore[call-arg]
    metered.metrics = metrics
    return metered


class Shown:
    """A renderer that keeps what it was asked to show."""

    def __init__(self) -> None:
        self.final: str | None = None

    async def start(self) -> None:
        return None

    async def progress(self, text: str) -> None:
        return None

    async def finish(self, text: str) -> None:
        self.final = text

    async def fail(self, text: str) -> None:
        self.final = text


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_answers_and_errors_are_counted_by_platform_and_kind() -> None:
    metrics = Metrics()
    model = ScriptedModel(reply=lambda request: "fine", failures=[RateLimited("slow down")])
    metered = service(metrics, model)
    for n in range(3):
        inbound = Inbound(KEY, Author("U1"), f"question {n}", event_id=f"e{n}")
        await deliver(metered.answer(inbound), Shown(), Interval(0))
    assert (
        sample(metrics, "parley_answer_errors_total", platform="console", kind="rate_limited") == 1
    )
    assert sample(metrics, "parley_answers_total", platform="console") == 2
    assert sample(metrics, "parley_answers_in_flight", platform="console") == 0


async def test_a_redelivered_message_counts_nothing() -> None:
    metrics = Metrics()
    metered = service(metrics, ScriptedModel())
    inbound = Inbound(KEY, Author("U1"), "hello", event_id="same")
    for _ in range(2):
        await deliver(metered.answer(inbound), Shown(), Interval(0))
    assert sample(metrics, "parley_answers_total", platform="console") == 1


async def test_an_answer_cut_short_is_counted_as_interrupted_and_leaves_flight() -> None:
    metrics = Metrics()
    metered = service(metrics, ScriptedModel(reply=lambda request: "a b c d e"))
    events = metered.answer(Inbound(KEY, Author("U1"), "hello"))
    await anext(events)  # Accepted
    assert sample(metrics, "parley_answers_in_flight", platform="console") == 1
    await events.aclose()  # type: ignore[attr-defined]
    assert sample(metrics, "parley_answers_in_flight", platform="console") == 0
    assert (
        sample(metrics, "parley_answer_errors_total", platform="console", kind="interrupted") == 1
    )


async def test_the_budget_counts_skipped_progress_writes_and_times_final_waits() -> None:
    metrics = Metrics()
    metered = MeteredBudget(LocalBudget(), metrics)
    progress_rate = Rate(per_second=0.001, burst=2, reserve=1)
    assert await admit(metered, "slack:w:chat.update", progress_rate, final=False)
    assert not await admit(metered, "slack:w:chat.update", progress_rate, final=False)
    assert sample(metrics, "parley_progress_writes_skipped_total", platform="slack") == 1

    final_rate = Rate(per_second=20, burst=1, reserve=0)
    key = "discord:base:channel:1"
    assert await admit(metered, key, final_rate, final=True)
    assert sample(metrics, "parley_write_budget_wait_seconds_count", platform="discord") == 0
    await asyncio.gather(
        admit(metered, key, final_rate, final=True), admit(metered, key, final_rate, final=True)
    )
    assert sample(metrics, "parley_write_budget_wait_seconds_count", platform="discord") == 2
    assert sample(metrics, "parley_write_budget_wait_seconds_sum", platform="discord") > 0


def test_discord_routes_mask_ids_and_interaction_tokens() -> None:
    base = "http://127.0.0.1:1/api/v10"
    assert discord_route(f"{base}/channels/123456789012/messages") == "/channels/{id}/messages"
    assert (
        discord_route(f"{base}/webhooks/123456789012/aW50ZXJhY3Rpb24.secret/messages/@original")
        == "/webhooks/{id}/{token}/messages/@original"
    )
    assert (
        discord_route(f"{base}/interactions/123456789012/tok-abc/callback?with_response=true")
        == "/interactions/{id}/{token}/callback"
    )
    assert discord_route("https://cdn.discordapp.com/attachments/1/2/cat.png") is None
