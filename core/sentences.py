"""Every sentence Parley shows a person, in one place: about the delivery of an answer, why
a request got no answer, and what a command did.

Adapters never write their own wording for these situations: Slack, Discord and the terminal
show the same words, and a change here changes every platform at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

GENERIC_ERROR = "Sorry, something went wrong on my side while answering. Please try again."
RESTARTED = "Parley was restarted while answering; please ask again."
EMPTY_ANSWER = "_(empty answer)_"
CUT_OFF = "_(answer cut off at the output token limit)_"
WARNING_MARK = "⚠️"


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def file_too_large(name: str, limit: int, size: int | None = None) -> str:
    """An image over the size limit was not sent to the model."""
    if size is None:
        return f"{name} was not read: it is over the {_megabytes(limit)} limit for images."
    return (
        f"{name} was not read: it is {_megabytes(size)}, over the {_megabytes(limit)} limit "
        "for images."
    )


def file_truncated(name: str, limit: int) -> str:
    """A text file over the size limit: only its beginning was read."""
    return f"{name} is long: I read only its first {limit:,} bytes."


def file_not_downloaded(name: str, platform: str) -> str:
    """The platform would not give Parley a file's content."""
    return f"{name} could not be downloaded from {platform}, so I did not read it."


def file_unsupported(name: str) -> str:
    """A file that is neither an image nor text."""
    return f"{name} was not read: only images and text files are supported."


def image_unsupported(name: str, model: str) -> str:
    """An image sent to a model that does not accept images."""
    return f"{name} was not read: {model} does not accept images."


# --- why a message got no answer (core.service, core.context) -------------------------------

EMPTY_MESSAGE = "I got an empty message. Ask me something, or say 'help'."
MODEL_EMPTY_ANSWER = (
    "The model returned an empty answer. Please try again or rephrase the question."
)


def user_rate_limited(per_minute: int, wait_seconds: float) -> str:
    """A person sent more messages in a minute than ``PARLEY_USER_MESSAGES_PER_MINUTE``."""
    return (
        f"You're sending messages faster than {per_minute} a minute. "
        f"Please wait {math.ceil(wait_seconds)} s and ask again."
    )


def over_budget(spent_usd: float, limit_usd: float) -> str:
    """A person has spent their ``PARLEY_USER_BUDGET_USD``."""
    return (
        f"You have used ${spent_usd:.2f} of your ${limit_usd:.2f} budget, so I can't "
        "answer more requests for you. Ask an admin to raise PARLEY_USER_BUDGET_USD."
    )


def input_too_long(tokens: int, limit: int) -> str:
    """The message alone (with the system prompt) does not fit the input budget."""
    return (
        f"Your message is {tokens:,} tokens; the limit here is {max(limit, 0):,}. "
        "Please shorten it or split it into parts."
    )


def json_cut_off(limit: int) -> str:
    """JSON mode: the reply stopped at the output token limit, so it is not whole JSON."""
    return (
        f"The JSON answer was cut off at the output token limit ({limit:,} tokens), so it is "
        "not complete JSON. Ask for a shorter answer, or switch JSON mode off with 'json off'."
    )


def invalid_json(reason: str) -> str:
    """JSON mode: the reply did not parse, twice."""
    return (
        "The model did not return valid JSON, even after a second try "
        f"({reason}). Try rephrasing, or switch JSON mode off with 'json off'."
    )


# --- the model service failed (core.llm) ----------------------------------------------------

MODEL_REFUSED = "The model declined to answer this request (content filter); please rephrase it."
MODEL_STREAM_BROKEN = (
    "The answer was cut off because the connection to the model broke; please try again."
)
MODEL_TIMEOUT = "The model took too long to answer; please try again in a moment."


def model_stalled(seconds: float) -> str:
    """The model sent nothing within the first-token deadline."""
    return (
        f"The model did not start answering within {seconds:g} seconds; "
        "please try again in a moment."
    )


def answer_too_slow(seconds: float) -> str:
    """The model had not finished within the whole-answer deadline."""
    return (
        f"The model had not finished its answer after {seconds:g} seconds, so I stopped it; "
        "please try again, perhaps asking for a shorter answer."
    )


