"""The core's ports: what it needs from storage, as a small Protocol with plain records.

``core.store.sql.SqlStore`` implements it on SQLAlchemy; unit tests use an in-memory fake.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from core.messages import ChannelKey, ConversationKey


@dataclass(frozen=True, slots=True)
class ChannelOverrides:
    """A channel's own settings; None means the configured default applies."""

    system_prompt: str | None = None
    model: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    json_mode: bool | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A turn as context assembly needs it."""

    id: int
    role: str
    content: str
    token_count: int
    author_name: str = ""


@dataclass(frozen=True, slots=True)
class ConversationState:
    """A conversation's id and rolling summary of turns no longer sent verbatim."""

    id: int
    summary: str
    summary_tokens: int
    context_start: int


@dataclass(frozen=True, slots=True)
class UsageEntry:
    """Tokens and cost of one model call."""

    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class UsageTotals:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    turns: int = 0


class Store(Protocol):
    """Persistence of conversations, settings, usage and processed event ids."""

    async def claim_event(self, platform: str, event_id: str) -> bool:
        """Record ``event_id``; True if it was new, False if it was already handled."""
        ...

    async def prune_events(self, older_than_seconds: float) -> int:
        """Forget event ids recorded more than ``older_than_seconds`` ago; returns how many."""
        ...

    async def conversation(self, key: ConversationKey) -> ConversationState:
        """The conversation at ``key``, created if it does not exist."""
        ...

    async def open_turn(self, key: ConversationKey) -> tuple[ConversationState, ChannelOverrides]:
        """The conversation (created if needed) and its channel's settings, in one round trip."""
        ...

    async def finish_turn(
        self,
        conversation_id: int,
        content: str,
        token_count: int,
        model: str,
        channel: ChannelKey,
        user_id: str,
        usage: Sequence[UsageEntry],
    ) -> int:
        """Store a complete assistant turn and charge its usage, atomically; returns its id."""
        ...

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
    ) -> int:
        """Store one turn and return its id."""
        ...

    async def set_message_status(self, message_id: int, status: str) -> None:
        """Mark a turn (e.g. "failed": kept on record, left out of the context)."""
        ...

    async def recent_messages(
        self, conversation_id: int, after_id: int, before_id: int, limit: int
    ) -> list[StoredMessage]:
        """Complete turns with after_id < id < before_id, newest first, at most ``limit``."""
        ...

    async def set_summary(
        self, conversation_id: int, summary: str, summary_tokens: int, context_start: int
    ) -> None: ...

    def conversation_lock(self, name: str) -> AbstractAsyncContextManager[None]:
        """Hold ``name`` exclusively across every worker sharing this store, waiters in order;
        released when the block ends, or when a worker dies."""
        ...

    async def reset_conversation(self, key: ConversationKey) -> int:
        """Forget a conversation's turns and summary; returns how many turns were removed."""
        ...

    async def channel_overrides(self, channel: ChannelKey) -> ChannelOverrides: ...

    async def save_channel_overrides(
        self, channel: ChannelKey, overrides: ChannelOverrides
    ) -> None: ...

    async def record_usage(
        self, channel: ChannelKey, user_id: str, usage: Sequence[UsageEntry]
    ) -> None: ...

    async def channel_usage(self, channel: ChannelKey) -> UsageTotals: ...

    async def user_usage(self, platform: str, user_id: str) -> UsageTotals: ...

    async def close(self) -> None: ...
