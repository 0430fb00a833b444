"""The bot's commands, defined once; each adapter exposes them in its own idiom.

Parsing and validation live here so a bad value gets the same clear sentence on every platform.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core import sentences
from core.errors import BadCommand
from core.pricing import price_for


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command as adapters register it (Discord options, Slack slash-command help)."""

    name: str
    summary: str
    argument: str | None = None
    argument_help: str = ""
    changes_settings: bool = False
    private: bool = True
    guarded: bool = False  # changes what the channel shares even without an argument (reset)
    shown_by: str = ""  # the command that shows what this one changes, when it is another

    @property
    def usage(self) -> str:
        return f"{self.name} [{self.argument}]" if self.argument else self.name


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("help", "Show the commands and what they do."),
    CommandSpec("reset", "Forget this conversation's history.", private=False, guarded=True),
    CommandSpec(
        "system",
        "Show or set this channel's system prompt ('system default' restores the default).",
        "prompt",
        "The new system prompt",
        changes_settings=True,
        private=False,
    ),
    CommandSpec(
        "model",
        "Show or set this channel's model ('model default' restores the default).",
        "name",
        "A model name such as gpt-4o or gpt-4o-mini",
        changes_settings=True,
        private=False,
    ),
    CommandSpec(
        "temperature",
        "Show or set the sampling temperature, 0 to 2.",
        "value",
        "A number from 0 to 2",
        changes_settings=True,
        private=False,
    ),
    CommandSpec(
        "json",
        "Show or switch JSON mode: answers are a single JSON object.",
        "on|off",
        "on or off",
        changes_settings=True,
        private=False,
    ),
    CommandSpec("memory", "Show the facts this channel remembers in every conversation."),
    CommandSpec(
        "remember",
        "Add a fact every conversation in this channel keeps in mind.",
        "fact",
        "The fact to remember, e.g. 'we release on Thursdays'",
        changes_settings=True,
        private=False,
        shown_by="memory",
    ),
    CommandSpec(
        "forget",
        "Remove fact N (as 'memory' numbers it) from this channel's memory.",
        "number",
        "The number of the fact to forget, as 'memory' lists it",
        changes_settings=True,
        private=False,
        shown_by="memory",
    ),
    CommandSpec("usage", "Tokens and cost for this channel and for you."),
    CommandSpec(
        "summarize",
        "Summarise the last N messages where you ask (this thread, channel, DM or terminal "
        "session; 50 when N is left out).",
        "messages",
        "How many recent messages to summarise (1-500, default 50)",
        private=False,
    ),
    CommandSpec(
        "speak",
        "Read this conversation's last answer aloud: an audio file, posted here.",
        private=False,
    ),
)

BY_NAME = {spec.name: spec for spec in COMMANDS}
ALIASES = {"summarise": "summarize", "clear": "reset", "temp": "temperature"}
SUMMARY_MESSAGES = 50
# Any id a server may list: OpenAI's names, Ollama's "llama3:8b", vLLM's "org/model", a
# llama.cpp server's file path; no spaces, control characters, quotes or angle brackets.
_MODEL_NAME = re.compile(r"^[^\s\x00-\x1f\x7f<>\"'`]{1,300}$")
MAX_SYSTEM_PROMPT_CHARS = 8000
# A channel's memory: a short list, at most this share of the input budget.
MAX_FACT_CHARS = 500
MAX_FACTS = 30
MEMORY_BUDGET_SHARE = 8  # memory may take 1/8 of the input budget


def canonical(name: str) -> str:
    """A command's own name for ``name`` (aliases such as ``clear`` resolved, "/" dropped)."""
    word = name.strip().lstrip("/!").lower()
    return ALIASES.get(word, word)


def summary_count(args: str) -> int:
    """How many messages ``summarize [N]`` covers: N, or ``SUMMARY_MESSAGES``."""
    return parse_count(args.strip()) if args.strip() else SUMMARY_MESSAGES


