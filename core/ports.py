"""The core's ports: what it needs from storage and from the model, as small Protocols with
plain records.

``core.store.sql.SqlStore`` implements ``Store`` on SQLAlchemy and ``core.llm.OpenAIChat``
implements ``ChatModel`` on the ``openai`` client; unit tests use in-memory fakes of both.
Nothing here knows a wire format or a database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from core.messages import ChannelKey, ConversationKey

# --- the model ------------------------------------------------------------------------------

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ImageInput:
    """An image the model is shown, as raw bytes; the model's adapter encodes it for the wire."""

    mime_type: str
    data: bytes


class PromptMessage(NamedTuple):
    """One message of a prompt: who says it, its text, and the images that come with it.

    A named tuple rather than a frozen dataclass: a turn makes one per turn of its history,
    and a tuple is made several times faster."""

    role: Role
    text: str
    images: tuple[ImageInput, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One call to the model."""

    model: str
    messages: Sequence[PromptMessage]
    temperature: float
    max_output_tokens: int
    json_mode: bool = False


@dataclass(frozen=True, slots=True)
class Completion:
    """The end of a streamed answer: the whole text, the model that wrote it (as the server
    named it) and what it cost in tokens.

    ``estimated``: the server reported no usage, so Parley counted the tokens itself.
    ``window``: the context window the server reports for that model, when it says.
    """

    text: str
    model: str
    input_tokens: int
    output_tokens: int
    finish_reason: str
    estimated: bool = False
    window: int | None = None


class ChatModel(Protocol):
    """The model port the conversation service talks to; fakes implement it in unit tests."""

    def stream(self, request: ChatRequest) -> AsyncIterator[str | Completion]:
        """Yield text deltas (str) as they arrive, then exactly one Completion.

        Raise ``core.errors.LLMError`` subclasses on failure.
        """
        ...


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    """Text to read aloud: the speech model, its voice and the audio format (mp3, opus)."""

    text: str
    model: str
    voice: str
    audio_format: str = "mp3"


@dataclass(frozen=True, slots=True)
class Speech:
    """The audio of a ``SpeechRequest``: its bytes, their format (the file extension: mp3,
    opus, wav), the model that spoke (as the server named it) and the tokens the server
    reported, None when it did not say."""

    audio: bytes
    audio_format: str
    model: str
    input_tokens: int | None = None
    output_tokens: int | None = None


@runtime_checkable
class SpeechModel(Protocol):
    """Text to speech, for ``speak``; ``core.llm.OpenAIChat`` implements it too."""

    async def speak(self, request: SpeechRequest) -> Speech:
        """The audio of ``request``; raise ``core.errors.LLMError`` subclasses on failure."""
        ...


# --- storage --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelOverrides:
    """A channel's own settings; None means the configured default applies."""

    system_prompt: str | None = None
    model: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    json_mode: bool | None = None


@dataclass(frozen=True, slots=True)
class MemoryFact:
    """One fact a channel keeps in every prompt (``remember``); ``id`` is the store's."""

    id: int
    text: str


class StoredMessage(NamedTuple):
    """A turn as context assembly needs it: a row of the history read, made straight from the
    database's row (a named tuple: a turn reads its whole history, one of these per turn)."""

    id: int
    role: Role
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
class Orphan:
    """A claimed event whose worker died before it was answered and shown, now taken over:
    the question as the core got it (``request``, JSON), what its answer had shown
    (``delivery``, the adapter's JSON record, None if nothing), and the stored answer when it
    was answered but maybe not shown (else it is asked again)."""

    platform: str
    event_id: str
    request: str
    delivery: str | None
    answer: str | None


@dataclass(frozen=True, slots=True)
class TurnFacts:
    """What answering a message needs to know first, read together: the conversation, its
    channel's settings and memory, and (when asked) what the person has spent so far."""

    state: ConversationState
    overrides: ChannelOverrides
    memory: tuple[str, ...] = ()
    spent_usd: float | None = None
    # With a TurnPlan: the question's id, and the newest turns before it that fit the plan's
    # room (newest first, the first that does not fit included, as ``recent_messages``).
    question_id: int | None = None
    history: tuple[StoredMessage, ...] = ()


@dataclass(frozen=True, slots=True)
class NewTurn:
    """A turn to store (``Store.add_message``'s arguments)."""

    role: Role
    content: str
    token_count: int
    author_id: str = ""
    author_name: str = ""
    status: str = "complete"
    sent_at: datetime | None = None
    event: tuple[str, str] | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class TurnPlan:
    """What to store and read once a turn's facts are known: the question, and the room for
    the history before it (tokens, and at most how many turns)."""

    question: NewTurn
    history_tokens: int
    history_rows: int


Planner = Callable[[TurnFacts], TurnPlan]


@dataclass(frozen=True, slots=True)
class EventClaim:
    """A turn's event, to be claimed as being answered by the turn's first transaction
    (``Store.claim_turn``; ``claim_event(settled=False)``'s arguments)."""

    platform: str
    event_id: str
    request: str | None = None
    conversation: str | None = None
    sent_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class UsageEntry:
    """Tokens and cost of one model call; ``cost_usd`` is None when the model has no known
    price, ``estimated`` when Parley counted the tokens because the server did not say."""

    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Sums over ledger entries: ``cost_usd`` adds up the priced calls only, and the calls
    with estimated tokens or no known price are counted apart so a reader knows."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    turns: int = 0
    estimated_calls: int = 0
    unpriced_calls: int = 0


class Store(Protocol):
    """Persistence of conversations, settings, usage and processed event ids."""

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
        """Record ``event_id``; True if it was new, False if it was already handled.

        ``settled=False`` claims it as being answered until ``settle_event``: a redelivery
        of it is then not dropped if the worker that claimed it died meanwhile, and with
        ``request`` (the question, JSON) another worker can finish it (``orphans``). With
        ``conversation`` and ``sent_at`` it waits its turn in that order.

        ``received=True`` claims it on arrival, before the platform is told it arrived (its
        ``request`` then is what the adapter received, ``Resumed.received``); the handler's
        own claim in the same worker then takes it on, a redelivery meanwhile is dropped."""
        ...

    async def settle_event(
        self, platform: str, event_id: str, state: str, *, delivery: str | None = None
    ) -> bool:
        """How a claimed event ended: "answered" (and shown) or "failed"; False when this
        worker no longer holds the claim (another took it over). ``delivery``: what the
        answer showed in the end (``record_delivery``), kept by the same statement."""
        ...

    async def record_delivery(self, platform: str, event_id: str, delivery: str) -> None:
        """What the answer to a claimed event has shown so far (the adapter's JSON record)."""
        ...

    async def orphans(self, platforms: Sequence[str], limit: int) -> list[Orphan]:
        """Take over up to ``limit`` claims on ``platforms`` whose worker died before their
        answer was shown; each is this worker's to finish from now on."""
        ...

    async def prune_events(self, older_than_seconds: float) -> int:
        """Forget event ids recorded more than ``older_than_seconds`` ago; returns how many."""
        ...

    async def conversation(self, key: ConversationKey) -> ConversationState:
        """The conversation at ``key``, created if it does not exist."""
        ...

    async def open_turn(
        self,
        key: ConversationKey,
        *,
        spender: str | None = None,
        plan: Planner | None = None,
        held: object | None = None,
    ) -> TurnFacts:
        """The conversation (created if needed), its channel's settings and memory, and with
        ``spender`` (a user id on ``key``'s platform) their spending: one transaction.

        With ``plan``, called with those facts (it may raise: nothing is stored then), the
        question it returns is stored and the history before it read, in the same transaction.
        ``held``: what ``conversation_lock`` gave the turn (its lock is taken here, then).
        """
        ...

    def claims_at_once(self, key: ConversationKey, *, spender: bool) -> bool:
        """Whether ``claim_turn`` in ``key`` (``spender``: with a budget to read) claims its
        event before waiting for anything (the service's own lock of ``key`` aside)."""
        ...

    async def claim_turn(
        self,
        key: ConversationKey,
        claim: EventClaim,
        *,
        spender: str | None = None,
        plan: Planner,
        held: object | None = None,
    ) -> TurnFacts | None:
        """``claim_event(settled=False)`` and ``open_turn`` in one transaction: the turn's
        facts, its question stored and the history before it read.

        ``Redelivered`` when the event is not this worker's to answer: nothing is stored.
        None when the event was claimed on its own but its turn must wait for its
        conversation: ``open_turn`` then. An error of ``plan`` is raised with the event
        claimed."""
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
        *,
        sent_at: datetime | None = None,
        question_id: int | None = None,
        event: tuple[str, str] | None = None,
    ) -> int:
        """Store a complete assistant turn and charge its usage, atomically; returns its id.

        ``sent_at`` places it in the conversation: give its question's, so it follows it.
        ``question_id``: the question's turn, "pending" until now, becomes complete with it;
        ``event``: the claimed (platform, event id) it answers, "stored" until shown."""
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
        sent_at: datetime | None = None,
        event: tuple[str, str] | None = None,
    ) -> int:
        """Store one turn and return its id. Turns are ordered by ``sent_at`` (now when not
        given), then by id: a message sent earlier comes first even if it was stored later.
        ``event``: the claim whose question this is."""
        ...

    async def set_message_status(self, message_id: int, status: str) -> None:
        """Mark a turn (e.g. "failed": kept on record, left out of the context)."""
        ...

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
        """Complete turns after turn ``after_id`` and before turn ``before_id`` (or up to and
        including it, ``through``), in conversation order (``sent_at``, then id), newest first,
        at most ``limit``. An id that names no turn of the conversation (0) sets no bound.

        With ``tokens``, only as many as fit in that many tokens, and the first that does not
        (so a context is read in one call, however short its turns)."""
        ...

    async def set_summary(
        self, conversation_id: int, summary: str, summary_tokens: int, context_start: int
    ) -> None: ...

    def conversation_lock(
        self,
        name: str,
        *,
        sent_at: datetime | None = None,
        key: ConversationKey | None = None,
    ) -> AbstractAsyncContextManager[object | None]:
        """Hold ``name`` exclusively across every worker sharing this store; released when the
        block ends, or soon after a worker dies, and holding no connection meanwhile. With
        ``sent_at`` (the question's), claimed questions sent earlier go first. A store only one
        process can use (SQLite, memory) may make this a no-op: the service's in-process lock
        is enough. ``key``: the conversation a turn holds it for, whose block begins with
        ``open_turn`` (a store may read the turn's facts with the lock, and give it back as
        the turn ends).

        For a turn it may also give (``as``) what ``open_turn`` is then given as ``held``: the
        lock is not taken yet, but by ``open_turn``'s first statement, which waits its turn as
        the lock would have (this process's other turns included: no in-process lock then)."""
        ...

    async def reset_conversation(self, key: ConversationKey) -> int:
        """Forget a conversation's turns and summary; returns how many turns were removed."""
        ...

    async def channel_overrides(self, channel: ChannelKey) -> ChannelOverrides: ...

    async def save_channel_overrides(
        self, channel: ChannelKey, overrides: ChannelOverrides
    ) -> None: ...

    async def channel_memory(self, channel: ChannelKey) -> list[MemoryFact]:
        """The facts ``channel`` remembers, oldest first (the order ``memory`` numbers them)."""
        ...

    async def add_memory(self, channel: ChannelKey, text: str, *, author_id: str = "") -> int:
        """Remember one more fact for ``channel``; returns its id."""
        ...

    async def remove_memory(self, channel: ChannelKey, fact_id: int) -> bool:
        """Forget fact ``fact_id`` of ``channel``; False when it was already gone."""
        ...

    async def record_usage(
        self, channel: ChannelKey, user_id: str, usage: Sequence[UsageEntry]
    ) -> None: ...

    async def channel_usage(self, channel: ChannelKey) -> UsageTotals: ...

    async def user_usage(self, platform: str, user_id: str) -> UsageTotals: ...

    async def record_feedback(
        self, channel: ChannelKey, message_id: str, user_id: str, helpful: bool
    ) -> None:
        """Record what ``user_id`` thinks of the answer ``message_id`` (the platform's id of
        the message); a second click by the same person replaces the first."""
        ...

    async def channel_feedback(self, channel: ChannelKey) -> tuple[int, int]:
        """How many (helpful, unhelpful) ratings the answers in ``channel`` got."""
        ...

    async def close(self) -> None: ...