MODEL_UNREACHABLE = "Parley could not reach the model service; please try again in a moment."
MODEL_QUOTA = "The bot's OpenAI account has run out of credit; please tell the bot's operator."
MODEL_SERVER_ERROR = "The model service had an error; please try again in a moment."
MODEL_KEY_REJECTED = "The bot's OpenAI API key was rejected; please tell the bot's operator."
MODEL_CONTEXT_TOO_LONG = (
    "This message and conversation are too long for the model's context window; "
    "send a shorter message, or use reset to start afresh."
)
MODEL_ENDPOINT_MISSING = (
    "The model server has no chat completions endpoint at the configured address "
    "(OPENAI_BASE_URL usually ends in /v1); please tell the bot's operator."
)
MODEL_BAD_REQUEST = (
    "The model service rejected this request; please rephrase it or reset the conversation."
)
MODEL_FAILED = "The model call failed; please try again in a moment."


def model_rate_limited(retry_after: float | None) -> str:
    """The model service asked to wait (``retry_after`` seconds, when it said how long)."""
    seconds = max(1, math.ceil(retry_after)) if retry_after is not None else 0
    when = f"in {seconds} second{'s' if seconds != 1 else ''}" if seconds else "in a minute"
    return f"The model is rate limited right now; please try again {when}."


def model_not_found(model: str, also_tried: Sequence[str]) -> str:
    """Neither the model nor any fallback exists for this key."""
    tried = ", ".join(also_tried)
    also = f" (also tried {tried})" if tried else ""
    return (
        f"The model {model} is not available to this bot{also}; "
        "please ask the bot's operator to check the model setting."
    )


# --- commands (core.service, core.commands) -------------------------------------------------

NOTHING_TO_SUMMARISE = "There is nothing to summarise yet."
SUMMARY_TOO_LONG = "Those messages are too long to summarise at once; ask for fewer."
SYSTEM_PROMPT_RESTORED = "System prompt restored to the default."
SYSTEM_PROMPT_UPDATED = "System prompt updated for this channel."


def unknown_command(name: str, help_text: str = "") -> str:
    """A command name Parley does not know, with the list of those it does."""
    if not help_text:
        return f"Unknown command '{name}'."
    return f"Unknown command '{name}'. Try 'help'.\n\n{help_text}"


def not_allowed(command: str, who: str, *, setting: bool, shown_by: str = "") -> str:
    """Someone asked to change a setting or reset a conversation they may not change.

    ``shown_by`` names the command that shows what ``command`` changes, when it is another
    (``memory`` for ``remember`` and ``forget``)."""
    if shown_by:
        return f"Only {who} can `{command}` here. Anyone can see what it changes: `{shown_by}`."
    if setting:
        return (
            f"Only {who} can change `{command}` here. Anyone can see it: `{command}` with "
            "nothing after it."
        )
    return f"Only {who} can `{command}` this conversation here."


def conversation_forgotten(removed: int) -> str:
    return f"Done: I forgot this conversation ({removed} messages)."


def summary(text: str) -> str:
    return f"**Summary**\n{text}"


def usage_report(channel: str, person: str, feedback: str = "") -> str:
    """``/usage``: one line for the channel, one for the person who asked, and the feedback
    people gave the channel's answers (when any)."""
    report = f"This channel: {channel}\nYou: {person}"
    return f"{report}\n{feedback}" if feedback else report


def feedback_line(helpful: int, unhelpful: int) -> str:
    """``/usage``: how the answers in a channel were rated with the feedback buttons."""
    return f"Feedback on answers here: 👍 {helpful:,}, 👎 {unhelpful:,}"


FEEDBACK_RECORDED = "Thanks: your feedback on this answer is recorded."
NOTHING_TO_SPEAK = (
    "There is no answer to read aloud here yet: ask me something first, then use speak."
)
SPEECH_UNAVAILABLE = "Reading answers aloud is not available with this model service."


def spoken(cost: str) -> str:
    """``speak``: the audio file of the last answer comes with this line."""
    return f"🔊 The last answer, read aloud ({cost})."


def speech_model_missing(model: str) -> str:
    """The model service has no speech endpoint, or not the speech model configured."""
    return (
        f"The model service can't read answers aloud with {model} (no such speech model or "
        "endpoint); please tell the bot's operator (PARLEY_TTS_MODEL)."
    )


