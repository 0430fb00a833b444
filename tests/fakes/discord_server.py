"""A fake Discord on 127.0.0.1: the gateway websocket and the REST routes discord.py calls.

One aiohttp server speaks Discord's wire protocol well enough for the real discord.py client to
log in, connect, sync application commands and receive interactions and messages. Every REST
call is recorded (``calls``) so tests check what a user would see; faults (429 with Discord's
rate-limit headers, 401 for an expired interaction token, 403 Missing Permissions) can be
injected per route. Like Discord, it refuses a second response to one interaction (40060) and
one that comes after ``interaction_deadline`` seconds (10062 Unknown interaction).

Sharding as Discord does it: each connection IDENTIFYs with ``shard: [id, count]`` and gets the
guilds whose ``(guild_id >> 22) % count`` is its id, and only their events; direct messages go
to shard 0. ``add_guild(shard=(id, count))`` adds a guild that lands on a given shard.

Write limits (``enforce_write_limits=True``): at most 5 message writes in any 5 s (a rolling
window) per channel, per interaction token (its original response and follow-ups; the
callback that acknowledges an interaction is a bucket of its own) and per message; one more is answered 429 with a real ``Retry-After`` and the
``X-RateLimit-*`` headers discord.py follows, and every answer carries the bucket's true
``X-RateLimit-Remaining`` (with ``announce_limits=False`` it does not, as when other clients
share the bucket: discord.py can't wait ahead, so a write over the limit meets the 429). The time of every accepted write is kept per bucket (``writes``),
enforced or not, so ``most_writes()`` tells the most writes any bucket took in any window.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

# Discord's snowflakes count milliseconds from the start of 2015.
DISCORD_EPOCH_MS = 1_420_070_400_000

API_PREFIX = "/api/v10"
MESSAGE_CONTENT_INTENT = 1 << 15
ALL_PERMISSIONS = str((1 << 50) - 1)
MEMBER_PERMISSIONS = str((1 << 0) | (1 << 6) | (1 << 10) | (1 << 11) | (1 << 16) | (1 << 31))
EPHEMERAL = 1 << 6
LOADING = 1 << 7  # a deferred response still "thinking…"
WAIT_SECONDS = 30.0
# Discord's message write limit: 5 writes per 5 s per channel and per interaction token.
WRITE_LIMIT = (5, 5.0)
WRITE_METHODS = ("POST", "PATCH", "PUT", "DELETE")


@dataclass
class Call:
    """One REST request the client made, and the status the fake answered."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int = 200

    @property
    def content(self) -> str | None:
        """The message text a request carried (``data.content`` for interaction callbacks)."""
        if not isinstance(self.body, dict):
            return None
        data = self.body if "content" in self.body else self.body.get("data")
        content = data.get("content") if isinstance(data, dict) else None
        return content if isinstance(content, str) else None


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    times: int
    retry_after: float
    after: int = 0


