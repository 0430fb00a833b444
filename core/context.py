"""Context assembly: the newest turns that fit the token budget, read newest first.

Each stored turn carries the token count computed when it was stored, so building a context
never re-tokenises history, and it reads only as many rows as fit: the cost depends on the
budget, not on how long the conversation has grown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from core import sentences
from core.errors import InputTooLong
from core.ports import ConversationState, PromptMessage, Store, StoredMessage
from core.tokens import TOKENS_REPLY_PRIMER, count_message

PAGE = 64


def token_budget(input_budget: int, window: int, max_output_tokens: int) -> int:
    """Tokens a request may spend on input: the configured budget, within the model's window."""
    return max(0, min(input_budget, window - max_output_tokens))


def summary_message(summary: str) -> str:
    return f"Summary of the earlier conversation:\n{summary}"


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


async def newest_turns(
    store: Store,
    conversation_id: int,
    after_id: int,
    before_id: int,
    token_limit: int,
    *,
    through: bool = False,
) -> tuple[list[StoredMessage], int | None]:
    """The newest complete turns after turn ``after_id`` and before turn ``before_id`` (or
    through it) that fit ``token_limit``, oldest first, and the id of the newest turn that did
    not fit (None if all did). Order is the store's conversation order.

    Reads page by page, newest first, so it reads only about as many rows as fit.
    """
    picked: list[StoredMessage] = []
    remaining = token_limit
    while True:
        page = await store.recent_messages(
            conversation_id, after_id, before_id, PAGE, through=through
        )
        through = False
        for message in page:
            if message.token_count > remaining:
                picked.reverse()
                return picked, message.id
            remaining -= message.token_count
            picked.append(message)
        if len(page) < PAGE:
            picked.reverse()
            return picked, None
        before_id = page[-1].id


def input_limit(system_prompt: str, user_tokens: int, budget: int) -> int:
    """Tokens left for the user turn and history; raises InputTooLong if the turn cannot fit."""
    limit = budget - prompt_tokens(system_prompt) - TOKENS_REPLY_PRIMER
    if user_tokens > limit:
        raise InputTooLong(sentences.input_too_long(user_tokens, limit))
    return limit


async def build_context(
    store: Store,
    state: ConversationState,
    *,
    system_prompt: str,
    user: PromptMessage,
    user_tokens: int,
    user_turn_id: int,
    budget: int,
) -> Context:
    """Assemble system prompt, rolling summary, the history that fits, and the new user turn
    (``user``, whose tokens are ``user_tokens``).

    Raises InputTooLong when the new turn alone (with the system prompt) exceeds the budget.
    """
    limit = input_limit(system_prompt, user_tokens, budget)
    summary = ""
    summary_tokens = 0
    if state.summary:
        summary = summary_message(state.summary)
        summary_tokens = state.summary_tokens  # counted once, when the summary was stored
        if summary_tokens > limit - user_tokens:
            summary, summary_tokens = "", 0
    remaining = limit - user_tokens - summary_tokens
    history, cut_at = await newest_turns(
        store, state.id, state.context_start, user_turn_id, remaining
    )
    remaining -= sum(m.token_count for m in history)
    messages = [PromptMessage("system", system_prompt)]
    if summary:
        messages.append(PromptMessage("system", summary))
    messages.extend(PromptMessage(m.role, m.content) for m in history)
    messages.append(user)
    tokens = budget - remaining
    return Context(messages, tokens, cut_at, history)


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