def parse_command(text: str) -> tuple[str, str] | None:
    """Recognise a command typed as text: "/model gpt-4o", "!system be terse", or a bare
    command word alone ("reset"). Anything else is a question, even when it starts with a
    command word ("system design question: ...", "clear explanation of monads")."""
    stripped = text.strip()
    if not stripped:
        return None
    word, _, rest = stripped.partition(" ")
    marked = word[0] in "/!"
    word = canonical(word)
    if word not in BY_NAME:
        return None
    if not marked and rest.strip():
        return None
    return word, rest.strip()


def help_text() -> str:
    lines = ["**Parley commands**"]
    lines += [f"- `/{spec.usage}`: {spec.summary}" for spec in COMMANDS]
    return "\n".join(lines)


def parse_temperature(value: str) -> float:
    try:
        number = float(value.replace(",", "."))
    except ValueError:
        raise BadCommand(sentences.not_a_temperature(value)) from None
    if not 0.0 <= number <= 2.0 or number != number:
        raise BadCommand(sentences.temperature_out_of_range(value))
    return number


def parse_switch(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"on", "true", "yes", "1", "enable"}:
        return True
    if lowered in {"off", "false", "no", "0", "disable"}:
        return False
    raise BadCommand(sentences.not_a_switch(value))


def parse_model(value: str) -> str:
    name = value.strip()
    if not _MODEL_NAME.match(name):
        raise BadCommand(sentences.bad_model_name(name))
    return name


def parse_system_prompt(value: str) -> str:
    if len(value) > MAX_SYSTEM_PROMPT_CHARS:
        raise BadCommand(sentences.system_prompt_too_long(len(value), MAX_SYSTEM_PROMPT_CHARS))
    return value


def parse_fact(value: str) -> str:
    """A fact for ``remember``: one line (line breaks would break the numbered list)."""
    fact = " ".join(value.split())
    if len(fact) > MAX_FACT_CHARS:
        raise BadCommand(sentences.fact_too_long(len(fact), MAX_FACT_CHARS))
    return fact


def parse_fact_number(value: str) -> int:
    """The N of ``forget N`` (1 is the first fact ``memory`` lists)."""
    try:
        number = int(value.strip().lstrip("#"))
    except ValueError:
        raise BadCommand(sentences.not_a_fact_number(value)) from None
    if number < 1:
        raise BadCommand(sentences.not_a_fact_number(value))
    return number


def parse_count(value: str, *, low: int = 1, high: int = 500) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadCommand(sentences.not_a_count(value)) from None
    if not low <= number <= high:
        raise BadCommand(sentences.count_out_of_range(number, low, high))
    return number


# --- commands that show or set one channel setting -------------------------------------------

Prices = Mapping[str, tuple[float, float]]
RESTORE_WORDS = frozenset({"default", "reset"})


@dataclass(frozen=True, slots=True)
class ChannelSetting:
    """A command that shows or sets one of a channel's overrides: ``field`` names it both in
    ``core.ports.ChannelOverrides`` and in the effective channel config.

    ``shown(value)`` describes the effective value, ``parse(args)`` validates a new one and
    ``updated(value, prices)`` confirms it. With ``restored``, "default" or "reset" clears the
    override, and ``restored(value)`` names the default now in effect.
    """

    command: str
    field: str
    parse: Callable[[str], Any]
    shown: Callable[[Any], str]
    updated: Callable[[Any, Prices], str]
    restored: Callable[[Any], str] | None = None


CHANNEL_SETTINGS: tuple[ChannelSetting, ...] = (
    ChannelSetting(
        "system",
        "system_prompt",
        parse_system_prompt,
        sentences.system_prompt_shown,
        lambda _prompt, _prices: sentences.SYSTEM_PROMPT_UPDATED,
        lambda _prompt: sentences.SYSTEM_PROMPT_RESTORED,
    ),
    ChannelSetting(
        "model",
        "model",
        parse_model,
        sentences.model_shown,
        lambda model, prices: sentences.model_set(model, priced=bool(price_for(model, prices))),
        sentences.model_restored,
    ),
    ChannelSetting(
        "temperature",
        "temperature",
        parse_temperature,
        sentences.temperature_shown,
        lambda value, _prices: sentences.temperature_set(value),
    ),
    ChannelSetting(
        "json",
        "json_mode",
        parse_switch,
        sentences.json_mode_shown,
        lambda on, _prices: sentences.json_mode_set(on),
    ),
)
