"""Lay a Markdown answer out in Slack messages of at most ``LIMIT`` characters each.

The limit holds for what Slack receives, after conversion to mrkdwn or Markdown escaping, which
can make a text longer (``&`` becomes ``&amp;``): a piece is cut from the Markdown, converted,
and cut shorter when it grew too long. A code block cut in two is closed at the end of one
message and reopened at the start of the next.

While an answer grows, a message is only ever closed after the text it already shows, so text
never moves from one message into the next, and a message never changes once a later one exists.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from adapters.slack.mrkdwn import to_markdown_text, to_mrkdwn

LIMIT = 3900
RESERVE = 8  # room kept at the end of a growing message for the fence that may close it
SEPARATORS = ("\n\n", "\n", " ")

_FENCE = re.compile(r"^\s*(```+|~~~+)")


def slack_length(markdown: str) -> int:
    """How long ``markdown`` is once sent, whichever way it goes (mrkdwn or ``markdown_text``)."""
    return max(len(to_mrkdwn(markdown)), len(to_markdown_text(markdown)))


def open_fence(markdown: str) -> str | None:
    """The opening line of a code block still open at the end of ``markdown``, or None.

    Same rules as ``to_mrkdwn``: a block closes at a line holding only a fence of the same kind,
    at least as long as the one that opened it.
    """
    opened: str | None = None
    marker = ""
    for line in markdown.split("\n"):
        m = _FENCE.match(line)
        if m is None:
            continue
        if opened is None:
            opened, marker = line.strip(), m.group(1)
        elif _closes(m.group(1), marker) and line.strip() == m.group(1):
            opened = None
    return opened


def _closes(fence: str, marker: str) -> bool:
    return fence[0] == marker[0] and len(fence) >= len(marker)


def _marker(fence_line: str) -> str:
    m = _FENCE.match(fence_line)
    return m.group(1) if m else "```"


@dataclass(slots=True)
class Layout:
    """Where the messages of one answer start in its text; they only ever get added."""

    limit: int = LIMIT
    measure: Callable[[str], int] = slack_length
    _text: str = ""
    _starts: list[int] = field(default_factory=lambda: [0])
    _reopens: list[str] = field(default_factory=lambda: [""])
    _shown_end: int = 0

    def pieces(self, text: str, *, final: bool) -> list[str]:
        """The Markdown of each message showing ``text`` (an answer so far, or complete).

        When the text no longer begins with what earlier messages hold (an answer replaced by
        a repaired one), the layout starts over.
        """
        if not text.startswith(self._text[: self._starts[-1]]):
            self._starts, self._reopens, self._shown_end = [0], [""], 0
        room = self.limit if final else self.limit - RESERVE
        while self.measure(self._source(text, len(self._starts) - 1, len(text))) > room:
            self._close_last(text)
        self._text, self._shown_end = text, len(text)
        pieces = [self._piece(text, i) for i in range(len(self._starts))]
        if len(pieces) > 1 and not pieces[-1].strip():
            pieces.pop()
        return pieces if pieces[-1].strip() else []

    def _source(self, text: str, index: int, end: int) -> str:
        """Message ``index``'s Markdown up to ``end``: the reopened fence, then its text."""
        reopen = self._reopens[index]
        body = text[self._starts[index] : end]
        return f"{reopen}\n{body}" if reopen else body.lstrip("\n")

    def _piece(self, text: str, index: int) -> str:
        last = index == len(self._starts) - 1
        end = len(text) if last else self._starts[index + 1]
        source = self._source(text, index, end)
        if last:
            return source
        fence = open_fence(source)
        if fence is None:
            return source
        return source + ("" if source.endswith("\n") else "\n") + _marker(fence)

    def _close_last(self, text: str) -> None:
        """End the last message where it fits, not before what it already shows (unless even
        that does not fit)."""
        index = len(self._starts) - 1
        start, reopen = self._starts[index], self._reopens[index]
        keep = max(start, min(self._shown_end, len(text)))
        floor = max(start + 1, keep)
        window = min(len(text), start + self.limit - len(reopen) - RESERVE)
        while True:
            window = max(window, floor)
            end = _boundary(text, start, window, keep)
            self._starts.append(end)
            self._reopens.append("")
            size = self.measure(self._piece(text, index))
            if size <= self.limit or window == start + 1:
                break
            self._starts.pop()
            self._reopens.pop()
            if window == floor:
                floor = keep = start + 1
            # Shrink in proportion to how much conversion made the piece grow.
            window = min(end - 1, start + (end - start) * self.limit // size)
        fence = open_fence(self._source(text, index, end))
        self._reopens[-1] = fence or ""
        self._shown_end = end


def _boundary(text: str, start: int, window: int, keep: int) -> int:
    """The best place to end a message in ``text[start:window]``: after a paragraph, a line or
    a word, not before ``keep`` nor in the first third; else exactly at ``window``."""
    low = max(keep, start + (window - start) // 3)
    for separator in SEPARATORS:
        found = text.rfind(separator, low, window)
        if found >= 0:
            return found + len(separator)
    return window


def fit(markdown: str, limit: int = LIMIT) -> list[str]:
    """``markdown`` (complete) cut into pieces that each fit a Slack message once converted."""
    return Layout(limit).pieces(markdown, final=True)


__all__ = ["LIMIT", "Layout", "fit", "open_fence", "slack_length"]
