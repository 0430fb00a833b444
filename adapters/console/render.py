"""How the terminal shows things: Markdown rendered live with rich on a terminal, plain text
when output is a pipe, a file, or the user asked for no colour (``NO_COLOR``, ``TERM=dumb``).

Answers are ``core.delivery.Renderer``s; command replies, the help table, labels and warnings
go through ``Screen``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from core import sentences
from core.messages import UsageReport

ANSWER = "parley> "
# Shown after what was already printed of an answer the user stopped with Ctrl-C. Only the
# terminal can stop an answer this way, so the sentence lives here, not in core.sentences.
STOPPED = "(answer stopped)"
_FENCE = re.compile(r"^\s*(```|~~~)")
# Lines that start a Markdown block of their own (or end a paragraph: a blank line).
_BLOCK_START = re.compile(r"^\s*($|[-*+]\s|\d+[.)]\s|#|>|```|~~~|\|)")


@dataclass(frozen=True, slots=True)
class Where:
    """What the user talks to: the model, the server's address, and whether it is the offline
    stand-in (canned answers, nothing charged)."""

    model: str
    server: str
    offline: bool

    def banner(self) -> str:
        if self.offline:
            return (
                "Parley on its offline stand-in model (canned answers, not GPT-4o; nothing "
                "is charged). Set OPENAI_API_KEY to use GPT-4o."
            )
        return f"Parley on {self.model} at {self.server}."

    def usage_line(self, usage: UsageReport) -> str:
        """The tokens of one answer, and its price unless the stand-in answered (free)."""
        tokens = f"{usage.input_tokens} in / {usage.output_tokens} out tokens"
        if self.offline:
            return f"[{usage.model} (offline stand-in): {tokens}]"
        cost = sentences.cost_text(usage.cost_usd, estimated=usage.estimated)
        return f"[{usage.model}: {tokens}, {cost}]"


@dataclass(frozen=True, slots=True)
class HelpRow:
    """One line of the help table: the command as typed, its other names, what it does."""

    usage: str
    aliases: tuple[str, ...]
    summary: str


def settled_blocks(text: str) -> int:
    """Where the last complete Markdown block of ``text`` ends (0: none yet).

    A block is complete once a blank line follows it outside a code fence; blocks before that
    point never change as the answer grows, so they can be printed for good.
    """
    position = 0
    end = 0
    fenced = False
    for line in text.splitlines(keepends=True):
        position += len(line)
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and not line.strip() and line.endswith("\n"):
            end = position
    return end


def hard_breaks(text: str) -> str:
    """``text`` with each line break outside code fences kept as a break when rendered."""
    lines = text.split("\n")
    fenced = False
    for i, line in enumerate(lines[:-1]):
        if _FENCE.match(line):
            fenced = not fenced
        elif (
            not fenced
            and line.strip()
            and not line.lstrip().startswith(("#", "|"))
            and not _BLOCK_START.match(lines[i + 1])
        ):
            lines[i] = line + "\\"
    return "\n".join(lines)


class Screen:
    """The terminal's output: rich when it is a terminal that takes styles, plain otherwise."""

    def __init__(self, out: TextIO | None = None, *, rich: bool | None = None) -> None:
        self.console = Console(file=out or sys.stdout, highlight=False, soft_wrap=False)
        self.rich = (
            rich
            if rich is not None
            else self.console.is_terminal
            and not self.console.no_color
            and not self.console.is_dumb_terminal
        )
        self._out = out or sys.stdout

    def write(self, text: str) -> None:
        """Plain text as it is (no markup, no wrapping)."""
        self._out.write(text)
        self._out.flush()

    def markdown(self, text: str) -> None:
        """A command's reply (Markdown, its line breaks meant as such)."""
        if self.rich:
            self.console.print(_markdown(hard_breaks(text)))
        else:
            self.write(f"{text}\n")

    def note(self, text: str, style: str = "dim") -> None:
        """A label or remark around the conversation (banner, usage line)."""
        if self.rich:
            self.console.print(Text(text, style=style))
        else:
            self.write(f"{text}\n")

    def help(self, rows: Sequence[HelpRow], keys: Sequence[tuple[str, str]]) -> None:
        """The commands as a table (and the keys, in an interactive chat)."""
        if not self.rich:
            width = max(len(row.usage) for row in rows) + 2
            for row in rows:
                also = f" (also {', '.join(row.aliases)})" if row.aliases else ""
                self.write(f"{row.usage:<{width}}{row.summary}{also}\n")
            for key, does in keys:
                self.write(f"{key}: {does}\n")
            return
        table = Table(title="Parley commands", title_justify="left", show_edge=False)
        table.add_column("Command", style="bold cyan", no_wrap=True)
        table.add_column("Also", style="cyan")
        table.add_column("What it does")
        for row in rows:  # Text, not markup: "[prompt]" is part of the usage
            table.add_row(Text(row.usage), Text(", ".join(row.aliases)), Text(row.summary))
        self.console.print(table)
        if keys:
            self.console.print(
                Text("  ·  ").join(Text.assemble((k, "bold"), f" {does}") for k, does in keys),
                style="dim",
            )

    def answer(
        self, *, label: bool = True, failure: Callable[[str], None] | None = None
    ) -> TerminalAnswer:
        """A renderer for the next answer; ``failure`` takes the sentence of an answer that
        failed (default: shown in its place)."""
        if self.rich:
            return LiveAnswer(self.console, label=label, failure=failure)
        return TerminalAnswer(self.write, ANSWER if label else "", failure)


