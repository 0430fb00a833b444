"""The conversation service: one inbound message in, a stream of reply events out.

It serialises work per conversation, stores the user turn before calling the model, streams the
answer, and stores the assistant turn with its usage only once it is complete.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import Any

from core import commands, permissions, recovery, sentences, speech
from core.context import (
    Context,
    build_context,
    fold_point,
    history_room,
    memory_block,
    newest_turns,
    page_rows,
    speaker,
    summary_message,
    token_budget,
    with_memory,
)
from core.deadline import WaitDeadline
from core.errors import (
    BadCommand,
    ClaimLost,
    ContextTooLong,
    EmptyAnswer,
    InvalidJSONReply,
    ModelTimeout,
    OverBudget,
    Redelivered,
    UserFacingError,
)
from core.messages import (
    Accepted,
    Author,
    ChannelKey,
    CommandReply,
    ConversationKey,
    FinalText,
    Inbound,
    Notice,
    ReplyEvent,
    TextDelta,
    UsageReport,
    UserError,
    Withdrawn,
)
from core.ports import (
    ChannelOverrides,
    ChatModel,
    ChatRequest,
    Completion,
    ConversationState,
    EventClaim,
    ImageInput,
    NewTurn,
    PromptMessage,
    SpeechModel,
    SpeechRequest,
    Store,
    StoredMessage,
    TurnFacts,
    TurnPlan,
    UsageEntry,
    UsageTotals,
)
from core.pricing import cost_usd, speech_cost_usd, window_for
from core.sentences import GENERIC_ERROR
from core.settings import Settings
from core.throttle import MessageRate, UserRate
from core.tokens import count_message, count_text

log = logging.getLogger("parley.core")

# What Parley tells the model (never shown to a person as such).
JSON_INSTRUCTION = "Respond with a single valid JSON object and nothing else."
SUMMARY_PROMPT = (
    "Summarise the conversation below for someone who will continue it: keep names, decisions, "
    "open questions, facts and code identifiers; be concise; use Markdown bullet points."
)
VISION_MODELS = ("gpt-4o", "gpt-4.1", "gpt-4-turbo", "gpt-4-vision", "gpt-5", "o1", "o3", "o4")
EVENT_MEMORY_SECONDS = 7 * 24 * 3600
PRUNE_EVERY = 1000
# Turns folded into the summary at once are capped so the summary request stays cheap.
SUMMARY_INPUT_TOKENS = 12000
# The least output a request may ask for when a small context window caps it.
MIN_OUTPUT_TOKENS = 256
# ``speak`` looks this far back (newest first) for the conversation's last answer.
SPEAK_LOOKBACK = 20


def json_retry_prompt(error: json.JSONDecodeError) -> str:
    """Asks the model once more for JSON, saying what was wrong with its reply."""
    return (
        f"That was not valid JSON ({error.msg} at position {error.pos}). "
        "Reply again with only one valid JSON object."
    )


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """A channel's effective settings: its overrides on top of the configured defaults."""

    system_prompt: str
    model: str
    temperature: float
    max_output_tokens: int
    json_mode: bool


@dataclass(frozen=True, slots=True)
class CommandCall:
    """One command as its handler sees it: where, by whom, its argument text, and (for
    ``summarize``) the messages the adapter read where it was given."""

    key: ConversationKey
    author: Author
    args: str
    transcript: str | None = None


Assemble = Callable[[ConversationState, int], Awaitable[Context]]
# A turn's question and conversation until its plan and ``open_turn`` give them.
_NO_QUESTION = PromptMessage("user", "")
_NO_STATE = ConversationState(0, "", 0, 0)


@dataclass(slots=True)
class _Streamed:
    """What one answer's stream gave so far: how many deltas, and its Completion."""

    completion: Completion | None = None
    deltas: int = 0


class _Turn:
    """Plans one answer's first transaction (``Store.open_turn``): given the facts, checks the
    person's budget and the message, and says what question to store and how much history to
    read. Raises the user's error before anything is stored; ``notes`` are said either way."""

    def __init__(self, service: ConversationService, inbound: Inbound) -> None:
        self.service = service
        self.inbound = inbound
        self.notes: list[str] = []
        self.config: ChannelConfig
        self.system_prompt = ""
        self.user = _NO_QUESTION
        self.user_tokens = 0
        self.budget = 0
        self.state = _NO_STATE
        self.question_id = 0
        self.first_page: Sequence[StoredMessage] | None = None

    def plan(self, facts: TurnFacts) -> TurnPlan:
        service, inbound = self.service, self.inbound
        self.config = config = service._config(facts.overrides)
        limit = service.settings.parley_user_budget_usd
        if limit is not None and facts.spent_usd is not None and facts.spent_usd >= limit:
            raise OverBudget(sentences.over_budget(facts.spent_usd, limit))
        text, images, self.notes = service._user_content(inbound, config.model)
        if not text and not images:
            raise BadCommand(sentences.EMPTY_MESSAGE)
        self.system_prompt = service._system_prompt(config, facts.memory)
        self.user_tokens = count_message(text, images=len(images))
        self.user = PromptMessage("user", text, images)
        self.budget = service._budget(config)
        # Over-long input is rejected before it is stored, so it cannot crowd out the history.
        room = history_room(facts.state, self.system_prompt, self.user_tokens, self.budget)
        key = inbound.key
        # "pending" until its answer is stored with it: a question whose worker died before
        # answering never reaches a later context as a dangling turn.
        question = NewTurn(
            "user",
            text,
            self.user_tokens,
            author_id=inbound.author.id,
            author_name=inbound.author.name,
            status="pending",
            sent_at=inbound.sent_at,
            event=(key.platform, inbound.event_id) if inbound.event_id else None,
        )
        return TurnPlan(question, room, page_rows(room))

    def opened(self, facts: TurnFacts) -> int:
        """Take in what ``Store.open_turn`` stored and read; returns the question's id."""
        assert facts.question_id is not None, "open_turn stored no question"
        self.state, self.question_id = facts.state, facts.question_id
        self.first_page = facts.history
        return facts.question_id

    async def assemble(self, current: ConversationState, budget: int) -> Context:
        """The turn's context from ``current`` within ``budget`` (an ``Assemble``)."""
        page, self.first_page = self.first_page, None  # read with the question; later anew
        if current != self.state or budget != self.budget:
            page = None
        return await build_context(
            self.service.store,
            current,
            system_prompt=self.system_prompt,
            user=self.user,
            user_tokens=self.user_tokens,
            user_turn_id=self.question_id,
            budget=budget,
            speaker_name=self.inbound.author.name,
            first_page=page,
        )