def speech_cut(limit: int) -> str:
    """``speak``: the answer was longer than the speech service reads at once."""
    return (
        f"The answer is longer than the {limit:,} characters the speech service reads at "
        "once, so the audio stops there."
    )


def cost_text(cost_usd: float | None, *, estimated: bool = False) -> str:
    """One answer's cost: dollars (marked when the tokens were estimated), or no price."""
    if cost_usd is None:
        return "price unknown"
    return f"${cost_usd:.5f}" + (" (estimated)" if estimated else "")


def usage_line(
    turns: int,
    input_tokens: int,
    output_tokens: int,
    cost_usd: float,
    *,
    estimated_calls: int = 0,
    unpriced_calls: int = 0,
) -> str:
    """One line of ``/usage``: calls, tokens and dollars, saying which figures are estimates
    (the server reported no usage) and which calls have no known price."""
    calls = "model call" if turns == 1 else "model calls"
    line = f"{turns} {calls}, {input_tokens:,} input + {output_tokens:,} output tokens"
    if estimated_calls:
        line += f" (estimated for {estimated_calls} of them: the server did not report usage)"
    if unpriced_calls >= turns and turns:
        return line + ", price unknown"
    line += f", ${cost_usd:.4f}"
    if unpriced_calls:
        line += f" plus {unpriced_calls} call{'s' if unpriced_calls != 1 else ''} of unknown price"
    return line


def system_prompt_shown(prompt: str) -> str:
    return f"System prompt for this channel:\n> {prompt}"


def model_shown(model: str) -> str:
    return f"This channel uses {model}."


def model_restored(default: str) -> str:
    return f"Model restored to the default, {default}."


def model_set(model: str, *, priced: bool) -> str:
    note = "" if priced else " (no price known for it: usage shows its tokens, price unknown)"
    return f"This channel now uses {model}{note}."


def temperature_shown(value: float) -> str:
    return f"Temperature here is {value:g}."


def temperature_set(value: float) -> str:
    return f"Temperature set to {value:g}."


def json_mode_shown(on: bool) -> str:
    return f"JSON mode is {'on' if on else 'off'}."


def json_mode_set(on: bool) -> str:
    return f"JSON mode is now {'on' if on else 'off'}."


def not_a_temperature(value: str) -> str:
    return f"'{value}' is not a number: temperature takes a value from 0 to 2."


def temperature_out_of_range(value: str) -> str:
    return f"Temperature must be between 0 and 2 (got {value})."


def not_a_switch(value: str) -> str:
    return f"JSON mode is switched with 'on' or 'off' (got '{value}')."


def bad_model_name(name: str) -> str:
    return (
        f"'{name[:60]}' is not a valid model name: give the id as the model server lists it "
        "(no spaces, quotes or angle brackets)."
    )


def system_prompt_too_long(length: int, limit: int) -> str:
    return f"That system prompt is {length:,} characters; the limit is {limit:,}."


def not_a_count(value: str) -> str:
    return f"'{value}' is not a whole number of messages."


def count_out_of_range(number: int, low: int, high: int) -> str:
    return f"Give a number of messages from {low} to {high} (got {number})."


# --- channel memory (remember, forget, memory) ------------------------------------------------

MEMORY_EMPTY = (
    "This channel remembers nothing yet. `remember <fact>` adds a fact every conversation here "
    "keeps in mind."
)


def memory_shown(facts: Sequence[str]) -> str:
    """``memory``: the facts, numbered as ``forget N`` counts them."""
    if not facts:
        return MEMORY_EMPTY
    lines = [f"{number}. {fact}" for number, fact in enumerate(facts, 1)]
    return "**This channel remembers**\n" + "\n".join(lines) + "\n`forget N` removes fact N."


def remembered(number: int) -> str:
    return f"Remembered as fact {number}: every conversation in this channel now keeps it in mind."


def fact_forgotten(number: int, fact: str) -> str:
    return f"Forgot fact {number}: {fact}"


def which_fact(facts: Sequence[str]) -> str:
    """``forget`` without a number."""
    return "Say which fact to forget by its number, e.g. `forget 1`.\n\n" + memory_shown(facts)


