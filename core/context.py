"""Context assembly: the newest turns that fit the token budget, read newest first.

Each stored turn carries the token count computed when it was stored, so building a context
never re-tokenises history, and it reads only as many rows as fit: the cost depends on the
budget, not on how long the conversation has grown.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from itertools import accumulate, repeat
from operator import attrgetter
from typing import Any, cast

from core import sentences
from core.errors import InputTooLong
from core.ports import ConversationState, PromptMessage, Store, StoredMessage
from core.tokens import TOKENS_PER_MESSAGE, TOKENS_REPLY_PRIMER, count_message, count_text

PAGE = 64
# A stored turn's tokens, role and text; a (role, text, images) tuple made a ``PromptMessage``.
_TOKENS = attrgetter("token_count")
_ROLE = attrgetter("role")
_TEXT = attrgetter("content")
_prompt = cast(Callable[[tuple[Any, ...]], PromptMessage], partial(tuple.__new__, PromptMessage))
# Said to the model when several people share a conversation (their turns carry their names).
SPEAKERS_NOTE = (
    "Several people take part in this conversation. Each of their messages begins with the "
    "name of the person who wrote it and a colon. Tell them apart by those names and address "
    "them by name when it helps; do not begin your own replies with a name."
)
UNNAMED = "Someone"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
MAX_SPEAKER_CHARS = 60


def token_budget(input_budget: int, window: int, max_output_tokens: int) -> int:
    """Tokens a request may spend on input: the configured budget, within the model's window."""
    return max(0, min(input_budget, window - max_output_tokens))


def summary_message(summary: str) -> str:
    return f"Summary of the earlier conversation:\n{summary}"


def memory_block(facts: Sequence[str]) -> str:
    """A channel's memory as the system prompt carries it ("" when it remembers nothing)."""
    if not facts:
        return ""
    lines = "\n".join(f"{number}. {fact}" for number, fact in enumerate(facts, 1))
    return f"Facts this channel asked you to remember:\n{lines}"


@lru_cache(maxsize=256)
def _fitting(facts: tuple[str, ...], limit: int) -> str:
    block = memory_block(facts)
    while facts and count_text(block) > limit:
        facts = facts[:-1]
        block = memory_block(facts)
    return block


def with_memory(system_prompt: str, facts: Sequence[str], limit: int) -> str:
    """The system prompt followed by the channel's memory: the facts that fit in ``limit``
    tokens (all of them, unless the budget shrank since they were added: a smaller model)."""
    block = _fitting(tuple(facts), limit)
    return f"{system_prompt}\n\n{block}" if block else system_prompt


@lru_cache(maxsize=4096)
def speaker(name: str) -> str:
    """How a person is named to the model: their display name on one line, never empty.

    The name is read as stored turns keep it (its first 100 characters, NUL dropped, lone
    surrogates replaced), so a person's new turn and their stored ones name them alike."""
    kept = _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", name[:100])
    return " ".join(kept.split())[:MAX_SPEAKER_CHARS] or UNNAMED


@lru_cache(maxsize=4096)
def _name_tokens(name: str) -> int:
    """Tokens the "Name: " prefix adds to a turn (a little over, never under)."""
    return count_text(f"{speaker(name)}: ") + 1


@lru_cache(maxsize=1)
def _note_tokens() -> int:
    return count_text(f"\n\n{SPEAKERS_NOTE}") + 1


def named(text: str, name: str) -> str:
    """A user turn as the model reads it in a conversation of several people."""
    return f"{speaker(name)}: {text}"


@dataclass(slots=True)
class Context:
    """The messages to send, their token count, and where older turns were cut off."""

    messages: list[PromptMessage]
    tokens: int
    # id of the newest turn that did not fit; turns up to it are out of the context
    cut_at: int | None = None
    history: list[StoredMessage] = field(default_factory=list)


@lru_cache(maxsize=256)
def prompt_tokens(system_prompt: str) -> int:
    """Tokens of a system prompt; a channel's prompt is the same turn after turn."""
    return count_message(system_prompt)


