"""Seeded junk for fuzzing what the platforms send: values of every JSON type, huge and odd
strings, deep nesting, and valid payloads broken in a few places (fields deleted, replaced by
junk of the wrong type, unknown fields added).

Everything is drawn from a ``random.Random`` the caller seeds, so a failure is replayed by
its seed. Strings never name a host other than 127.0.0.1, so nothing a payload makes the bot
fetch leaves the machine.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

HUGE = 100_000
STRINGS = (
    "",
    " ",
    "x",
    "0",
    "-1",
    "1.5",
    "null",
    "true",
    "{}",
    "[]",
    "C0GENERAL",
    "D0ALICE",
    "UALICE",
    "UPARLEYBOT",
    "1700000000.000100",
    "app_mention",
    "message",
    "<@UPARLEYBOT>",
    "<@UPARLEYBOT> reset",
    "<!channel> @everyone",
    "/parley",
    "model gpt-4o",
    "temperature 9",
    "summarize 99999999999999999999",
    "\x00",
    "a\x00b",
    "\ud800",
    "\u202e\u200b\ufeff",
    "é😀🇫🇷",
    "http://127.0.0.1:1/nowhere",
    "ftp://127.0.0.1/x",
    "%",
    "../../etc/passwd",
    "'; DROP TABLE turns; --",
)
INTS = (0, 1, -1, 2, 7, 10**6, 2**31, -(2**63), 2**63, 2**64 + 1, 2**70)
FLOATS = (0.5, -1.5, 1e308, 1e-308)
KEYS = (
    "type",
    "subtype",
    "id",
    "text",
    "user",
    "channel",
    "ts",
    "thread_ts",
    "event",
    "files",
    "blocks",
    "team",
    "data",
    "guild_id",
    "author",
    "content",
    "member",
    "__proto__",
    "",
)


class Junk:
    """Junk values and broken payloads from one seeded generator."""

    def __init__(self, rng: random.Random, *, nan: bool = False) -> None:
        self.rng = rng
        # NaN/Infinity are not JSON; Python's json writes and reads them, other parsers refuse.
        self.floats = (*FLOATS, float("nan"), float("inf")) if nan else FLOATS

    def string(self) -> str:
        rng = self.rng
        pick = rng.random()
        if pick < 0.05:
            return rng.choice("x\x00é😀<") * rng.randrange(HUGE // 4, HUGE)
        if pick < 0.15:
            return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(1, 40)))
        return rng.choice(STRINGS)

    def scalar(self) -> Any:
        rng = self.rng
        kinds: list[Callable[[], Any]] = [
            lambda: None,
            lambda: rng.choice((True, False)),
            lambda: rng.choice(INTS),
            lambda: rng.choice(self.floats),
            self.string,
        ]
        return rng.choice(kinds)()

    def value(self, depth: int = 3) -> Any:
        """Any JSON value: a scalar, or a list or object of junk, ``depth`` levels at most."""
        rng = self.rng
        pick = rng.random()
        if depth <= 0 or pick < 0.55:
            return self.scalar()
        if pick < 0.7:
            return [self.value(depth - 1) for _ in range(rng.randrange(4))]
        if pick < 0.75:
            return self.nested(rng.randrange(20, 200))
        return {rng.choice(KEYS): self.value(depth - 1) for _ in range(rng.randrange(4))}

    def nested(self, levels: int) -> Any:
        """Lists or objects inside each other ``levels`` deep."""
        inner: Any = self.scalar()
        for _ in range(levels):
            inner = [inner] if self.rng.random() < 0.5 else {self.rng.choice(KEYS): inner}
        return inner

    def broken(self, valid: Any, changes: int = 3) -> Any:
        """A copy of ``valid`` with one to ``changes`` fields, anywhere in it, deleted,
        replaced by junk or joined by an unknown field; sometimes no object at all."""
        rng = self.rng
        if rng.random() < 0.05:
            return self.value()
        data = copy.deepcopy(valid)
        for _ in range(rng.randint(1, changes)):
            self._break_one(data)
        return data

    def _break_one(self, data: Any) -> None:
        rng = self.rng
        parent, key = self._somewhere(data)
        if parent is None:
            return
        pick = rng.random()
        if isinstance(parent, dict) and pick < 0.3:
            del parent[key]
        elif isinstance(parent, dict) and pick < 0.4:
            parent[self.string()[:40]] = self.value()
        elif pick < 0.5 and isinstance(parent[key], str):
            parent[key] = self.string()
        else:
            parent[key] = self.value()

    def _somewhere(self, data: Any) -> tuple[Any, Any]:
        """A random (container, key) inside ``data``, preferring deeper places."""
        rng = self.rng
        parent: Any = None
        key: Any = None
        node = data
        while isinstance(node, (dict, list)) and node:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, rng.choice(keys)
            node = node[key]
            if rng.random() < 0.35:
                break
        return parent, key


__all__ = ["Junk"]