def no_such_fact(number: int, count: int) -> str:
    if count == 0:
        return f"There is no fact {number}: this channel remembers nothing."
    facts = "fact" if count == 1 else "facts"
    return f"There is no fact {number}: this channel remembers {count} {facts} (see `memory`)."


def not_a_fact_number(value: str) -> str:
    return f"'{value[:60]}' is not a fact number: `forget 2` forgets fact 2 of `memory`."


def fact_too_long(length: int, limit: int) -> str:
    return f"That fact is {length:,} characters; a fact may have at most {limit:,}."


def memory_too_large(tokens: int, limit: int) -> str:
    """The memory with the new fact would take more than its share of the input budget."""
    return (
        f"With that fact this channel's memory would be {tokens:,} tokens; it may take at most "
        f"{limit:,}. Say it shorter, or `forget` a fact first (`memory` lists them)."
    )


def memory_full(count: int) -> str:
    return (
        f"This channel already remembers {count} facts, the most it keeps. `forget` one first "
        "(`memory` lists them)."
    )


# --- rendering --------------------------------------------------------------------------------


def with_notes(text: str, notes: Sequence[str]) -> str:
    """``text`` followed by the notes for the person (files not read, ...), one per line."""
    if not notes:
        return text
    return text + "\n\n" + "\n".join(f"_{note}_" for note in notes)


def answer_text(text: str, notes: Sequence[str] = ()) -> str:
    """The final message of an answer: the answer (or that it was empty), then the notes."""
    return with_notes(text if text.strip() else EMPTY_ANSWER, notes)


def failure_text(sentence: str, notes: Sequence[str] = ()) -> str:
    """The message ending a request that got no answer: the reason, then the notes."""
    return with_notes(f"{WARNING_MARK} {sentence.strip() or GENERIC_ERROR}", notes)


__all__ = [
    "CUT_OFF",
    "EMPTY_ANSWER",
    "EMPTY_MESSAGE",
    "FEEDBACK_RECORDED",
    "GENERIC_ERROR",
    "MEMORY_EMPTY",
    "MODEL_BAD_REQUEST",
    "MODEL_CONTEXT_TOO_LONG",
    "MODEL_EMPTY_ANSWER",
    "MODEL_ENDPOINT_MISSING",
    "MODEL_FAILED",
    "MODEL_KEY_REJECTED",
    "MODEL_QUOTA",
    "MODEL_REFUSED",
    "MODEL_SERVER_ERROR",
    "MODEL_STREAM_BROKEN",
    "MODEL_TIMEOUT",
    "MODEL_UNREACHABLE",
    "NOTHING_TO_SPEAK",
    "NOTHING_TO_SUMMARISE",
    "RESTARTED",
    "SPEECH_UNAVAILABLE",
    "SUMMARY_TOO_LONG",
    "SYSTEM_PROMPT_RESTORED",
    "SYSTEM_PROMPT_UPDATED",
    "WARNING_MARK",
    "answer_text",
    "answer_too_slow",
    "bad_model_name",
    "conversation_forgotten",
    "cost_text",
    "count_out_of_range",
    "fact_forgotten",
    "fact_too_long",
    "feedback_line",
    "failure_text",
    "file_not_downloaded",
    "file_too_large",
    "file_truncated",
    "file_unsupported",
    "image_unsupported",
    "input_too_long",
    "invalid_json",
    "json_cut_off",
    "json_mode_set",
    "json_mode_shown",
    "memory_full",
    "memory_shown",
    "memory_too_large",
    "model_not_found",
    "model_rate_limited",
    "model_restored",
    "model_set",
    "model_shown",
    "model_stalled",
    "no_such_fact",
    "not_a_count",
    "not_a_fact_number",
    "not_a_switch",
    "not_a_temperature",
    "over_budget",
    "remembered",
    "speech_cut",
    "speech_model_missing",
    "spoken",
    "summary",
    "system_prompt_shown",
    "system_prompt_too_long",
    "temperature_out_of_range",
    "temperature_set",
    "temperature_shown",
    "unknown_command",
    "usage_line",
    "usage_report",
    "user_rate_limited",
    "which_fact",
    "with_notes",
]