def page_rows(tokens: int) -> int:
    """Rows enough to hold ``tokens`` of history: every turn costs at least its message
    overhead, so the store reads a whole context in one call."""
    return max(PAGE, tokens // TOKENS_PER_MESSAGE + 1)


async def newest_turns(
    store: Store,
    conversation_id: int,
    after_id: int,
    before_id: int,
    token_limit: int,
    *,
    through: bool = False,
    first_page: Sequence[StoredMessage] | None = None,
) -> tuple[list[StoredMessage], int | None]:
    """The newest complete turns after turn ``after_id`` and before turn ``before_id`` (or
    through it) that fit ``token_limit``, oldest first, and the id of the newest turn that did
    not fit (None if all did). Order is the store's conversation order.

    Reads page by page, newest first, so it reads only about as many rows as fit; the first
    page may have been read already (``first_page``, read for ``page_rows(token_limit)``).
    """
    picked: list[StoredMessage] = []
    remaining = token_limit
    while True:
        rows = page_rows(remaining)
        page: Sequence[StoredMessage]
        if first_page is not None:
            page, first_page = first_page, None
        else:
            page = await store.recent_messages(
                conversation_id, after_id, before_id, rows, through=through, tokens=remaining
            )
        through = False
        # The page's newest turns whose tokens add up to at most ``remaining`` (counts are
        # never negative: the running sums only grow).
        sums = list(accumulate(map(_TOKENS, page)))
        fits = bisect_right(sums, remaining)
        picked += page[:fits]
        if fits < len(page):
            picked.reverse()
            return picked, page[fits].id
        remaining -= sums[-1] if sums else 0
        if len(page) < rows:
            picked.reverse()
            return picked, None
        before_id = page[-1].id


def input_limit(system_prompt: str, user_tokens: int, budget: int) -> int:
    """Tokens left for the user turn and history; raises InputTooLong if the turn cannot fit."""
    limit = budget - prompt_tokens(system_prompt) - TOKENS_REPLY_PRIMER
    if user_tokens > limit:
        raise InputTooLong(sentences.input_too_long(user_tokens, limit))
    return limit


def _summary_fitting(state: ConversationState, limit: int, user_tokens: int) -> tuple[str, int]:
    """The rolling summary as sent, and its tokens: none when it would not fit."""
    if not state.summary:
        return "", 0
    summary_tokens = state.summary_tokens  # counted once, when the summary was stored
    if summary_tokens > limit - user_tokens:
        return "", 0
    return summary_message(state.summary), summary_tokens


def history_room(
    state: ConversationState, system_prompt: str, user_tokens: int, budget: int
) -> int:
    """Tokens left for the history once the system prompt, summary and new turn are in.

    Raises InputTooLong when the new turn alone (with the system prompt) exceeds the budget."""
    limit = input_limit(system_prompt, user_tokens, budget)
    _, summary_tokens = _summary_fitting(state, limit, user_tokens)
    return limit - user_tokens - summary_tokens


async def build_context(
    store: Store,
    state: ConversationState,
    *,
    system_prompt: str,
    user: PromptMessage,
    user_tokens: int,
    user_turn_id: int,
    budget: int,
    speaker_name: str = "",
    first_page: Sequence[StoredMessage] | None = None,
) -> Context:
    """Assemble system prompt, rolling summary, the history that fits, and the new user turn
    (``user``, whose tokens are ``user_tokens``, written by ``speaker_name``).

    When more than one person speaks in what is sent, each user turn begins with its
    speaker's name and the system prompt says so; names cost tokens, so older turns may
    give way to them. ``first_page``: the history as the store already read it for
    ``history_room`` (see ``newest_turns``).

    Raises InputTooLong when the new turn alone (with the system prompt) exceeds the budget.
    """
    limit = input_limit(system_prompt, user_tokens, budget)
    summary, summary_tokens = _summary_fitting(state, limit, user_tokens)
    remaining = limit - user_tokens - summary_tokens
    history, cut_at = await newest_turns(
        store, state.id, state.context_start, user_turn_id, remaining, first_page=first_page
    )
    remaining -= sum(map(_TOKENS, history))
    names = _Speakers.fit(history, cut_at, speaker_name, remaining)
    remaining -= names.tokens
    if names.several:
        system_prompt = f"{system_prompt}\n\n{SPEAKERS_NOTE}"
        user = user._replace(text=named(user.text, speaker_name))
    messages = [PromptMessage("system", system_prompt)]
    if summary:
        messages.append(PromptMessage("system", summary))
    messages.extend(names.prompts())
    messages.append(user)
    tokens = budget - remaining
    return Context(messages, tokens, names.cut_at, names.history)


@dataclass(slots=True)
class _Speakers:
    """The history that fits once several people's turns carry their names: ``several`` when
    more than one person speaks in it (with the new turn), and the ``tokens`` that costs."""

    history: list[StoredMessage]
    cut_at: int | None
    several: bool
    tokens: int

    @classmethod
    def fit(
        cls, history: list[StoredMessage], cut_at: int | None, current: str, room: int
    ) -> _Speakers:
        """Drop the oldest turns until the names (and the note saying so) fit in ``room``.

        One person alone is unchanged: no names, no note, nothing dropped."""
        if all(m.author_name == current for m in history if m.role == "user"):
            return cls(history, cut_at, False, 0)
        kept = list(history)
        people = Counter(speaker(m.author_name) for m in kept if m.role == "user")
        people[speaker(current)] += 1
        cost = _note_tokens() + _name_tokens(current)
        cost += sum(_name_tokens(m.author_name) for m in kept if m.role == "user")
        start = 0
        while len(+people) > 1 and cost > room and start < len(kept):
            dropped = kept[start]
            start += 1
            room += dropped.token_count
            cut_at = dropped.id
            if dropped.role == "user":
                people[speaker(dropped.author_name)] -= 1
                cost -= _name_tokens(dropped.author_name)
        several = len(+people) > 1
        return cls(kept[start:], cut_at, several, cost if several else 0)

    def prompts(self) -> list[PromptMessage]:
        """The history as sent: user turns named when several people speak."""
        if not self.several:  # each turn's role and text, without a Python frame per turn
            turns = self.history
            return list(map(_prompt, zip(map(_ROLE, turns), map(_TEXT, turns), repeat(()))))
        return [
            PromptMessage("user", named(m.content, m.author_name))
            if m.role == "user"
            else PromptMessage(m.role, m.content)
            for m in self.history
        ]


def fold_point(context: Context) -> int:
    """Where to cut when history overflows: past ``cut_at``, and far enough that half of the
    history now sent is folded too, so the next turns fit without folding again at once."""
    assert context.cut_at is not None
    total = sum(m.token_count for m in context.history)
    cut, kept = context.cut_at, total
    for message in context.history:  # oldest first
        if kept <= total // 2:
            break
        kept -= message.token_count
        cut = message.id
    return cut