class ConversationLocks:
    """One asyncio lock per conversation, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[ConversationKey, _Shared] = {}

    def hold(self, key: ConversationKey) -> _Holding:
        """``async with``: ``key``'s lock held for the block."""
        return _Holding(self._locks, key)

    def busy(self, key: ConversationKey) -> bool:
        """Whether a turn holds ``key`` or waits for it."""
        return key in self._locks

    def __len__(self) -> int:
        return len(self._locks)


class _Shared:
    """A conversation's lock and how many hold or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class _Holding:
    """Holding one conversation's lock (``ConversationLocks.hold``): a plain context manager
    rather than a generator's, as every turn takes one."""

    __slots__ = ("_key", "_locks", "_shared")

    def __init__(self, locks: dict[ConversationKey, _Shared], key: ConversationKey) -> None:
        self._locks, self._key = locks, key
        self._shared: _Shared | None = None

    async def __aenter__(self) -> None:
        shared = self._locks.get(self._key)
        if shared is None:
            shared = self._locks[self._key] = _Shared()
        shared.users += 1
        self._shared = shared
        try:
            await shared.lock.acquire()
        except BaseException:
            self._left(shared)
            raise

    async def __aexit__(self, *_exc: object) -> None:
        shared = self._shared
        assert shared is not None
        shared.lock.release()
        self._left(shared)

    def _left(self, shared: _Shared) -> None:
        shared.users -= 1
        if shared.users <= 0:
            del self._locks[self._key]


class _Exclusive:
    """``ConversationService.exclusive``: the store's lock, then (unless the store's gave
    something for ``open_turn``) this process's; a plain context manager, as every turn
    takes one."""

    __slots__ = ("_holding", "_key", "_local", "_lock")

    def __init__(
        self,
        lock: AbstractAsyncContextManager[object | None],
        local: ConversationLocks,
        key: ConversationKey,
    ) -> None:
        self._lock, self._local, self._key = lock, local, key
        self._holding: _Holding | None = None

    async def __aenter__(self) -> object | None:
        held = await self._lock.__aenter__()
        if held is not None:
            return held
        holding = self._local.hold(self._key)
        try:
            await holding.__aenter__()
        except BaseException as exc:
            await self._lock.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._holding = holding
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        if self._holding is not None:  # released first, as nested blocks would
            await self._holding.__aexit__(kind, exc, tb)
        return await self._lock.__aexit__(kind, exc, tb)