@dataclass
class FakeUser:
    """A Discord user known to the fake guild."""

    id: str
    name: str
    bot: bool = False
    roles: list[str] = field(default_factory=list)
    permissions: str = MEMBER_PERMISSIONS

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.name,
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }

    def member(self, *, with_user: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": list(self.roles),
            "joined_at": _now(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
            "avatar": None,
            "pending": False,
        }
        if with_user:
            data["user"] = self.payload()
        return data


def _now() -> str:
    return datetime.now(UTC).isoformat()


class FakeDiscord:
    """Gateway + REST fake. Use ``async with FakeDiscord() as discord:``.

    ``api_url`` and ``gateway_url`` go to ``DISCORD_API_URL`` / ``DISCORD_GATEWAY_URL``.
    ``refuse_intents`` is a bitmask of intents the gateway rejects with close code 4014;
    ``identify_close_code`` closes every IDENTIFY with that code (e.g. 4004, bad token).
    """

    def __init__(
        self,
        *,
        refuse_intents: int = 0,
        identify_close_code: int | None = None,
        enforce_write_limits: bool = False,
        announce_limits: bool = True,
    ) -> None:
        self._last_id = 0
        self.enforce_write_limits = enforce_write_limits
        self.announce_limits = announce_limits
        self.write_limit = WRITE_LIMIT
        # bucket ("channel:ID", "token:TOKEN", "message:...") -> time.monotonic() of each write
        self.writes: dict[str, list[float]] = {}
        self.refuse_intents = refuse_intents
        self.identify_close_code = identify_close_code
        self.app_id = self.new_id()
        self.guild_id = self.new_id()
        self.guild_ids = [self.guild_id]
        self.channel_id = self.new_id()
        self.other_channel_id = self.new_id()
        self.moderator_role_id = self.new_id()
        self.bot = FakeUser(self.app_id, "parley", bot=True, permissions=ALL_PERMISSIONS)
        self.user = FakeUser(self.new_id(), "alice")
        self.moderator = FakeUser(
            self.new_id(), "mod", roles=[self.moderator_role_id], permissions=ALL_PERMISSIONS
        )
        self.users = {u.id: u for u in (self.bot, self.user, self.moderator)}
        self.channels: dict[str, dict[str, Any]] = {
            self.channel_id: self._text_channel(self.channel_id, "general"),
            self.other_channel_id: self._text_channel(self.other_channel_id, "random"),
        }
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.webhook_messages: dict[str, dict[str, Any]] = {}
        self.uploads: dict[str, bytes] = {}  # attachment id → the bytes a message carried
        self.commands: dict[str, list[dict[str, Any]]] = {}
        self.calls: list[Call] = []
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.close_codes: list[int] = []
        self.connected = asyncio.Event()
        self._faults: list[_Fault] = []
        self._holds: list[tuple[str, re.Pattern[str], list[int], asyncio.Event]] = []
        self.held: list[Call] = []
        self._files: dict[str, bytes] = {}
        self.file_requests: list[tuple[str, str | None]] = []  # (file, Range header)
        self._interaction_channels: dict[str, str] = {}
        self._acknowledged: set[str] = set()
        self._dispatched_at: dict[str, float] = {}
        self.interaction_deadline = 3.0
        self._sockets: list[web.WebSocketResponse] = []
        self._shard_of: dict[web.WebSocketResponse, tuple[int, int]] = {}
        self._seq = 0
        self._replay: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{name}", self._attachment)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _, _, _, released in self._holds:
            released.set()
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def add_guild(self, *, shard: tuple[int, int] = (0, 1)) -> tuple[str, str]:
        """A new guild (with one text channel, "general") whose id lands on ``shard``
        ``(id, count)``; before clients connect. Returns (guild id, channel id)."""
        wanted, count = shard
        guild = int(self.new_id())
        while (guild >> 22) % count != wanted:
            guild += 1 << 22
        self._last_id = max(self._last_id, guild)
        guild_id = str(guild)
        channel_id = self.new_id()
        self.guild_ids.append(guild_id)
        self.channels[channel_id] = self._text_channel(channel_id, "general", guild_id)
        return guild_id, channel_id

    def add_channel(self, name: str) -> str:
        """A new text channel in the main guild (before clients connect); its id."""
        channel_id = self.new_id()
        self.channels[channel_id] = self._text_channel(channel_id, name)
        return channel_id

    def new_id(self) -> str:
        """A snowflake of the current time, as Discord makes them (later ids, later times)."""
        now = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last_id = max(self._last_id + 1, now)
        return str(self._last_id)

    # --- fault injection ------------------------------------------------------------------

    def fail(
        self,
        method: str,
        path: str,
        *,
        status: int = 429,
        times: int = 1,
        retry_after: float = 0.05,
        after: int = 0,
    ) -> None:
        """Answer ``times`` requests matching ``method`` and the ``path`` regex with ``status``
        (429: Discord's rate-limit headers and body; 401: an expired interaction token; 403:
        Missing Permissions), once ``after`` matching requests have been answered normally."""
        self._faults.append(_Fault(method, re.compile(path), status, times, retry_after, after))

    def hold(self, method: str, path: str, *, times: int = 1) -> asyncio.Event:
        """Leave the next ``times`` requests matching ``method`` and the ``path`` regex
        unanswered (a slow Discord, or a client that dies waiting) until the returned event is
        set; ``held`` lists them."""
        released = asyncio.Event()
        self._holds.append((method, re.compile(path), [times], released))
        return released

    async def _held(self, call: Call) -> None:
        for method, pattern, left, released in self._holds:
            if left[0] > 0 and call.method == method and pattern.search(call.path):
                left[0] -= 1
                self.held.append(call)
                await self._notify()
                await released.wait()
                return

    def _fault_for(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.times > 0 and fault.method == method and fault.pattern.search(path):
                if fault.after > 0:
                    fault.after -= 1
                    continue
                fault.times -= 1
                return fault
        return None

    # --- what the client did --------------------------------------------------------------

    def calls_to(self, method: str, path: str) -> list[Call]:
        """Recorded calls with ``method`` whose path matches the ``path`` regex."""
        pattern = re.compile(path)
        return [c for c in self.calls if c.method == method and pattern.search(c.path)]

    async def wait_for(self, check: Callable[[], Any]) -> Any:
        """Wait until ``check()`` is truthy (re-checked after every request and gateway step);
        return its value. Gives up after ``WAIT_SECONDS`` so a broken test fails, not hangs."""

        async def until() -> Any:
            async with self._changed:
                while not (value := check()):
                    await self._changed.wait()
                return value

        return await asyncio.wait_for(until(), WAIT_SECONDS)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def rate_limited(self) -> list[Call]:
        """The requests answered 429 (injected faults and enforced limits alike)."""
        return [c for c in self.calls if c.status == 429]

    def most_writes(self, seconds: float | None = None) -> tuple[int, str]:
        """The most writes one bucket took in any ``seconds`` (default: the limit's window),
        and that bucket (0, "" before any write)."""
        window = self.write_limit[1] if seconds is None else seconds
        counts = [
            (most_in_window(stamps, window), bucket) for bucket, stamps in self.writes.items()
        ]
        return max(counts, default=(0, ""))

    def interaction_messages(self, token: str) -> list[str]:
        """What the user sees for an interaction: the original response, then follow-ups."""
        out = []
        original = self.webhook_messages.get(f"{token}:@original")
        if original is not None:
            out.append(original["content"])
        out += [
            m["content"]
            for k, m in self.webhook_messages.items()
            if k.startswith(f"{token}:") and not k.endswith("@original")
        ]
        return out

    def channel_messages(self, channel_id: str, *, author_id: str | None = None) -> list[str]:
        """Current text of the messages in a channel, oldest first."""
        return [
            m["content"]
            for m in self.messages.get(channel_id, [])
            if author_id is None or m["author"]["id"] == author_id
        ]

    def threads(self) -> list[dict[str, Any]]:
        return [c for c in self.channels.values() if c["type"] == 11]

    def dm_messages(self, user: FakeUser) -> list[str]:
        """What the bot sent to ``user`` in direct messages."""
        return [
            text
            for c in self.channels.values()
            if c["type"] == 1 and c["recipients"][0]["id"] == user.id
            for text in self.channel_messages(c["id"])
        ]

    # --- gateway --------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            payload = json.loads(msg.data)
            op = payload.get("op")
            if op == 1:
                await ws.send_json({"op": 11, "d": None, "s": None, "t": None})
            elif op == 2:
                self.identifies.append(payload["d"])
                if self.identify_close_code is not None:
                    self.close_codes.append(self.identify_close_code)
                    await ws.close(code=self.identify_close_code, message=b"Refused.")
                    break
                if payload["d"].get("intents", 0) & self.refuse_intents:
                    self.close_codes.append(4014)
                    await ws.close(code=4014, message=b"Disallowed intent(s).")
                    break
                shard_id, count = payload["d"].get("shard") or (0, 1)
                self._shard_of[ws] = (shard_id, count)
                self._sockets.append(ws)
                guilds = [g for g in self.guild_ids if self._in_shard(g, (shard_id, count))]
                await self._send(ws, "READY", self._ready_payload(guilds, (shard_id, count)))
                for guild_id in guilds:
                    await self._send(ws, "GUILD_CREATE", self._guild_payload(guild_id))
                self.connected.set()
                await self._notify()
            elif op == 6:
                self.resumes.append(payload["d"])
                self._shard_of[ws] = _session_shard(payload["d"].get("session_id"))
                self._sockets.append(ws)
                for event, data in self._replay:
                    await self._send(ws, event, data)
                self._replay = []
                await self._send(ws, "RESUMED", {})
                self.connected.set()
                await self._notify()
        if ws in self._sockets:
            self._sockets.remove(ws)
        self._shard_of.pop(ws, None)
        return ws

    @staticmethod
    def _in_shard(guild_id: str | None, shard: tuple[int, int]) -> bool:
        """Whether a guild's events go to ``shard`` (no guild: a DM, which shard 0 gets)."""
        shard_id, count = shard
        if guild_id is None:
            return shard_id == 0
        return (int(guild_id) >> 22) % count == shard_id

    def _receivers(self, data: Any) -> list[web.WebSocketResponse]:
        """The connections an event is sent to: the shard of its guild."""
        guild_id = data.get("guild_id") if isinstance(data, dict) else None
        guild = str(guild_id) if guild_id else None
        return [ws for ws in self._sockets if self._in_shard(guild, self._shard_of.get(ws, (0, 1)))]

    async def _send(self, ws: web.WebSocketResponse, event: str, data: dict[str, Any]) -> None:
        self._seq += 1
        await ws.send_json({"op": 0, "t": event, "s": self._seq, "d": data})

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a gateway event to every connected client (of the event's shard)."""
        for ws in self._receivers(data):
            await self._send(ws, event, data)

    async def dispatch_raw(self, event: str, data: Any) -> None:
        """Send a gateway dispatch whose data may be anything at all (hostile payloads)."""
        for ws in list(self._sockets):
            self._seq += 1
            await ws.send_json({"op": 0, "t": event, "s": self._seq, "d": data})

    async def drop_connection(self, *, replay: Sequence[tuple[str, dict[str, Any]]] = ()) -> None:
        """Close the socket as Discord does before a resume; on RESUME, redeliver ``replay``."""
        self._replay = list(replay)
        self.connected.clear()
        for ws in list(self._sockets):
            self._sockets.remove(ws)
            await ws.close(code=4000, message=b"Unknown error")

    def ready_payload(self) -> dict[str, Any]:
        """READY as the gateway sends it to an unsharded bot."""
        return self._ready_payload(list(self.guild_ids), (0, 1))

    def guild_payload(self, guild_id: str) -> dict[str, Any]:
        """GUILD_CREATE for ``guild_id`` as the gateway sends it."""
        return self._guild_payload(guild_id)

    def _ready_payload(self, guilds: list[str], shard: tuple[int, int]) -> dict[str, Any]:
        session = "fake-session" if shard == (0, 1) else f"fake-session-{shard[0]}-of-{shard[1]}"
        return {
            "v": 10,
            "user": {**self.bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": g, "unavailable": True} for g in guilds],
            "session_id": session,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": self.app_id, "flags": 1 << 19},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "shard": list(shard),
        }

    def _guild_payload(self, guild_id: str) -> dict[str, Any]:
        everyone = {
            "id": guild_id,
            "name": "@everyone",
            "permissions": MEMBER_PERMISSIONS,
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
        moderators = {**everyone, "id": self.moderator_role_id, "name": "moderators", "position": 1}
        mine = [c for c in self.channels.values() if c.get("guild_id") == guild_id]
        channels = [
            {k: v for k, v in c.items() if k != "guild_id"} for c in mine if c["type"] != 11
        ]
        return {
            "id": guild_id,
            "name": "Fake Guild",
            "icon": None,
            "owner_id": self.moderator.id,
            "roles": [everyone, moderators] if guild_id == self.guild_id else [everyone],
            "channels": channels,
            "threads": [c for c in mine if c["type"] == 11],
            "members": [u.member() for u in self.users.values()],
            "member_count": len(self.users),
            "large": False,
            "features": [],
            "emojis": [],
            "stickers": [],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "joined_at": _now(),
            "unavailable": False,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "system_channel_id": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
        }

    def _text_channel(
        self, channel_id: str, name: str, guild_id: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": channel_id,
            "type": 0,
            "guild_id": guild_id or self.guild_id,
            "name": name,
            "position": 0,
            "permission_overwrites": [],
            "parent_id": None,
            "nsfw": False,
            "topic": None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "flags": 0,
        }

    # --- events a test sends --------------------------------------------------------------

    def message_payload(
        self,
        content: str,
        *,
        channel_id: str | None = None,
        author: FakeUser | None = None,
        mention_bot: bool = False,
        reply_to: dict[str, Any] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        """A MESSAGE_CREATE payload (also stored, so history and fetches find it)."""
        author = author or self.user
        channel_id = channel_id or self.channel_id
        guild_id = self.channels.get(channel_id, {}).get("guild_id", self.guild_id)
        if mention_bot:
            content = f"<@{self.bot.id}> {content}"
        data: dict[str, Any] = {
            "id": message_id or self.new_id(),
            "channel_id": channel_id,
            "guild_id": guild_id,
            "author": author.payload(),
            "member": author.member(with_user=False),
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [{**self.bot.payload(), "member": self.bot.member(with_user=False)}]
            if mention_bot
            else [],
            "mention_roles": [],
            "attachments": attachments or [],
            "embeds": [],
            "pinned": False,
            "type": 19 if reply_to else 0,
            "flags": 0,
            "components": [],
        }
        if reply_to is not None:
            data["message_reference"] = {
                "type": 0,
                "message_id": reply_to["id"],
                "channel_id": reply_to["channel_id"],
                "guild_id": guild_id,
            }
            # like Discord, only one level: the referenced message's own reference is unresolved
            data["referenced_message"] = {
                k: v for k, v in reply_to.items() if k != "referenced_message"
            }
        self._store(channel_id, data)
        return data

    def _store(self, channel_id: str, message: dict[str, Any]) -> None:
        stored = self.messages.setdefault(channel_id, [])
        if not any(m["id"] == message["id"] for m in stored):
            stored.append(message)

    def attachment(self, name: str, content_type: str, data: bytes) -> dict[str, Any]:
        """An attachment payload whose URL this server serves."""
        att_id = self.new_id()
        self._files[f"{att_id}-{name}"] = data
        url = f"{self.base_url}/attachments/{att_id}-{name}"
        return {
            "id": att_id,
            "filename": name,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
        }

    def _as_read(self, message: dict[str, Any]) -> dict[str, Any]:
        """A message as the bot may read it: without the Message Content intent, Discord blanks
        the content of messages that neither come from the bot nor mention it."""
        intents = self.identifies[-1].get("intents", 0) if self.identifies else 0
        readable = message["author"]["id"] == self.bot.id or any(
            u["id"] == self.bot.id for u in message.get("mentions", [])
        )
        if readable or intents & MESSAGE_CONTENT_INTENT:
            return message
        return {**message, "content": "", "attachments": [], "embeds": []}

    async def _attachment(self, request: web.Request) -> web.Response:
        """A file, or the byte range asked for (``Range: bytes=a-b``, as Discord's CDN does)."""
        name = request.match_info["name"]
        data = self._files.get(name)
        self.file_requests.append((name, request.headers.get("Range")))
        if data is None:
            return web.Response(status=404)
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        if wanted is None:
            return web.Response(body=data, content_type="application/octet-stream")
        first = int(wanted.group(1))
        last = min(int(wanted.group(2) or len(data) - 1), len(data) - 1)
        return web.Response(
            status=206,
            body=data[first : last + 1],
            content_type="application/octet-stream",
            headers={"Content-Range": f"bytes {first}-{last}/{len(data)}"},
        )

    async def send_message(self, content: str, **kwargs: Any) -> dict[str, Any]:
        """Dispatch MESSAGE_CREATE for a new message; returns its payload."""
        data = self.message_payload(content, **kwargs)
        await self.dispatch("MESSAGE_CREATE", data)
        return data

    async def send_command(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user: FakeUser | None = None,
        channel_id: str | None = None,
        resolved_attachments: dict[str, dict[str, Any]] | None = None,
        interaction_id: str | None = None,
    ) -> dict[str, Any]:
        """Dispatch INTERACTION_CREATE for a slash command; returns the payload (id, token)."""
        payload = self.command_payload(
            name,
            options,
            user=user,
            channel_id=channel_id,
            resolved_attachments=resolved_attachments,
            interaction_id=interaction_id,
        )
        await self.dispatch("INTERACTION_CREATE", payload)
        return payload

    def command_payload(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user: FakeUser | None = None,
        channel_id: str | None = None,
        resolved_attachments: dict[str, dict[str, Any]] | None = None,
        interaction_id: str | None = None,
    ) -> dict[str, Any]:
        """The INTERACTION_CREATE payload of a slash command (its token known to this fake)."""
        user = user or self.user
        channel = self.channels[channel_id or self.channel_id]
        command = next(
            (c for cmds in self.commands.values() for c in cmds if c["name"] == name), None
        )
        opt_types = {o["name"]: o["type"] for o in (command or {}).get("options", [])}
        interaction_id = interaction_id or self.new_id()
        data: dict[str, Any] = {
            "id": (command or {}).get("id", self.new_id()),
            "name": name,
            "type": 1,
            "options": [
                {"name": k, "type": opt_types.get(k, 3), "value": v}
                for k, v in (options or {}).items()
            ],
        }
        guild_id = channel.get("guild_id", self.guild_id)
        if guild_id:
            data["guild_id"] = guild_id
        if resolved_attachments:
            data["resolved"] = {"attachments": resolved_attachments}
        payload = {
            "id": interaction_id,
            "application_id": self.app_id,
            "type": 2,
            "data": data,
            "guild_id": guild_id,
            "channel_id": channel["id"],
            "channel": channel,
            "member": {**user.member(), "permissions": user.permissions},
            "token": f"tok-{interaction_id}",
            "version": 1,
            "app_permissions": ALL_PERMISSIONS,
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": guild_id},
            "context": 0,
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        self._interaction_channels[payload["token"]] = channel["id"]
        self._dispatched_at[interaction_id] = time.monotonic()
        return payload

    # --- REST -----------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body: Any = None
        if request.can_read_body:
            if request.content_type.startswith("multipart/"):
                body, files = {}, []
                async for part in await request.multipart():
                    name = getattr(part, "name", None) or ""
                    if name == "payload_json":
                        body = json.loads(await part.text())  # type: ignore[union-attr]
                    elif name.startswith("files["):
                        files.append(
                            {
                                "filename": getattr(part, "filename", None) or "",
                                "content_type": part.headers.get("Content-Type", ""),
                                "data": await part.read(),  # type: ignore[union-attr]
                            }
                        )
                if files:
                    body["_files"] = files
            else:
                raw = await request.read()
                body = json.loads(raw) if raw else None
        call = Call(request.method, path, dict(request.query), body)
        self.calls.append(call)
        await self._held(call)
        try:
            fault = self._fault_for(request.method, path)
            if fault is not None:
                call.status = fault.status
                return _fault_response(fault)
            buckets = write_buckets(request.method, path, self.app_id)
            limited = self._limited(buckets)
            if limited is not None:
                call.status = 429
                return limited
            headers = _bucket_headers(path)
            if buckets:
                limits = self._write(buckets)
                headers = limits if self.enforce_write_limits and self.announce_limits else headers
            status, payload = self._route(request.method, path, dict(request.query), body)
            call.status = status
            if status == 204:
                return web.Response(status=204, headers=headers)
            return _json(payload, status, headers=headers)
        finally:
            await self._notify()

    def _recent(self, bucket: str, now: float) -> list[float]:
        """The bucket's writes inside the window ending now, oldest first."""
        stamps = self.writes.get(bucket, [])
        return stamps[bisect_left(stamps, now - self.write_limit[1] + 1e-9) :]

    def _limited(self, buckets: list[str]) -> web.Response | None:
        """The 429 for a write over the limit of one of its buckets (None: it may go)."""
        if not self.enforce_write_limits:
            return None
        limit, window = self.write_limit
        now = time.monotonic()
        for bucket in buckets:
            recent = self._recent(bucket, now)
            if len(recent) >= limit:
                wait = recent[-limit] + window - now
                return _limited_response(bucket, limit, wait)
        return None

    def _write(self, buckets: list[str]) -> dict[str, str]:
        """Record a write in its buckets; the rate-limit headers of the first (its route's)."""
        limit, window = self.write_limit
        now = time.monotonic()
        for bucket in buckets:
            self.writes.setdefault(bucket, []).append(now)
        recent = self._recent(buckets[0], now)
        wait = recent[0] + window - now
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - len(recent))),
            "X-RateLimit-Reset-After": f"{wait:.3f}",
            "X-RateLimit-Reset": f"{datetime.now(UTC).timestamp() + wait:.3f}",
            "X-RateLimit-Bucket": _bucket_hash(buckets[0]),
        }

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        app = self.app_id
        m = re.fullmatch
        if method == "GET" and path == "/users/@me":
            return 200, {**self.bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0}
        if method == "GET" and path == "/oauth2/applications/@me":
            return 200, self._application()
        if method == "GET" and path in ("/gateway", "/gateway/bot"):
            return 200, {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        if method == "PUT" and (
            (g := m(rf"/applications/{app}/guilds/(\d+)/commands", path))
            or m(rf"/applications/{app}/commands", path)
        ):
            scope = g.group(1) if g else "global"
            cmds = [
                {
                    **c,
                    "id": self.new_id(),
                    "application_id": app,
                    "version": self.new_id(),
                    "type": c.get("type", 1),
                    "guild_id": g.group(1) if g else None,
                    "default_member_permissions": c.get("default_member_permissions"),
                    "dm_permission": True,
                    "nsfw": False,
                }
                for c in body or []
            ]
            self.commands[scope] = cmds
            return 200, cmds
        if method == "POST" and path == "/users/@me/channels":
            recipient = self.users.get(str((body or {}).get("recipient_id")))
            if recipient is None:
                return 400, {"message": "Invalid Recipient(s)", "code": 50033}
            dm_id = self.new_id()
            dm = {"id": dm_id, "type": 1, "recipients": [recipient.payload()]}
            dm["last_message_id"] = None
            self.channels[dm_id] = dm
            return 200, dm
        if method == "GET" and (m(rf"/applications/{app}/(guilds/\d+/)?commands", path)):
            return 200, [c for cmds in self.commands.values() for c in cmds]
        if method == "POST" and (r := m(r"/interactions/(\d+)/([^/]+)/callback", path)):
            return self._interaction_callback(r.group(1), r.group(2), query, body)
        if r := m(rf"/webhooks/{app}/([^/]+)/messages/([^/]+)", path):
            key = f"{r.group(1)}:{r.group(2)}"
            msg = self.webhook_messages.get(key)
            if msg is None:
                return 404, {"message": "Unknown Message", "code": 10008}
            if method == "PATCH":
                msg.update({k: v for k, v in (body or {}).items() if k in ("content", "flags")})
                msg["flags"] = msg.get("flags", 0) & ~LOADING  # an edit ends "thinking…"
                msg["edited_timestamp"] = _now()
                return 200, msg
            if method == "GET":
                return 200, msg
            if method == "DELETE":
                del self.webhook_messages[key]
                return 204, None
        if method == "POST" and (r := m(rf"/webhooks/{app}/([^/]+)", path)):
            msg = self._bot_message(
                self._interaction_channels.get(r.group(1), self.channel_id),
                (body or {}).get("content", ""),
                flags=(body or {}).get("flags", 0),
                webhook=True,
            )
            msg["attachments"] = self._uploaded(body or {})
            self.webhook_messages[f"{r.group(1)}:{msg['id']}"] = msg
            return 200, msg
        if r := m(r"/channels/(\d+)", path):
            channel = self.channels.get(r.group(1))
            if channel is None:
                return 404, {"message": "Unknown Channel", "code": 10003}
            return 200, channel
        if r := m(r"/channels/(\d+)/messages", path):
            channel_id = r.group(1)
            if method == "POST":
                msg = self._bot_message(channel_id, (body or {}).get("content", ""))
                ref = (body or {}).get("message_reference")
                if ref:
                    msg["message_reference"] = ref
                    msg["type"] = 19
                self._store(channel_id, msg)
                return 200, msg
            if method == "GET":
                limit = int(query.get("limit", 50))
                stored = list(self.messages.get(channel_id, []))
                if "before" in query:
                    stored = [x for x in stored if int(x["id"]) < int(query["before"])]
                if "after" in query:  # the oldest ones after it, newest first
                    later = [x for x in stored if int(x["id"]) > int(query["after"])]
                    return 200, [self._as_read(x) for x in reversed(later[:limit])]
                return 200, [self._as_read(x) for x in reversed(stored)][:limit]
        if r := m(r"/channels/(\d+)/messages/(\d+)", path):
            msg = next(
                (x for x in self.messages.get(r.group(1), []) if x["id"] == r.group(2)), None
            )
            if msg is None:
                return 404, {"message": "Unknown Message", "code": 10008}
            if method == "PATCH":
                msg.update({k: v for k, v in (body or {}).items() if k == "content"})
                msg["edited_timestamp"] = _now()
            if method == "DELETE":
                self.messages[r.group(1)].remove(msg)
                return 204, None
            return 200, msg
        if method == "POST" and (r := m(r"/channels/(\d+)/(messages/(\d+)/)?threads", path)):
            return 201, self._create_thread(r.group(1), body or {})
        if method == "POST" and (r := m(r"/channels/(\d+)/typing", path)):
            return 204, None
        return 404, {"message": f"fake Discord has no route {method} {path}", "code": 0}

    def _application(self) -> dict[str, Any]:
        return {
            "id": self.app_id,
            "name": "parley",
            "description": "",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.moderator.payload(),
            "verify_key": "0" * 64,
            "flags": 1 << 19,
            "team": None,
            "summary": "",
            "interactions_endpoint_url": None,
        }

    def _uploaded(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The attachments of a multipart message: the files, described by the payload's
        ``attachments`` (``files[N]`` matches the attachment with id N)."""
        files = body.get("_files") or []
        described = {str(a.get("id")): a for a in body.get("attachments") or []}
        attachments = []
        for index, file in enumerate(files):
            meta = described.get(str(index), {})
            attachment_id = self.new_id()
            name = meta.get("filename") or file["filename"]
            self.uploads[attachment_id] = file["data"]
            attachments.append(
                {
                    "id": attachment_id,
                    "filename": name,
                    "size": len(file["data"]),
                    "content_type": file["content_type"] or "application/octet-stream",
                    "url": f"{self.base_url}/attachments/{attachment_id}-{name}",
                    "proxy_url": f"{self.base_url}/attachments/{attachment_id}-{name}",
                }
            )
        return attachments

    def _bot_message(
        self, channel_id: str, content: str, *, flags: int = 0, webhook: bool = False
    ) -> dict[str, Any]:
        channel = self.channels.get(channel_id, {})
        msg: dict[str, Any] = {
            "id": self.new_id(),
            "channel_id": channel_id,
            "author": self.bot.payload(),
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 20 if webhook else 0,
            "flags": flags,
            "components": [],
        }
        if channel.get("guild_id"):
            msg["guild_id"] = channel["guild_id"]
        if webhook:
            msg["webhook_id"] = self.app_id
            msg["application_id"] = self.app_id
        return msg

    def _interaction_callback(
        self, interaction_id: str, token: str, query: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, Any]:
        if interaction_id in self._acknowledged:
            return 400, {"message": "Interaction has already been acknowledged.", "code": 40060}
        sent = self._dispatched_at.get(interaction_id)
        if sent is not None and time.monotonic() - sent > self.interaction_deadline:
            return 404, {"message": "Unknown interaction", "code": 10062}
        self._acknowledged.add(interaction_id)
        kind = body.get("type")
        data = body.get("data") or {}
        flags = data.get("flags", 0)
        channel_id = self._interaction_channels.get(token, self.channel_id)
        msg = None
        if kind in (4, 5):
            content = data.get("content", "") if kind == 4 else ""
            msg = self._bot_message(channel_id, content, flags=flags, webhook=True)
            if kind == 5:
                msg["flags"] = flags | LOADING
            self.webhook_messages[f"{token}:@original"] = msg
        if query.get("with_response") not in ("1", "true", "True"):
            return 204, None
        return 200, {
            "interaction": {
                "id": interaction_id,
                "type": 2,
                "activity_instance_id": None,
                "response_message_id": msg["id"] if msg else None,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(flags & EPHEMERAL),
            },
            "resource": {"type": kind, "message": msg} if msg and kind == 4 else None,
        }

    def _create_thread(self, parent_id: str, body: dict[str, Any]) -> dict[str, Any]:
        thread_id = self.new_id()
        thread = {
            "id": thread_id,
            "type": body.get("type", 11),
            "guild_id": self.channels.get(parent_id, {}).get("guild_id", self.guild_id),
            "parent_id": parent_id,
            "owner_id": self.bot.id,
            "name": body.get("name", ""),
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 1,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": body.get("auto_archive_duration", 1440),
                "archive_timestamp": _now(),
                "locked": False,
                "invitable": True,
            },
            "member": {
                "id": thread_id,
                "user_id": self.bot.id,
                "join_timestamp": _now(),
                "flags": 0,
            },
        }
        self.channels[thread_id] = thread
        asyncio.get_running_loop().create_task(
            self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        )
        return thread


def _json(
    payload: Any, status: int = 200, *, headers: dict[str, str] | None = None
) -> web.Response:
    # discord.py needs exactly "application/json", without a charset parameter
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def _bucket_headers(path: str) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": "50",
        "X-RateLimit-Remaining": "49",
        "X-RateLimit-Reset-After": "1.000",
        "X-RateLimit-Reset": f"{datetime.now(UTC).timestamp() + 1:.3f}",
        "X-RateLimit-Bucket": f"bucket-{abs(hash(re.sub(r'/[0-9]+', '/#', path))) % 10**8}",
    }


def most_in_window(stamps: Sequence[float], seconds: float) -> int:
    """The most of ``stamps`` (sorted) inside any ``seconds``-long window."""
    return max(
        (bisect_left(stamps, t + seconds - 1e-9) - i for i, t in enumerate(stamps)), default=0
    )


def write_buckets(method: str, path: str, app_id: str) -> list[str]:
    """The write-limit buckets a request counts in: its channel or interaction token first,
    then the message it changes. Reads and other routes count in none."""
    if method not in WRITE_METHODS:
        return []
    m = re.fullmatch
    if r := m(r"/channels/(\d+)/messages(?:/(\d+))?", path):
        return [f"channel:{r.group(1)}"] + ([f"message:{r.group(2)}"] if r.group(2) else [])
    if r := m(r"/interactions/\d+/([^/]+)/callback", path):
        return [f"callback:{r.group(1)}"]
    if r := m(rf"/webhooks/{app_id}/([^/]+)(?:/messages/([^/]+))?", path):
        token, message = r.group(1), r.group(2)
        return [f"token:{token}"] + ([f"message:{token}/{message}"] if message else [])
    return []


def _bucket_hash(bucket: str) -> str:
    """Discord's bucket hash: one per kind of bucket (discord.py adds the channel or token)."""
    return "writes-" + bucket.split(":", 1)[0]


def _limited_response(bucket: str, limit: int, wait: float) -> web.Response:
    """Discord's 429 for a route's bucket: ``retry_after`` in the body, the headers."""
    wait = max(wait, 0.001)
    return _json(
        {"message": "You are being rate limited.", "retry_after": round(wait, 3), "global": False},
        429,
        headers={
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset-After": f"{wait:.3f}",
            "X-RateLimit-Reset": f"{datetime.now(UTC).timestamp() + wait:.3f}",
            "X-RateLimit-Bucket": _bucket_hash(bucket),
            "X-RateLimit-Scope": "user",
            "Retry-After": str(math.ceil(wait)),
            "Via": "1.1 google",
        },
    )


def _fault_response(fault: _Fault) -> web.Response:
    if fault.status == 429:
        return _json(
            {
                "message": "You are being rate limited.",
                "retry_after": fault.retry_after,
                "global": False,
                "code": 0,
            },
            429,
            headers={
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset-After": f"{fault.retry_after:.3f}",
                "X-RateLimit-Reset": f"{datetime.now(UTC).timestamp() + fault.retry_after:.3f}",
                "X-RateLimit-Bucket": "fault-bucket",
                "X-RateLimit-Scope": "user",
                "Retry-After": str(max(1, round(fault.retry_after))),
                "Via": "1.1 google",
            },
        )
    if fault.status == 401:
        return _json({"message": "401: Unauthorized", "code": 0}, 401)
    if fault.status == 403:
        return _json({"message": "Missing Permissions", "code": 50013}, 403)
    return _json({"message": "Internal Server Error", "code": 0}, fault.status)


def _session_shard(session_id: Any) -> tuple[int, int]:
    """The shard a session was opened for (its id says so; "fake-session" is unsharded)."""
    found = re.fullmatch(r"fake-session-(\d+)-of-(\d+)", str(session_id or ""))
    return (int(found.group(1)), int(found.group(2))) if found else (0, 1)
