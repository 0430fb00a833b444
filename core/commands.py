"""The bot's commands, defined once; each adapter exposes them in its own idiom.

Parsing and validation live here so a bad value gets the same clear sentence on every platform.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import BadCommand


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command as adapters register it (Discord options, Slack slash-command help)."""

    name: str
    summary: str
    argument: str | None = None
    argument_help: str = ""
    changes_settings: bool = False
    private: bool = True

    @property
    def usage(self) -> str:
        return f"{self.name} [{self.argument}]" if self.argument else self.name


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("help", "Show the commands and what they do."),
    CommandSpec("reset", "Forget this conversation's history.", private=False),
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
    CommandSpec("usage", "Tokens and cost for this channel and for you."),
    CommandSpec(
        "summarize",
        "Summarise the last N messages where you ask (this thread, channel, DM or terminal "
        "session; 50 when N is left out).",
        "messages",
        "How many recent messages to summarise (1-500, default 50)",
        private=False,
    ),
)

BY_NAME = {spec.name: spec for spec in COMMANDS}
_ALIASES = {"summarise": "summarize", "forget": "reset", "clear": "reset", "temp": "temperature"}
SUMMARY_MESSAGES = 50
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,99}$")
MAX_SYSTEM_PROMPT_CHARS = 8000


def canonical(name: str) -> str:
    """A command's own name for ``name`` (aliases such as ``clear`` resolved, "/" dropped)."""
    word = name.strip().lstrip("/!").lower()
    return _ALIASES.get(word, word)


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
        raise BadCommand(
            f"'{value}' is not a number: temperature takes a value from 0 to 2."
        ) from None
    if not 0.0 <= number <= 2.0 or number != number:
        raise BadCommand(f"Temperature must be between 0 and 2 (got {value}).")
    return number


def parse_switch(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"on", "true", "yes", "1", "enable"}:
        return True
    if lowered in {"off", "false", "no", "0", "disable"}:
        return False
    raise BadCommand(f"JSON mode is switched with 'on' or 'off' (got '{value}').")


def parse_model(value: str) -> str:
    name = value.strip()
    if not _MODEL_NAME.match(name):
        raise BadCommand(
            f"'{name[:60]}' is not a valid model name (letters, digits and . _ : / - only)."
        )
    return name


def parse_system_prompt(value: str) -> str:
    if len(value) > MAX_SYSTEM_PROMPT_CHARS:
        raise BadCommand(
            f"That system prompt is {len(value):,} characters; the limit is "
            f"{MAX_SYSTEM_PROMPT_CHARS:,}."
        )
    return value


def parse_count(value: str, *, low: int = 1, high: int = 500) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadCommand(f"'{value}' is not a whole number of messages.") from None
    if not low <= number <= high:
        raise BadCommand(f"Give a number of messages from {low} to {high} (got {number}).")
    return number
