"""Malformed gateway dispatches are skipped, never fatal.

discord.py trusts what the gateway sends: a parser that meets a field of the wrong type raises,
and for READY and RESUMED the gateway loop itself reads the payload before any parser, so a
malformed one ends the connection. Two guards sit in front of them:

- ``DispatchGuard`` wraps every parser of a client: a payload it cannot read is skipped.
- ``GuardedTree`` skips a slash command whose command data the tree cannot read.
- ``guard_gateway()`` wraps discord.py's gateway reader once per process: a READY or RESUMED
  whose payload is not what the gateway sends, or a second READY on one connection (it would
  wipe the client's caches), is skipped before discord.py reads it.

Each kind of problem is logged once (event and error type, never the payload, which may carry
message content); repeats go to DEBUG.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands
from discord.gateway import DiscordWebSocket

log = logging.getLogger("parley.discord")

_seen: set[tuple[str, str]] = set()


def skipped(event: str, problem: str) -> None:
    """Log a skipped dispatch: once per (event, problem), then at DEBUG."""
    kind = (event, problem)
    level = logging.DEBUG if kind in _seen else logging.WARNING
    _seen.add(kind)
    log.log(level, "skipped a malformed %s dispatch from Discord (%s)", *kind)


class DispatchGuard:
    """Wraps discord.py's gateway parsers so a malformed dispatch (wrong types, missing fields)
    is skipped instead of ending the connection."""

    def __init__(self) -> None:
        self.skipped = 0

    def install(self, parsers: dict[str, Callable[[Any], None]]) -> None:
        """Guard every parser of ``parsers`` (the dict the gateway looks events up in)."""
        for event, parse in list(parsers.items()):
            parsers[event] = self._guarded(event, parse)

    def _guarded(self, event: str, parse: Callable[[Any], None]) -> Callable[[Any], None]:
        def guarded(data: Any) -> None:
            try:
                parse(data)
            except Exception as exc:  # a payload discord.py cannot read; nothing to answer
                self.skipped += 1
                skipped(event, type(exc).__name__)

        return guarded


def _snowflake(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).isdigit()


def ready_problem(data: Any) -> str | None:
    """What is wrong with a READY payload for discord.py's gateway loop and parser, or None."""
    if not isinstance(data, dict):
        return "not an object"
    session, resume_url = data.get("session_id"), data.get("resume_gateway_url")
    if not (isinstance(session, str) and session):
        return "no session"
    if not (isinstance(resume_url, str) and resume_url.startswith(("wss://", "ws://"))):
        return "no resume URL"
    user = data.get("user")
    if not (isinstance(user, dict) and _snowflake(user.get("id"))):
        return "no user"
    if not isinstance(user.get("username"), str):
        return "no user"
    guilds = data.get("guilds")
    if not (isinstance(guilds, list) and all(isinstance(g, dict) for g in guilds)):
        return "no guilds"
    if not all(_snowflake(g.get("id")) for g in guilds):
        return "no guilds"
    return None


def dispatch_problem(ws: DiscordWebSocket, msg: str) -> tuple[str, str] | None:
    """(event, problem) when ``msg``, a gateway message, is a READY or RESUMED that must not
    reach discord.py; None otherwise. Other messages are left to the parsers' guard."""
    if '"READY"' not in msg and '"RESUMED"' not in msg:
        return None  # cheap: most messages are neither
    payload = json.loads(msg)
    if not isinstance(payload, dict) or payload.get("op") != DiscordWebSocket.DISPATCH:
        return None
    event = payload.get("t")
    if event not in ("READY", "RESUMED"):
        return None
    data = payload.get("d")
    if event == "RESUMED":
        return None if isinstance(data, dict) else (event, "not an object")
    if getattr(ws, "_parley_ready", False):
        return (event, "a second READY on one connection")
    problem = ready_problem(data)
    if problem is None:
        ws._parley_ready = True  # type: ignore[attr-defined]
        return None
    return (event, problem)


def _options_ok(options: Any, depth: int) -> bool:
    """Whether slash command options are objects with a name and a type, sub-options too."""
    if not isinstance(options, list):
        return False
    for option in options:
        if not isinstance(option, dict) or not isinstance(option.get("name"), str):
            return False
        kind = option.get("type", 0)
        if not isinstance(kind, int) or isinstance(kind, bool):
            return False
        if "options" in option and (depth == 0 or not _options_ok(option["options"], depth - 1)):
            return False
    return True


def interaction_problem(data: Any) -> str | None:
    """What is wrong with a slash command's ``data`` for discord.py's command tree, or None
    (the option values themselves are checked by the command's transformers)."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return "no command"
    kind = data.get("type", 1)
    if not isinstance(kind, int) or isinstance(kind, bool):
        return "no command type"
    guild_id = data.get("guild_id")
    if guild_id is not None and not _snowflake(guild_id):
        return "no guild"
    if not _options_ok(data.get("options", []), depth=2):
        return "malformed options"
    resolved = data.get("resolved", {})
    if not (isinstance(resolved, dict) and all(isinstance(v, dict) for v in resolved.values())):
        return "malformed resolved objects"
    return None


class GuardedTree(app_commands.CommandTree[Any]):
    """A command tree that skips an interaction whose command data discord.py cannot read
    (it would raise outside the tree's error handler, in a task nobody awaits)."""

    async def interaction_check(self, interaction: discord.Interaction[Any], /) -> bool:
        problem = interaction_problem(interaction.data)
        if not (isinstance(interaction.token, str) and interaction.token):
            problem = "no token"  # nothing could answer it
        guild_id: Any = interaction.guild_id  # discord.py keeps an empty list or dict as is
        if guild_id is not None and not (isinstance(guild_id, int) and guild_id > 0):
            problem = "no guild"
        if problem is not None:
            skipped("INTERACTION_CREATE", problem)
            return False
        return True


Reader = Callable[[DiscordWebSocket, Any], Awaitable[None]]


def guard_gateway() -> None:
    """Wrap ``DiscordWebSocket.received_message`` (once per process) to skip the READY and
    RESUMED payloads ``dispatch_problem`` refuses."""
    original: Reader = DiscordWebSocket.received_message
    if getattr(original, "parley_guarded", False):
        return

    async def received_message(ws: DiscordWebSocket, msg: Any, /) -> None:
        if type(msg) is bytes:  # zlib-stream: decompressed here, in order, exactly once
            msg = ws._decompressor.decompress(msg)
            if msg is None:  # a partial message
                return
        problem = dispatch_problem(ws, msg)
        if problem is not None:
            skipped(*problem)
            return
        await original(ws, msg)

    received_message.parley_guarded = True  # type: ignore[attr-defined]
    DiscordWebSocket.received_message = received_message  # type: ignore[method-assign]


__all__ = [
    "DispatchGuard",
    "GuardedTree",
    "dispatch_problem",
    "interaction_problem",
    "guard_gateway",
    "ready_problem",
    "skipped",
]
