"""`parley ask`: one question from a script, its answer on stdout, an error on stderr.

Exit status: 0 with an answer, 1 when the request ended without one (the sentence is on
stderr), 2 when there was nothing to ask.
"""

from __future__ import annotations

import re
import sys
import uuid
from dataclasses import dataclass
from typing import TextIO

from adapters.console.chat import console_author
from adapters.console.render import Screen, TerminalAnswer, Where
from core.delivery import Interval, deliver
from core.messages import ConversationKey, Inbound
from core.service import ConversationService

NOTHING_TO_ASK = "nothing to ask: give a question, or pipe one in (echo 'question' | parley ask)"
_JSON_ANSWER = re.compile(r"\A```json\n(?P<json>.*?)\n```(?P<rest>.*)\Z", re.DOTALL)


def question(words: list[str], stdin: TextIO) -> str:
    """The question: the words given, then (when stdin is piped) all of stdin as one message."""
    parts = [" ".join(words).strip()]
    if not stdin.isatty():
        parts.append(stdin.read().strip())
    return "\n\n".join(part for part in parts if part)


class JsonAnswer(TerminalAnswer):
    """The answer of JSON mode as bare JSON on stdout (no Markdown fence); notes on stderr."""

    async def progress(self, text: str) -> None:
        return None  # JSON mode streams nothing; the checked object comes whole

    async def finish(self, text: str) -> None:
        found = _JSON_ANSWER.match(text)
        if found is None:
            self._write(text + "\n")
            return
        self._write(found["json"] + "\n")
        if found["rest"].strip() and self._failure is not None:
            self._failure(found["rest"].strip() + "\n")


@dataclass(frozen=True, slots=True)
class Ask:
    """One question to ask: where (a named conversation, or a fresh one) and in which mode."""

    text: str
    conversation: str | None = None
    json_mode: bool = False

    @property
    def key(self) -> ConversationKey:
        # A question without a conversation gets a channel of its own: no history, and its
        # JSON mode changes nobody else's conversation.
        return ConversationKey("console", "local", self.conversation or f"ask-{uuid.uuid4().hex}")


def _renderer(ask: Ask, screen: Screen, err: TextIO) -> TerminalAnswer:
    def failure(text: str) -> None:
        err.write(text)
        err.flush()

    if ask.json_mode:
        return JsonAnswer(screen.write, "", failure)
    return screen.answer(label=False, failure=failure)


async def ask_once(
    service: ConversationService,
    where: Where,
    ask: Ask,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Answer ``ask`` and return the exit status."""
    err = err or sys.stderr
    if not ask.text.strip():
        err.write(f"parley: {NOTHING_TO_ASK}\n")
        return 2
    if where.offline:
        err.write(f"parley: {where.banner()}\n")
    screen = Screen(out)
    key, author = ask.key, console_author()
    restore = False
    if ask.json_mode and not (await service.channel_config(key.channel_key)).json_mode:
        await service.command(key, author, "json", "on")
        restore = ask.conversation is not None
    try:
        renderer = _renderer(ask, screen, err)
        done = await deliver(
            service.answer(Inbound(key, author, ask.text)), renderer, Interval(0.05)
        )
    finally:
        if restore:
            await service.command(key, author, "json", "off")
    return 0 if done.outcome == "answered" else 1