class ConversationService:
    """Answers messages and runs commands for every adapter."""

    def __init__(
        self,
        store: Store,
        llm: ChatModel,
        settings: Settings,
        *,
        rate: UserRate | None = None,
        speech: SpeechModel | None = None,
    ) -> None:
        self.store = store
        self.llm = llm
        # Reads answers aloud (``speak``): the chat model's client when it can, as OpenAI's does.
        self.speech = speech if speech is not None else _speech_of(llm)
        self.settings = settings
        self.locks = ConversationLocks()
        # Context windows the model server reported or revealed by an error, in Parley's
        # tokens, by the model name asked for; they take precedence over the built-in table.
        self.windows: dict[str, int] = {}
        self._claims = 0
        per_minute = settings.parley_user_messages_per_minute
        # Shared by every worker when given (Redis); else counted in this process.
        self.rate: UserRate | None = rate or (MessageRate(per_minute) if per_minute else None)

    def exclusive(
        self,
        key: ConversationKey,
        sent_at: datetime | None = None,
        *,
        turn: bool = False,
    ) -> AbstractAsyncContextManager[object | None]:
        """Hold ``key``'s conversation: one turn at a time, in this process and across workers
        (questions sent earlier first, given ``sent_at``).

        The store decides what "across workers" takes (a lease on PostgreSQL,
        nothing on a database only one process uses). It is taken first: a question waiting
        for it holds nothing, so an earlier question, in this worker or another, can go first.

        ``turn``: the block opens a turn (``Store.open_turn``) first thing; what the store
        gives then is for ``open_turn``'s ``held``: the store takes its lock there, holding
        this process's turns apart too.
        """
        lock = self.store.conversation_lock(str(key), sent_at=sent_at, key=key if turn else None)
        return _Exclusive(lock, self.locks, key)

    # --- settings -----------------------------------------------------------------------

    async def channel_config(self, channel: ChannelKey) -> ChannelConfig:
        return self._config(await self.store.channel_overrides(channel))

    def _config(self, o: ChannelOverrides) -> ChannelConfig:
        """A channel's overrides on top of the configured defaults."""
        s = self.settings
        return ChannelConfig(
            system_prompt=o.system_prompt
            if o.system_prompt is not None
            else s.parley_system_prompt,
            model=o.model or s.parley_model,
            temperature=o.temperature if o.temperature is not None else s.parley_temperature,
            max_output_tokens=o.max_output_tokens or s.parley_max_output_tokens,
            json_mode=bool(o.json_mode) if o.json_mode is not None else False,
        )

    def _budget(self, config: ChannelConfig) -> int:
        s = self.settings
        window = self.windows.get(config.model) or window_for(config.model, s.parley_model_window)
        return token_budget(s.parley_input_budget, window, self._output_tokens(config))

    def _output_tokens(self, config: ChannelConfig) -> int:
        """The output limit of a request: the channel's, but at most a quarter of a small
        window the server revealed, so the history keeps room in it."""
        learned = self.windows.get(config.model)
        if learned is None:
            return config.max_output_tokens
        return min(config.max_output_tokens, max(MIN_OUTPUT_TOKENS, learned // 4))

    @property
    def prices(self) -> Mapping[str, tuple[float, float]]:
        return self.settings.parley_prices

    # --- answering ----------------------------------------------------------------------

    async def claim_event(self, platform: str, event_id: str, **claim: Any) -> bool:
        """True the first time ``event_id`` is seen on ``platform`` (persisted); see
        ``Store.claim_event`` for the rest."""
        await self._claiming()
        return await self.store.claim_event(platform, event_id, **claim)

    async def _claiming(self) -> None:
        """Count a claim; old event ids are forgotten now and then."""
        self._claims += 1
        if self._claims % PRUNE_EVERY == 0:
            await self._prune_events()

    async def _prune_events(self) -> None:
        """Forget old event ids (platforms redeliver within minutes; a week is plenty).

        Housekeeping: a failure is logged and never fails the message that triggered it.
        """
        try:
            await self.store.prune_events(EVENT_MEMORY_SECONDS)
        except Exception:
            log.warning("pruning old event ids failed", exc_info=True)

    async def answer(
        self,
        inbound: Inbound,
        *,
        resumed: bool = False,
        slot: AbstractAsyncContextManager[Any] | None = None,
    ) -> AsyncIterator[ReplyEvent]:
        """Answer ``inbound``: deltas, then FinalText and UsageReport, or one UserError.

        A redelivered event (same ``event_id``) yields nothing, unless the worker that was
        answering it died before it was answered. ``resumed``: this worker took the claim
        over from a dead one (``core.recovery``) and asks again.
        """
        if inbound.sent_at is None:  # ordered by when it reached the core, then
            inbound = replace(inbound, sent_at=datetime.now(UTC))
        claim = self._claim_with_turn(inbound, resumed)
        admitted = True if claim is not None else await self._admitted(inbound, resumed)
        if admitted is not True:
            if admitted is not False:
                yield admitted
            return
        # An event claimed (on its own above, or by the turn's first transaction) that gets
        # no answer is settled as failed, whatever ended it (refused, an error, cancelled);
        # settling touches only this worker's claim, so one the turn never made is left alone.
        # A redelivery is not: its claim is another turn's.
        owed, answered = True, False
        try:
            if claim is None:
                refused = await self._over_rate(inbound)
                if refused is not None:
                    yield refused
                    return
                yield Accepted()
            try:
                async with self.exclusive(inbound.key, inbound.sent_at, turn=True) as held:
                    async for event in self._answer(inbound, held, slot or nullcontext(), claim):
                        answered = answered or isinstance(event, FinalText)
                        yield event
            except Redelivered:
                owed = False
                log.info("dropping redelivered event %s on %s", inbound.event_id, inbound.key)
            except ClaimLost:
                log.warning(
                    "answer in %s was taken over by another worker; giving it up", inbound.key
                )
                yield Withdrawn()
            except UserFacingError as exc:
                log.info("answer in %s ended: %s (%s)", inbound.key, exc.code, exc.detail or "")
                yield UserError(exc.user_message, exc.code)
            except Exception:
                log.exception("answer in %s failed", inbound.key)
                yield UserError(GENERIC_ERROR, "internal")
        finally:
            if inbound.event_id and owed and not answered:
                await self._settle_failed(inbound)

    async def _admitted(self, inbound: Inbound, resumed: bool) -> bool | UserError:
        """Whether ``inbound`` is this worker's to answer (its event claimed on its own):
        False for a redelivered event (nothing is said), or the sentence if the check failed."""
        try:
            if await self._claimed(inbound, resumed):
                return True
        except Exception:
            log.exception("checking event %s in %s failed", inbound.event_id, inbound.key)
            return UserError(GENERIC_ERROR, "internal")
        log.info("dropping redelivered event %s on %s", inbound.event_id, inbound.key)
        return False

    def _claim_with_turn(self, inbound: Inbound, resumed: bool) -> EventClaim | None:
        """``inbound``'s event, when its turn's first transaction claims it
        (``Store.claim_turn``): when neither the conversation nor anything else is waited for
        before (a message waiting its turn shows it is accepted, so its event is claimed
        first), and no message rate is counted (a redelivery is not)."""
        if not inbound.event_id or resumed or self.rate is not None:
            return None
        key = inbound.key
        spender = self.settings.parley_user_budget_usd is not None
        if self.locks.busy(key) or not self.store.claims_at_once(key, spender=spender):
            return None
        return self._event_claim(inbound)

    def _event_claim(self, inbound: Inbound) -> EventClaim:
        assert inbound.event_id is not None
        return EventClaim(
            inbound.key.platform,
            inbound.event_id,
            request=recovery.request_of(inbound),
            conversation=str(inbound.key),
            sent_at=inbound.sent_at,
        )

    async def _claimed(self, inbound: Inbound, resumed: bool) -> bool:
        """Whether this worker answers ``inbound``: False for an event claimed before (a
        redelivery), True without an event id or when ``resumed``."""
        if not inbound.event_id or resumed:
            return True
        claim = self._event_claim(inbound)
        return await self.claim_event(
            claim.platform,
            claim.event_id,
            settled=False,
            request=claim.request,
            conversation=claim.conversation,
            sent_at=claim.sent_at,
        )

    async def _over_rate(self, inbound: Inbound) -> UserError | None:
        """What a person over their message rate is told, or None (the message is counted)."""
        if self.rate is None:
            return None
        wait = await self.rate.check(inbound.key.platform, inbound.author.id)
        if wait <= 0:
            return None
        return UserError(sentences.user_rate_limited(self.rate.limit, wait), "user_rate_limited")

    def journal(self, inbound: Inbound) -> recovery.Journal | None:
        """Where ``deliver`` keeps what the answer to ``inbound`` shows (claimed messages)."""
        if not inbound.event_id:
            return None
        return recovery.Journal(self.store, inbound.key.platform, inbound.event_id)

    async def replay(self, inbound: Inbound, answer: str) -> AsyncIterator[ReplyEvent]:
        """An answer stored by a worker that died before showing it, shown as it was (holding
        its conversation until it is shown, as the answer would have)."""
        yield Accepted()
        async with self.exclusive(inbound.key, inbound.sent_at):
            yield FinalText(answer, "")

    async def settle_received(self, platform: str, event_id: str, state: str) -> None:
        """An event claimed on arrival (``claim_event(received=True)``) that its handler did
        not take on (nothing to answer, or it failed): ``state`` ends its claim, so no worker
        handles it again. Best effort: a claim left "received" is handled again later."""
        try:
            await self.store.settle_event(platform, event_id, state)
        except Exception as exc:
            log.warning("settling event %s failed (%s)", event_id, type(exc).__name__)

    async def _settle_failed(self, inbound: Inbound) -> None:
        """Record that ``inbound`` got no answer (it was told why, or cut by a restart)."""
        assert inbound.event_id is not None
        try:
            await asyncio.shield(
                self.store.settle_event(inbound.key.platform, inbound.event_id, "failed")
            )
        except Exception:
            log.warning("recording the end of event %s failed", inbound.event_id, exc_info=True)

    def _user_content(
        self, inbound: Inbound, model: str
    ) -> tuple[str, tuple[ImageInput, ...], list[str]]:
        """The text to store, the images for this turn, and notes for the user."""
        text = inbound.text
        images: list[ImageInput] = []
        notes = list(inbound.notes)
        for attachment in inbound.attachments:
            if attachment.kind == "text":
                body = attachment.data.decode("utf-8", errors="replace")
                text += f"\n\n--- file: {attachment.name} ---\n{body}\n--- end of file ---"
            elif attachment.kind == "image":
                if not model.startswith(VISION_MODELS):
                    notes.append(sentences.image_unsupported(attachment.name, model))
                    continue
                images.append(ImageInput(attachment.mime_type, attachment.data))
                text += f"\n[image: {attachment.name}]"
            else:
                notes.append(sentences.file_unsupported(attachment.name))
        return text.strip(), tuple(images), notes

    async def _check_spending(self, platform: str, user_id: str) -> None:
        limit = self.settings.parley_user_budget_usd
        if limit is None:
            return
        spent = await self.store.user_usage(platform, user_id)
        if spent.cost_usd >= limit:
            raise OverBudget(sentences.over_budget(spent.cost_usd, limit))

    async def _answer(
        self,
        inbound: Inbound,
        held: object | None,
        slot: AbstractAsyncContextManager[Any],
        claim: EventClaim | None = None,
    ) -> AsyncIterator[ReplyEvent]:
        """Store the question (its conversation ``held`` from then on), then, once ``slot``
        (this worker's answers at once) is free, stream the answer and store it with its usage.
        With ``claim``, the event is claimed first (``Accepted`` once it is).

        One generator from the question to the answer: every event and every wait of the
        turn passes through each generator above the model."""
        turn = _Turn(self, inbound)
        async for event in self._opened(inbound, held, turn, claim):
            yield event
        question_id = turn.question_id
        if self.settings.parley_log_content:
            log.info("user turn in %s: %s", inbound.key, turn.user.text)
        state, config = turn.state, turn.config
        try:
            async with slot:
                for note in turn.notes:
                    yield Notice(note)
                state, context = await self._fitted(inbound, state, config, turn.assemble)
                request = ChatRequest(
                    model=config.model,
                    messages=context.messages,
                    temperature=config.temperature,
                    max_output_tokens=self._output_tokens(config),
                    json_mode=config.json_mode,
                )
                streamed = _Streamed()
                try:
                    async for event in self._deltas(request, streamed):
                        yield event
                except ContextTooLong as exc:
                    if streamed.deltas:
                        raise
                    # Fold the history into the window the server revealed, and try once more.
                    self._learn_window(config.model, exc, context, request.max_output_tokens)
                    state, context = await self._fitted(inbound, state, config, turn.assemble)
                    output = self._output_tokens(config)
                    request = replace(request, messages=context.messages, max_output_tokens=output)
                    async for event in self._deltas(request, streamed):
                        yield event
                done = await self._finished(
                    inbound, state.id, question_id, config, request, streamed
                )
                for event in done:
                    yield event
        except (Exception, asyncio.CancelledError) as exc:
            # The question stays on record, but out of the context: the user will ask again.
            # An answer stopped before it was complete (the user interrupted it, or shutdown
            # cancelled it) is "cut": otherwise the next request would carry two user turns.
            cut = isinstance(exc, asyncio.CancelledError)
            await self.store.set_message_status(question_id, "cut" if cut else "failed")
            raise

    async def _opened(
        self, inbound: Inbound, held: object | None, turn: _Turn, claim: EventClaim | None
    ) -> AsyncIterator[ReplyEvent]:
        """The turn opened (``Store.open_turn``, with ``claim`` ``Store.claim_turn``); its
        notes said if it is refused. ``Accepted`` once ``claim`` is this worker's."""
        spender = inbound.author.id if self.settings.parley_user_budget_usd is not None else None
        accepted = claim is None
        try:
            facts = None
            if claim is not None:
                await self._claiming()
                facts = await self.store.claim_turn(
                    inbound.key, claim, spender=spender, plan=turn.plan, held=held
                )
                accepted = True  # the event is this worker's: an answer or a sentence follows
                yield Accepted()
            if facts is None:
                facts = await self.store.open_turn(
                    inbound.key, spender=spender, plan=turn.plan, held=held
                )
        except UserFacingError:
            if not accepted:  # refused with its event claimed
                yield Accepted()
            for note in turn.notes:  # e.g. "that file is not read", then why nothing is
                yield Notice(note)
            raise
        turn.opened(facts)

    async def _fitted(
        self,
        inbound: Inbound,
        state: ConversationState,
        config: ChannelConfig,
        assemble: Assemble,
    ) -> tuple[ConversationState, Context]:
        """The context for this turn within the budget, older turns folded if they overflow."""
        budget = self._budget(config)
        context = await assemble(state, budget)
        if context.cut_at is not None:
            state = await self._fold(
                inbound.key, inbound.author, state, fold_point(context), config
            )
            context = await assemble(state, budget)
        return state, context

    def _learn_window(self, model: str, exc: ContextTooLong, sent: Context, output: int) -> None:
        """Remember the window a context-length error revealed: what the server named, and
        below what was just sent (Parley's token count may differ from the server's)."""
        below_sent = (sent.tokens + output) * 9 // 10
        window = min(exc.window or below_sent, below_sent)
        log.info("model %s: context window learned from the server: %d tokens", model, window)
        self.windows[model] = window

    def _system_prompt(self, config: ChannelConfig, memory: Sequence[str]) -> str:
        """The channel's system prompt, the JSON instruction in JSON mode, then its memory
        (within its share of the input budget)."""
        system_prompt = config.system_prompt
        if config.json_mode and "json" not in system_prompt.lower():
            system_prompt = f"{system_prompt}\n\n{JSON_INSTRUCTION}"
        limit = self._budget(config) // commands.MEMORY_BUDGET_SHARE
        return with_memory(system_prompt, memory, limit)

    async def _finished(
        self,
        inbound: Inbound,
        conversation_id: int,
        question_id: int,
        config: ChannelConfig,
        request: ChatRequest,
        streamed: _Streamed,
    ) -> tuple[FinalText, UsageReport]:
        """Store the streamed answer with its usage; the answer as shown, and its usage."""
        completion = streamed.completion
        assert completion is not None, "ChatModel.stream ended without a Completion"
        if completion.window:  # the server reports its window: use it from the next turn
            self.windows.setdefault(config.model, completion.window)
        if not completion.text.strip():
            await self._charge(inbound.key.channel_key, inbound.author.id, completion)
            raise EmptyAnswer(sentences.MODEL_EMPTY_ANSWER)
        completion, shown, usage = await self._shown(inbound, config, request, completion)
        entries = self._priced(usage)
        await self.store.finish_turn(
            conversation_id,
            completion.text,
            count_message(completion.text),
            completion.model,
            inbound.key.channel_key,
            inbound.author.id,
            entries,
            sent_at=inbound.sent_at,
            question_id=question_id,
            event=(inbound.key.platform, inbound.event_id) if inbound.event_id else None,
        )
        return FinalText(shown, completion.model), _usage_report(completion.model, entries)

    async def _shown(
        self, inbound: Inbound, config: ChannelConfig, request: ChatRequest, completion: Completion
    ) -> tuple[Completion, str, list[Completion]]:
        """The answer as shown (JSON checked and pretty-printed, a cut marked), the completion
        it comes from and every model call it took."""
        usage = [completion]
        shown = completion.text
        if config.json_mode:
            try:
                completion, shown, retry = await self._valid_json(request, completion)
            except InvalidJSONReply as exc:
                entries = self._priced([completion, *exc.completions])
                await self.store.record_usage(inbound.key.channel_key, inbound.author.id, entries)
                raise
            usage += retry
        if completion.finish_reason == "length":
            shown += f"\n\n{sentences.CUT_OFF}"
        return completion, shown, usage

    async def _valid_json(
        self, request: ChatRequest, completion: Completion
    ) -> tuple[Completion, str, list[Completion]]:
        """Check a JSON-mode reply parses; ask once more with the parse error if not.

        A reply cut at the output token limit is reported as cut off: asking again would
        only cut it again."""
        try:
            parsed = json.loads(completion.text)
        except json.JSONDecodeError as first:
            if completion.finish_reason == "length":
                raise InvalidJSONReply(sentences.json_cut_off(request.max_output_tokens)) from None
            retry_request = replace(
                request,
                messages=[
                    *request.messages,
                    PromptMessage("assistant", completion.text),
                    PromptMessage("user", json_retry_prompt(first)),
                ],
            )
            retried = await self._complete(retry_request)
            try:
                parsed = json.loads(retried.text)
            except json.JSONDecodeError as second:
                sentence = sentences.invalid_json(second.msg)
                if retried.finish_reason == "length":
                    sentence = sentences.json_cut_off(request.max_output_tokens)
                raise InvalidJSONReply(sentence, completions=[retried]) from None
            pretty = json.dumps(parsed, indent=2, ensure_ascii=False)
            return retried, f"```json\n{pretty}\n```", [retried]
        pretty = json.dumps(parsed, indent=2, ensure_ascii=False)
        return completion, f"```json\n{pretty}\n```", []

    async def _complete(self, request: ChatRequest) -> Completion:
        streamed = _Streamed()
        async for _ in self._deltas(request, streamed, shown=False):
            pass
        if streamed.completion is None:
            raise RuntimeError("ChatModel.stream ended without a Completion")
        return streamed.completion

    async def _deltas(
        self, request: ChatRequest, into: _Streamed, *, shown: bool = True
    ) -> AsyncIterator[ReplyEvent]:
        """Stream ``request`` under the core's deadlines: its text out as deltas (unless not
        ``shown``, or in JSON mode), its Completion ``into``. The first item is due within
        ``parley_first_token_timeout``, all of them within ``parley_answer_timeout``.

        Only the waits for the model count, never the caller's work between items. One
        generator between the model and the answer: each of its items passes through all."""
        first, whole = self.settings.parley_first_token_timeout, self.settings.parley_answer_timeout
        shown = shown and not request.json_mode
        deadline = WaitDeadline(min(first, whole))
        started = False
        items = self.llm.stream(request)
        try:
            while True:
                try:
                    item = await deadline.wait(anext(items))
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if not deadline.expired:
                        raise
                    stalled = not started and first < whole
                    sentence = (
                        sentences.model_stalled(first)
                        if stalled
                        else sentences.answer_too_slow(whole)
                    )
                    raise ModelTimeout(sentence, detail="deadline passed") from None
                if not started:
                    started, deadline.limit = True, whole
                if isinstance(item, Completion):
                    into.completion = item
                elif shown:
                    into.deltas += 1
                    yield TextDelta(item)
        finally:
            deadline.close()
            close = getattr(items, "aclose", None)
            if close is not None:
                await close()

    def _priced(self, completions: list[Completion]) -> list[UsageEntry]:
        """Ledger entries for model calls, priced by the model that actually answered."""
        return [
            UsageEntry(
                c.model,
                c.input_tokens,
                c.output_tokens,
                cost_usd(c.model, c.input_tokens, c.output_tokens, self.prices),
                c.estimated,
            )
            for c in completions
        ]

    async def _charge(self, channel: ChannelKey, user_id: str, completion: Completion) -> None:
        await self.store.record_usage(channel, user_id, self._priced([completion]))

    # --- summaries ----------------------------------------------------------------------

    async def _summarize_text(
        self, transcript: str, previous: str, config: ChannelConfig, max_tokens: int
    ) -> Completion:
        content = transcript
        if previous:
            content = f"Earlier summary:\n{previous}\n\nConversation since:\n{transcript}"
        request = ChatRequest(
            model=config.model,
            messages=[PromptMessage("system", SUMMARY_PROMPT), PromptMessage("user", content)],
            temperature=0.2,
            max_output_tokens=max_tokens,
        )
        return await self._complete(request)

    async def _fold(
        self,
        key: ConversationKey,
        author: Author,
        state: ConversationState,
        cut_at: int,
        config: ChannelConfig,
    ) -> ConversationState:
        """Fold turns up to ``cut_at`` into the rolling summary, or drop them."""
        summary, summary_tokens = state.summary, state.summary_tokens
        if self.settings.parley_summarize_overflow:
            # the most recent of the overflow, within what one summary request may read
            budget = self._budget(config)
            limit = min(SUMMARY_INPUT_TOKENS, budget // 2)
            picked, _ = await newest_turns(
                self.store,
                state.id,
                state.context_start,
                cut_at,
                limit,
                through=True,
            )
            transcript = "\n".join(f"{_said_by(m)}: {m.content}" for m in picked)
            max_tokens = max(128, min(1000, budget // 8))
            try:
                done = await self._summarize_text(transcript, summary, config, max_tokens)
            except UserFacingError as exc:
                log.warning("summary for %s failed (%s); dropping old turns", key, exc.code)
            else:
                summary = done.text
                summary_tokens = count_message(summary_message(summary))
                await self._charge(key.channel_key, author.id, done)
        await self.store.set_summary(state.id, summary, summary_tokens, cut_at)
        return ConversationState(state.id, summary, summary_tokens, cut_at)

    # --- commands -----------------------------------------------------------------------

    def parse_command(self, text: str) -> tuple[str, str] | None:
        return commands.parse_command(text)

    async def command(
        self,
        key: ConversationKey,
        author: Author,
        name: str,
        args: str = "",
        transcript: str | None = None,
        *,
        event_id: str | None = None,
        viewer: permissions.Privileges | permissions.PrivilegeLookup = permissions.OPERATOR,
    ) -> CommandReply:
        """Run a core command; bad values come back as a clear reply, never an exception.

        Aliases (``clear``, ``temp``...) mean their command. With ``event_id``, a command the
        platform delivers again runs once: the repeat gets ``CommandReply(redelivered=True)``.
        ``viewer`` is what the platform knows about the person (or how to find it out, asked
        only for a command that changes what the channel shares); ``core.permissions`` decides.
        """
        name = commands.canonical(name)
        spec = commands.BY_NAME.get(name)
        handler = COMMAND_HANDLERS.get(name)
        if spec is None or handler is None:
            text = sentences.unknown_command(name, commands.help_text())
            return CommandReply(text, private=True, ok=False)
        try:
            if event_id and not await self.claim_event(key.platform, event_id):
                log.info("dropping redelivered command %s on %s", event_id, key)
                return CommandReply("", private=True, redelivered=True)
            refused = await _refusal(spec, args, viewer)
            if refused is not None:
                log.info("refused command %s in %s for %s", name, key, author.id)
                return CommandReply(refused, private=True, ok=False)
            result = await handler(self, CommandCall(key, author, args.strip(), transcript))
        except UserFacingError as exc:
            return CommandReply(exc.user_message, private=True, ok=False)
        except Exception:
            log.exception("command %s in %s failed", name, key)
            return CommandReply(GENERIC_ERROR, private=True, ok=False)
        if isinstance(result, CommandReply):
            return result
        return CommandReply(result, private=spec.private)

    async def _help(self, call: CommandCall) -> str:
        return commands.help_text()

    async def _reset(self, call: CommandCall) -> str:
        async with self.exclusive(call.key):
            removed = await self.store.reset_conversation(call.key)
        return sentences.conversation_forgotten(removed)

    async def _usage(self, call: CommandCall) -> str:
        here = await self.store.channel_usage(call.key.channel_key)
        mine = await self.store.user_usage(call.key.platform, call.author.id)
        helpful, unhelpful = await self.store.channel_feedback(call.key.channel_key)
        rated = sentences.feedback_line(helpful, unhelpful) if helpful + unhelpful else ""
        return sentences.usage_report(_usage_line(here), _usage_line(mine), rated)

    # --- voice answers and feedback -------------------------------------------------------

    async def _speak(self, call: CommandCall) -> CommandReply:
        """Read the conversation's last answer aloud: an audio file, charged in the ledger."""
        if self.speech is None:
            raise BadCommand(sentences.SPEECH_UNAVAILABLE)
        state = await self.store.conversation(call.key)
        recent = await self.store.recent_messages(state.id, 0, 0, SPEAK_LOOKBACK)
        last = next((m for m in recent if m.role == "assistant"), None)
        if last is None:
            raise BadCommand(sentences.NOTHING_TO_SPEAK)
        text, cut = speech.spoken_text(last.content)
        if not text:
            raise BadCommand(sentences.NOTHING_TO_SPEAK)
        await self._check_spending(call.key.platform, call.author.id)
        s = self.settings
        request = SpeechRequest(text, s.parley_tts_model, s.parley_tts_voice, s.parley_tts_format)
        spoken = await self.speech.speak(request)
        tokens = (
            (spoken.input_tokens, spoken.output_tokens)
            if spoken.input_tokens is not None and spoken.output_tokens is not None
            else None
        )
        cost = speech_cost_usd(spoken.model, len(text), tokens, self.prices)
        entry = UsageEntry(
            spoken.model,
            tokens[0] if tokens else count_text(text),
            tokens[1] if tokens else 0,
            cost,
            estimated=tokens is None,
        )
        await self.store.record_usage(call.key.channel_key, call.author.id, [entry])
        notes = [sentences.speech_cut(speech.MAX_SPEECH_CHARS)] if cut else []
        said = sentences.with_notes(sentences.spoken(sentences.cost_text(cost)), notes)
        audio = speech.audio_file(spoken.audio, spoken.audio_format)
        return CommandReply(said, private=False, audio=audio)

    async def feedback(
        self, channel: ChannelKey, message_id: str, user_id: str, *, helpful: bool
    ) -> str:
        """Record a person's rating of an answer (a platform's feedback buttons); the sentence
        to show them, never an exception."""
        try:
            await self.store.record_feedback(channel, message_id, user_id, helpful)
        except Exception:
            log.exception("recording feedback in %s failed", channel)
            return GENERIC_ERROR
        return sentences.FEEDBACK_RECORDED

    async def _summarize(self, call: CommandCall) -> str:
        config = await self.channel_config(call.key.channel_key)
        count = commands.summary_count(call.args)
        return await self._summary_command(call.key, call.author, config, call.transcript, count)

    # --- channel memory -------------------------------------------------------------------

    async def _memory(self, call: CommandCall) -> str:
        facts = await self.store.channel_memory(call.key.channel_key)
        return sentences.memory_shown([fact.text for fact in facts])

    async def _remember(self, call: CommandCall) -> str:
        """Add a fact to the channel's memory, within its share of the input budget."""
        fact = commands.parse_fact(call.args)
        if not fact:
            return await self._memory(call)
        channel = call.key.channel_key
        async with self.exclusive(_memory_lock(channel)):
            texts = [known.text for known in await self.store.channel_memory(channel)]
            if len(texts) >= commands.MAX_FACTS:
                raise BadCommand(sentences.memory_full(len(texts)))
            config = await self.channel_config(channel)
            limit = self._budget(config) // commands.MEMORY_BUDGET_SHARE
            tokens = count_text(memory_block([*texts, fact]))
            if tokens > limit:
                raise BadCommand(sentences.memory_too_large(tokens, limit))
            await self.store.add_memory(channel, fact, author_id=call.author.id)
        return sentences.remembered(len(texts) + 1)

    async def _forget(self, call: CommandCall) -> str:
        """Remove fact N, as ``memory`` numbers them."""
        channel = call.key.channel_key
        if not call.args:
            facts = await self.store.channel_memory(channel)
            raise BadCommand(sentences.which_fact([fact.text for fact in facts]))
        number = commands.parse_fact_number(call.args)
        async with self.exclusive(_memory_lock(channel)):
            facts = await self.store.channel_memory(channel)
            if number > len(facts):
                raise BadCommand(sentences.no_such_fact(number, len(facts)))
            await self.store.remove_memory(channel, facts[number - 1].id)
        return sentences.fact_forgotten(number, facts[number - 1].text)

    async def _channel_setting(self, call: CommandCall, setting: commands.ChannelSetting) -> str:
        """Show the channel's value of ``setting``, restore its default, or set it."""
        channel = call.key.channel_key
        if not call.args:
            return setting.shown(getattr(await self.channel_config(channel), setting.field))
        if setting.restored is not None and call.args.lower() in commands.RESTORE_WORDS:
            config = await self._set(channel, setting.field, None)
            return setting.restored(getattr(config, setting.field))
        value = setting.parse(call.args)
        await self._set(channel, setting.field, value)
        return setting.updated(value, self.prices)

    async def _set(self, channel: ChannelKey, field: str, value: Any) -> ChannelConfig:
        """Save one override of ``channel``; returns the channel's settings now in effect."""
        current = await self.store.channel_overrides(channel)
        changed = replace(current, **{field: value})
        await self.store.save_channel_overrides(channel, changed)
        return self._config(changed)

    async def _summary_command(
        self,
        key: ConversationKey,
        author: Author,
        config: ChannelConfig,
        transcript: str | None,
        count: int,
    ) -> str:
        """Summarise ``transcript`` (the last ``count`` messages the adapter read where the
        command was given) or, without one, the last ``count`` turns of the stored conversation
        (and its rolling summary when the whole conversation is covered)."""
        budget = self._budget(config)
        previous = ""
        if transcript is None:
            state = await self.store.conversation(key)
            previous = state.summary
            picked, _ = await newest_turns(
                self.store, state.id, state.context_start, 2**62, budget - 512
            )
            if len(picked) > count:
                picked, previous = picked[-count:], ""
            transcript = "\n".join(f"{_said_by(m)}: {m.content}" for m in picked)
        elif count_text(transcript) > budget - 512:
            raise BadCommand(sentences.SUMMARY_TOO_LONG)
        if not transcript.strip() and not previous:
            return sentences.NOTHING_TO_SUMMARISE
        done = await self._summarize_text(transcript, previous, config, min(1000, budget // 4))
        await self._charge(key.channel_key, author.id, done)
        return sentences.summary(done.text)


def _speech_of(llm: ChatModel) -> SpeechModel | None:
    """The chat model's client, when it can read text aloud too."""
    return llm if isinstance(llm, SpeechModel) else None


def _memory_lock(channel: ChannelKey) -> ConversationKey:
    """The lock that makes changes to ``channel``'s memory one at a time (checked, then
    written); a thread name no platform uses, so it never waits for an answer."""
    return ConversationKey(channel.platform, channel.workspace, channel.channel, "#memory")


async def _refusal(
    spec: commands.CommandSpec,
    args: str,
    viewer: permissions.Privileges | permissions.PrivilegeLookup,
) -> str | None:
    """Why the person may not run ``spec`` here, or None; the facts are looked up only for a
    command that changes what the channel shares."""
    if not permissions.changes_shared_state(spec, args):
        return None
    facts = viewer if isinstance(viewer, permissions.Privileges) else await viewer()
    return None if permissions.may_change(spec, args, facts) else permissions.refusal(spec, facts)


def _said_by(message: StoredMessage) -> str:
    """Who wrote a stored turn, for a summary's transcript: the person's name, or the bot."""
    return speaker(message.author_name) if message.role == "user" else message.role


def _usage_line(totals: UsageTotals) -> str:
    return sentences.usage_line(
        totals.turns,
        totals.input_tokens,
        totals.output_tokens,
        totals.cost_usd,
        estimated_calls=totals.estimated_calls,
        unpriced_calls=totals.unpriced_calls,
    )


def _usage_report(model: str, entries: list[UsageEntry]) -> UsageReport:
    """One answer's usage: no dollar figure unless every call in it has a known price."""
    costs = [e.cost_usd for e in entries]
    return UsageReport(
        model,
        sum(e.input_tokens for e in entries),
        sum(e.output_tokens for e in entries),
        None if None in costs else sum(c for c in costs if c is not None),
        any(e.estimated for e in entries),
    )


CommandHandler = Callable[[ConversationService, CommandCall], Awaitable[str | CommandReply]]

# Every command of ``core.commands.COMMANDS`` and the method that runs it; the commands that
# show or set one channel setting share one handler, told apart by their ``ChannelSetting``.
COMMAND_HANDLERS: dict[str, CommandHandler] = {
    "help": ConversationService._help,
    "reset": ConversationService._reset,
    "usage": ConversationService._usage,
    "summarize": ConversationService._summarize,
    "memory": ConversationService._memory,
    "remember": ConversationService._remember,
    "forget": ConversationService._forget,
    "speak": ConversationService._speak,
    **{
        setting.command: partial(ConversationService._channel_setting, setting=setting)
        for setting in commands.CHANNEL_SETTINGS
    },
}


__all__ = [
    "COMMAND_HANDLERS",
    "GENERIC_ERROR",
    "ChannelConfig",
    "ChannelOverrides",
    "CommandCall",
    "ConversationService",
]
