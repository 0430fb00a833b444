"""Split a long Markdown answer into pieces no longer than a platform's message limit.

Pieces end at paragraph boundaries where possible, then at line ends, then at spaces; a code
block cut in two is closed at the end of one piece and reopened (with its language) at the start
of the next, so every piece renders on its own.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+#.-]*)")
_FENCE_ANYWHERE = re.compile(r"^\s*(```+|~~~+)", re.MULTILINE)


def _fence_state(lines: list[str], opened: str | None) -> str | None:
    """Return the opening fence line still unclosed after ``lines`` (None when balanced)."""
    for line in lines:
        m = _FENCE.match(line)
        if not m:
            continue
        if opened is None:
            opened = line.strip()
        elif line.strip().startswith(opened[:3]) and not m.group(2):
            opened = None
    return opened


def _cut_point(text: str, limit: int) -> int:
    """Best place to cut ``text`` at or before ``limit`` characters."""
    window = text[:limit]
    for sep in ("\n\n", "\n", " "):
        idx = window.rfind(sep)
        if idx > limit // 3:
            return idx + len(sep)
    return limit


def split_message(text: str, limit: int) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` characters, keeping code fences balanced."""
    if limit < 40:
        raise ValueError("limit too small to split with code fences")
    if len(text) <= limit:
        return [text]
    # room kept for a closing fence: the longest fence marker in the text, and its newline
    closing = 1 + max((len(m.group(1)) for m in _FENCE_ANYWHERE.finditer(text)), default=3)
    pieces: list[str] = []
    rest = text
    reopen: str | None = None  # fence line to reopen at the start of the next piece
    while rest:
        prefix = f"{reopen}\n" if reopen else ""
        # leave room for a closing fence that may be needed
        room = limit - len(prefix) - closing
        if len(prefix) + len(rest) <= limit:
            pieces.append(prefix + rest)
            break
        cut = _cut_point(rest, room)
        body, rest = rest[:cut], rest[cut:]
        open_after = _fence_state((prefix + body).splitlines(), None)
        piece = prefix + body.rstrip("\n")
        if open_after is not None:
            fence = _FENCE.match(open_after)
            piece += "\n" + (fence.group(1) if fence else "```")
        pieces.append(piece)
        reopen = open_after
        rest = rest.lstrip("\n") if reopen is None else rest
    return [p for p in pieces if p.strip()]
