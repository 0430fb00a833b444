"""In-memory fakes of the core's ports, for unit tests that run in milliseconds."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from core.errors import LLMError, Redelivered
from core.messages import ChannelKey, ConversationKey
from core.ports import (
    ChannelOverrides,
    ChatRequest,
    Completion,
    ConversationState,
    EventClaim,
    MemoryFact,
    Orphan,
    Planner,
    Speech,
    SpeechRequest,
    StoredMessage,
    TurnFacts,
    UsageEntry,
    UsageTotals,
)
from core.tokens import count_text


@dataclass
class _Message:
    id: int
    conversation_id: int
    role: str
    content: str
    token_count: int
    author_name: str
    status: str
    sent_at: datetime


@dataclass
class _Usage:
    channel: ChannelKey
    user_id: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    estimated: bool = False


class MemoryStore:
    """The Store port on dicts and lists."""

    def __init__(self) -> None:
        self.events: set[tuple[str, str]] = set()
        self.event_states: dict[tuple[str, str], str] = {}
        self.deliveries: dict[tuple[str, str], str] = {}
        self.conversations: dict[ConversationKey, ConversationState] = {}
        self.messages: list[_Message] = []
        self.overrides: dict[ChannelKey, ChannelOverrides] = {}
        self.usage: list[_Usage] = []
        self.memory: dict[ChannelKey, list[MemoryFact]] = {}
        self.feedback: dict[tuple[ChannelKey, str, str], bool] = {}
        self.recent_calls = 0
        self.pruned = 0
        self.locked: list[str] = []
        self._ids = itertools.count(1)

    async def claim_event(
        self,
        platform: str,
        event_id: str,
        *,
        settled: bool = True,
        request: str | None = None,
        conversation: str | None = None,
        sent_at: datetime | None = None,
        received: bool = False,
    ) -> bool:
        state = self.event_states.get((platform, event_id))
        if state == "received" and not received:  # one process: the handler takes it on
            self.event_states[(platform, event_id)] = "answered" if settled else "answering"
            return True
        if (platform, event_id) in self.events:
            return False
        self.events.add((platform, event_id))
        state = "received" if received else "answered" if settled else "answering"
        self.event_states[(platform, event_id)] = state
        return True

    async def settle_event(
        self, platform: str, event_id: str, state: str, *, delivery: str | None = None
    ) -> bool:
        self.event_states[(platform, event_id)] = state
        if delivery is not None:
            self.deliveries[(platform, event_id)] = delivery
        return True

    async def record_delivery(self, platform: str, event_id: str, delivery: str) -> None:
        self.deliveries[(platform, event_id)] = delivery

    async def orphans(self, platforms: Sequence[str], limit: int) -> list[Orphan]:
        return []  # one process: nobody else's answers to finish

    async def prune_events(self, older_than_seconds: float) -> int:
        self.pruned += 1
        return 0

    async def conversation(self, key: ConversationKey) -> ConversationState:
        if key not in self.conversations:
            self.conversations[key] = ConversationState(next(self._ids), "", 0, 0)
        return self.conversations[key]

    async def open_turn(
        self,
        key: ConversationKey,
        *,
        spender: str | None = None,
        plan: Planner | None = None,
        held: object | None = None,
    ) -> TurnFacts:
        memory = await self.channel_memory(key.channel_key)
        spent = None if spender is None else (await self.user_usage(key.platform, spender)).cost_usd
        facts = TurnFacts(
            await self.conversation(key),
            await self.channel_overrides(key.channel_key),
            tuple(fact.text for fact in memory),
            spent,
        )
        if plan is None:
            return facts
        planned = plan(facts)
        q = planned.question
        question_id = await self.add_message(
            facts.state.id,
            q.role,
            q.content,
            q.token_count,
            author_id=q.author_id,
            author_name=q.author_name,
            status=q.status,
            sent_at=q.sent_at,
            event=q.event,
        )
        history = await self.recent_messages(
            facts.state.id,
            facts.state.context_start,
            question_id,
            planned.history_rows,
            tokens=planned.history_tokens,
        )
        return replace(facts, question_id=question_id, history=tuple(history))

    def claims_at_once(self, key: ConversationKey, *, spender: bool) -> bool:
        return True

    async def claim_turn(
        self,
        key: ConversationKey,
        claim: EventClaim,
        *,
        spender: str | None = None,
        plan: Planner,
        held: object | None = None,
    ) -> TurnFacts | None:
        """The event claimed, then the turn opened (one process: nothing waits between)."""
        sent_at = claim.sent_at
        if not await self.claim_event(
            claim.platform,
            claim.event_id,
            settled=False,
            request=claim.request,
            conversation=claim.conversation,
            sent_at=sent_at,
        ):
            raise Redelivered(claim.event_id)
        return await self.open_turn(key, spender=spender, plan=plan, held=held)

    async def finish_turn(
        self,
        conversation_id: int,
        content: str,
        token_count: int,
        model: str,
        channel: ChannelKey,
        user_id: str,
        usage: Sequence[UsageEntry],
        *,
        sent_at: datetime | None = None,
        question_id: int | None = None,
        event: tuple[str, str] | None = None,
    ) -> int:
        if question_id is not None:
            await self.set_message_status(question_id, "complete")
        if event is not None:
            await self.settle_event(*event, "stored")
        await self.record_usage(channel, user_id, usage)
        return await self.add_message(
            conversation_id, "assistant", content, token_count, model=model, sent_at=sent_at
        )

    async def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        token_count: int,
        *,
        author_id: str = "",
        author_name: str = "",
        status: str = "complete",
        model: str | None = None,
        sent_at: datetime | None = None,
        event: tuple[str, str] | None = None,
    ) -> int:
        mid = next(self._ids)
        moment = sent_at or datetime.now(UTC)
        self.messages.append(
            _Message(mid, conversation_id, role, content, token_count, author_name, status, moment)
        )
        return mid

    async def set_message_status(self, message_id: int, status: str) -> None:
        for message in self.messages:
            if message.id == message_id:
                message.status = status

    async def recent_messages(
        self,
        conversation_id: int,
        after_id: int,
        before_id: int,
        limit: int,
        *,
        through: bool = False,
        tokens: int | None = None,
    ) -> list[StoredMessage]:
        """In conversation order, (sent_at, id), as the SQL store keeps it."""
        self.recent_calls += 1
        turns = sorted(
            (m for m in self.messages if m.conversation_id == conversation_id),
            key=lambda m: (m.sent_at, m.id),
        )
        place = {m.id: i for i, m in enumerate(turns)}
        low = place.get(after_id, -1)
        high = place.get(before_id, len(turns))
        if through and before_id in place:
            high += 1
        rows = [m for m in reversed(turns[low + 1 : high]) if m.status == "complete"][:limit]
        if tokens is not None:
            fitting, total = [], 0
            for m in rows:
                fitting.append(m)
                total += m.token_count
                if total > tokens:
                    break
            rows = fitting
        return [
            StoredMessage(m.id, m.role, m.content, m.token_count, m.author_name)
            for m in rows[:limit]
        ]

    async def set_summary(
        self, conversation_id: int, summary: str, summary_tokens: int, context_start: int
    ) -> None:
        for key, state in self.conversations.items():
            if state.id == conversation_id:
                self.conversations[key] = ConversationState(
                    state.id, summary, summary_tokens, context_start
                )

    @asynccontextmanager
    async def conversation_lock(
        self,
        name: str,
        *,
        sent_at: datetime | None = None,
        key: ConversationKey | None = None,
    ) -> AsyncIterator[object | None]:
        self.locked.append(name)
        yield None

    async def reset_conversation(self, key: ConversationKey) -> int:
        state = await self.conversation(key)
        before = len(self.messages)
        self.messages = [m for m in self.messages if m.conversation_id != state.id]
        self.conversations[key] = ConversationState(state.id, "", 0, 0)
        return before - len(self.messages)

    async def channel_overrides(self, channel: ChannelKey) -> ChannelOverrides:
        return self.overrides.get(channel, ChannelOverrides())

    async def save_channel_overrides(
        self, channel: ChannelKey, overrides: ChannelOverrides
    ) -> None:
        self.overrides[channel] = overrides

    async def channel_memory(self, channel: ChannelKey) -> list[MemoryFact]:
        return list(self.memory.get(channel, []))

    async def add_memory(self, channel: ChannelKey, text: str, *, author_id: str = "") -> int:
        fact = MemoryFact(next(self._ids), text)
        self.memory.setdefault(channel, []).append(fact)
        return fact.id

    async def remove_memory(self, channel: ChannelKey, fact_id: int) -> bool:
        facts = self.memory.get(channel, [])
        kept = [f for f in facts if f.id != fact_id]
        self.memory[channel] = kept
        return len(kept) < len(facts)

    async def record_usage(
        self, channel: ChannelKey, user_id: str, usage: Sequence[UsageEntry]
    ) -> None:
        for e in usage:
            self.usage.append(
                _Usage(
                    channel,
                    user_id,
                    e.model,
                    e.input_tokens,
                    e.output_tokens,
                    e.cost_usd,
                    e.estimated,
                )
            )

    def _totals(self, rows: list[_Usage]) -> UsageTotals:
        return UsageTotals(
            sum(r.input_tokens for r in rows),
            sum(r.output_tokens for r in rows),
            sum(r.cost_usd or 0.0 for r in rows),
            len(rows),
            sum(r.estimated for r in rows),
            sum(r.cost_usd is None for r in rows),
        )

    async def channel_usage(self, channel: ChannelKey) -> UsageTotals:
        return self._totals([r for r in self.usage if r.channel == channel])

    async def user_usage(self, platform: str, user_id: str) -> UsageTotals:
        return self._totals(
            [r for r in self.usage if r.channel.platform == platform and r.user_id == user_id]
        )

    async def record_feedback(
        self, channel: ChannelKey, message_id: str, user_id: str, helpful: bool
    ) -> None:
        self.feedback[(channel, message_id, user_id)] = helpful

    async def channel_feedback(self, channel: ChannelKey) -> tuple[int, int]:
        votes = [v for (c, _, _), v in self.feedback.items() if c == channel]
        return sum(votes), len(votes) - sum(votes)

    async def close(self) -> None:
        return None


@dataclass
class ScriptedModel:
    """A ChatModel whose answers come from ``reply(request)``; records every request.

    ``failures`` is a list of errors raised by the next calls, in order.
    """

    reply: Callable[[ChatRequest], str] = lambda request: "ok"
    requests: list[ChatRequest] = field(default_factory=list)
    failures: list[LLMError] = field(default_factory=list)
    fail_after_deltas: int | None = None
    speeches: list[SpeechRequest] = field(default_factory=list)

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Completion]:
        self.requests.append(request)
        if self.failures:
            raise self.failures.pop(0)
        text = self.reply(request)
        words = text.split(" ")
        for i, word in enumerate(words):
            if self.fail_after_deltas is not None and i >= self.fail_after_deltas:
                from core.errors import BrokenStream

                raise BrokenStream("The answer was cut off.")
            yield word if i == 0 else " " + word
        prompt = sum(count_text(m.text) for m in request.messages)
        yield Completion(text, request.model, prompt, count_text(text), "stop")

    async def close(self) -> None:
        return None

    async def speak(self, request: SpeechRequest) -> Speech:
        """A few bytes standing for audio; records the request; ``failures`` apply too."""
        self.speeches.append(request)
        if self.failures:
            raise self.failures.pop(0)
        return Speech(b"ID3fake-audio", request.audio_format, request.model, None, None)
