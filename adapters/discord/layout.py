"""Lay a growing Markdown answer out as Discord messages of at most 2,000 characters.

While an answer streams, only its last message changes: once the text no longer fits, that
message is cut at a good boundary (paragraph, line, space), its code block closed if one is
open, and it becomes final; the answer continues in a new message (the code block reopened
with its language). The final pieces are never split again, so text shown in one message never
moves to the next as the answer grows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A fence line: its marker (``` or ~~~, 3 or more) and the info string (language) after it.
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*(\S*)")
_SEPARATORS = ("\n\n", "\n", " ")
_MARKER_CHARS = 10  # a fence is closed and reopened with at most this many ` or ~
_CLOSING_ROOM = 1 + _MARKER_CHARS  # a newline and the closing marker


def open_fence(text: str, opened: str | None = None) -> str | None:
    """The fence line still open at the end of ``text`` (None when every block is closed)."""
    for line in text.splitlines():
        match = _FENCE.match(line)
        if match is None:
            continue
        if opened is None:
            opened = line.strip()
        elif not match.group(2) and match.group(1).startswith(_marker(opened)):
            opened = None
    return opened


def _marker(fence_line: str) -> str:
    match = _FENCE.match(fence_line)
    return match.group(1) if match else "```"


def _reopening(fence_line: str) -> str:
    """The line that reopens a code block in the next message: its marker and language."""
    match = _FENCE.match(fence_line)
    if match is None:
        return "```"
    return match.group(1)[:_MARKER_CHARS] + match.group(2)[:20]


def _cut_at(text: str, room: int) -> int:
    """Where to end a message taken from the start of ``text`` within ``room`` characters."""
    window = text[:room]
    for separator in _SEPARATORS:
        index = window.rfind(separator)
        if index > room // 3:
            return index + len(separator)
    return room


@dataclass
class MessageLayout:
    """The messages an answer occupies: final ones, then the one still growing.

    ``pieces(text)`` takes the whole answer so far. Text that only grows keeps the final
    pieces as they are; text that no longer starts with what they hold (rare: the final
    answer differs from the stream) is laid out again from the start.
    """

    limit: int = 2000
    final: list[str] = field(default_factory=list)
    _consumed: str = ""  # the part of the answer the final pieces hold
    _reopen: str | None = None  # the fence to reopen at the start of the next piece

    def __post_init__(self) -> None:
        if self.limit < 40:
            raise ValueError("limit too small to close and reopen code fences")

    def pieces(self, text: str) -> list[str]:
        """Every message of ``text``: the final ones, then the growing one (if not blank)."""
        if not text.startswith(self._consumed):
            self.final, self._consumed, self._reopen = [], "", None
        while True:
            rest = text[len(self._consumed) :]
            head = f"{self._reopen}\n" if self._reopen else ""
            body = rest if self._reopen else rest.lstrip("\n")
            if len(head) + len(body) <= self.limit:
                growing = head + body
                return [*self.final, growing] if growing.strip() else list(self.final)
            self._finish_one(rest, head)

    def _finish_one(self, rest: str, head: str) -> None:
        """Cut the next final piece from ``rest`` (which is longer than one message)."""
        skipped = 0 if self._reopen else len(rest) - len(rest.lstrip("\n"))
        body = rest[skipped:]
        cut = _cut_at(body, self.limit - len(head) - _CLOSING_ROOM)
        taken = body[:cut]
        still_open = open_fence(taken, self._reopen)
        piece = head + taken.rstrip("\n")
        if still_open is not None:
            piece += "\n" + _marker(_reopening(still_open))
        if piece.strip():
            self.final.append(piece)
        self._consumed += rest[: skipped + cut]
        self._reopen = _reopening(still_open) if still_open else None