class TerminalAnswer:
    """``core.delivery.Renderer`` as plain text: the answer is printed as it grows."""

    def __init__(
        self,
        write: Callable[[str], None],
        label: str = ANSWER,
        failure: Callable[[str], None] | None = None,
    ) -> None:
        self._write = write
        self._label = label
        self._failure = failure
        self._printed = ""
        self.stopped = False

    async def start(self) -> None:
        self._write(self._label)

    async def progress(self, text: str) -> None:
        self._write(text[len(self._printed) :])
        self._printed = text

    async def finish(self, text: str) -> None:
        # The final text may add to what streamed (notes, "cut off"), or differ (JSON mode).
        if text.startswith(self._printed):
            self._write(text[len(self._printed) :] + "\n")
        else:
            self._write(("\n" if self._printed else "") + text + "\n")

    async def fail(self, text: str) -> None:
        """The reason the answer ended without being complete; what was shown stays."""
        if self.stopped:
            text = STOPPED
        if self._failure is None:
            self._write(("\n" if self._printed else "") + text + "\n")
            return
        if self._printed:
            self._write("\n")
        self._failure(text + "\n")


class LiveAnswer(TerminalAnswer):
    """``core.delivery.Renderer`` on a terminal: a spinner until the first words, then the
    answer rendered as Markdown while it streams.

    Only the block being written stays live; finished blocks are printed for good, so a long
    answer scrolls like any output instead of being redrawn."""

    def __init__(
        self, console: Console, *, label: bool = True, failure: Callable[[str], None] | None = None
    ) -> None:
        super().__init__(lambda _text: None, ANSWER if label else "", failure)
        self._console = console
        self._live: Live | None = None
        self._done = 0  # how much of the answer is printed for good

    def _tail(self, text: str, *extra: RenderableType) -> Group:
        parts: list[RenderableType] = []
        if self._done == 0 and self._label:
            parts.append(Text(self._label.strip(), style="bold cyan"))
        if text[self._done :].strip():
            parts.append(_markdown(text[self._done :]))
        return Group(*parts, *extra)

    async def start(self) -> None:
        waiting = Table.grid(padding=(0, 1))
        waiting.add_row(Text(self._label.strip(), style="bold cyan"), Spinner("dots", "thinking…"))
        self._live = Live(
            waiting, console=self._console, refresh_per_second=12, vertical_overflow="ellipsis"
        )
        self._live.start()

    async def progress(self, text: str) -> None:
        if self._live is None:
            await self.start()
        assert self._live is not None
        settled = settled_blocks(text)
        if settled > self._done:
            self._console.print(self._tail(text[:settled]))
            self._done = settled
        self._live.update(self._tail(text), refresh=True)
        self._printed = text

    def _end(self, shown: RenderableType) -> None:
        if self._live is None:
            self._console.print(shown)
            return
        self._live.update(shown, refresh=True)
        self._live.stop()
        self._live = None

    async def finish(self, text: str) -> None:
        if not text.startswith(self._printed[: self._done]):
            self._done = 0  # the final text differs from what streamed (JSON mode)
        self._end(self._tail(text))

    async def fail(self, text: str) -> None:
        if self.stopped:
            self._end(self._tail(self._printed, Text(STOPPED, style="dim italic")))
        elif self._failure is not None:
            self._end(self._tail(self._printed))
            self._failure(text + "\n")
        else:
            self._end(self._tail(self._printed, Text(text, style="yellow")))


def _markdown(text: str) -> RenderableType:
    """rich's Markdown, imported on first use: its parser is a tenth of a second of start-up
    that the first prompt need not wait for."""
    from rich.markdown import Markdown

    return Markdown(text)
