"""A fake Slack on 127.0.0.1: the Web API methods Parley calls, file downloads, response URLs
and a Socket Mode websocket, plus helpers that deliver events like Slack does.

Every Web API call is recorded (``calls``) with its method and parameters, whether sent as a
form or as JSON, so tests check what a user would see. Messages the bot posts, streams or edits
are kept per channel (``thread()``), so tests read the final state of a thread. Faults are
injected per method: ``rate_limit()`` answers HTTP 429 with Retry-After, ``fail()`` answers
``{"ok": false, "error": ...}``; ``streaming=False`` makes the chat streaming methods unknown.

People: ``admins`` are workspace admins (``users.info``; UALICE by default, as the person who
installs an app usually is), everyone else an ordinary member; ``usergroups`` maps a group id to
its members and ``creators`` a channel to the person who created it (``conversations.info``);
``display_names`` gives people the display name ``users.info`` shows.

``write_delay`` seconds pass before the fake answers a write (``WRITE_METHODS``), as when
Slack is slow; other calls answer at once.

Every stream ``chat.startStream`` opens is kept in ``streams`` by its message ts, with whether
``chat.stopStream`` stopped it or ``chat.delete`` removed its message; ``open_streams()`` lists
those still open, as a person would see them (still being written).

Several workspaces: the one given to the constructor, and every ``Team`` added with
``add_team``. Each has its own bot token; ``auth.test`` answers per token, and every call
records the token it came with (``Call.token``). Installing through OAuth: ``grant(team)``
is what Slack's authorize page gives the browser (a code); ``oauth.v2.access`` (the app's
client id and secret, as HTTP Basic auth) exchanges it once for that workspace's bot token.
``uninstall(team)`` revokes a workspace's tokens.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import WSMsgType, web

STREAM_METHODS = frozenset({"chat.startStream", "chat.appendStream", "chat.stopStream"})
# Methods that write to the workspace: ``write_delay`` slows these down.
WRITE_METHODS = STREAM_METHODS | {
    "chat.postMessage",
    "chat.update",
    "chat.delete",
    "assistant.threads.setStatus",
}


@dataclass
class Call:
    """One Web API request (or response_url post) and what the fake answered."""

    method: str
    params: dict[str, Any]
    status: int = 200
    error: str | None = None
    token: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def text(self) -> str:
        """The text a message call carried: ``text``, ``markdown_text`` or markdown chunks."""
        parts = [str(self.params.get("text") or ""), str(self.params.get("markdown_text") or "")]
        chunks = self.params.get("chunks")
        if isinstance(chunks, str):
            chunks = json.loads(chunks)
        for chunk in chunks or []:
            if isinstance(chunk, Mapping) and chunk.get("type") == "markdown_text":
                parts.append(str(chunk.get("text") or ""))
        return "".join(parts)


@dataclass
class Message:
    """A message in a channel of the fake workspace."""

    channel: str
    ts: str
    text: str
    user: str | None = None
    bot_id: str | None = None
    thread_ts: str | None = None
    markdown: bool = False
    streaming: bool = False
    blocks: list[dict[str, Any]] | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] | None = None  # message metadata: event_type, event_payload

    def as_json(self, *, metadata: bool = False) -> dict[str, Any]:
        """The message as the Web API lists it (its metadata with ``include_all_metadata``)."""
        data: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        if self.user:
            data["user"] = self.user
        if self.bot_id:
            data["bot_id"] = self.bot_id
        if self.thread_ts:
            data["thread_ts"] = self.thread_ts
        if self.files:
            data["files"] = [{"id": f.get("id"), "name": f.get("name")} for f in self.files]
        if metadata and self.metadata is not None:
            data["metadata"] = self.metadata
        return data


@dataclass
class Stream:
    """A stream ``chat.startStream`` opened, and how it ended (if it did)."""

    channel: str
    ts: str
    thread_ts: str
    stopped: bool = False
    deleted: bool = False

    @property
    def open(self) -> bool:
        return not self.stopped and not self.deleted


@dataclass
class _Fault:
    status: int
    error: str | None
    times: int
    retry_after: int = 0
    after: int = 0  # calls still answered normally before the fault starts


@dataclass
class _File:
    content: bytes
    mimetype: str
    downloads: int = 0


@dataclass
class Team:
    """A workspace of the fake and Parley's bot user in it."""

    team_id: str
    bot_token: str
    bot_user_id: str
    bot_id: str
    name: str = "Parley Test"


@dataclass
class SocketClient:
    """A Socket Mode connection and the acks it sent back."""

    ws: web.WebSocketResponse
    acks: dict[str, dict[str, Any]] = field(default_factory=dict)


class FakeSlack:
    """Slack's Web API, files, response URLs and Socket Mode for one workspace and one bot."""

    def __init__(
        self,
        *,
        team_id: str = "T0PARLEY",
        bot_user_id: str = "UPARLEYBOT",
        bot_id: str = "BPARLEYBOT",
        bot_token: str = "xoxb-fake-bot-token",
        app_token: str = "xapp-fake-app-token",
        signing_secret: str = "fake-signing-secret",
        streaming: bool = True,
        admins: tuple[str, ...] = ("UALICE",),
        write_delay: float = 0.0,
    ) -> None:
        self.team_id = team_id
        self.home = Team(team_id, bot_token, bot_user_id, bot_id)
        # Valid bot tokens and their workspaces; a workspace added later has none until
        # installed (oauth.v2.access), unless added with ``installed=True``.
        self.tokens: dict[str, Team] = {bot_token: self.home}
        self.teams: dict[str, Team] = {team_id: self.home}
        self.client_id = "1111.2222"
        self.client_secret = "fake-client-secret"
        self._codes: dict[str, Team] = {}
        self._caller = self.home
        self.channel_names: dict[str, str] = {}  # conversations.info name (else the id, lowered)
        self.write_delay = write_delay
        self.admins = set(admins)
        self.owners: set[str] = set()
        self.usergroups: dict[str, list[str]] = {}
        self.creators: dict[str, str] = {}
        self.display_names: dict[str, str] = {}  # users.info profile.display_name
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.streaming = streaming
        self.calls: list[Call] = []
        self.messages: dict[str, list[Message]] = {}
        self.streams: dict[str, Stream] = {}  # by the ts of the stream's message
        self.sockets: list[SocketClient] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._files: dict[str, _File] = {}
        # files.getUploadURLExternal → POST /upload/{id} → files.completeUploadExternal
        self.uploads: dict[str, dict[str, Any]] = {}
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> FakeSlack:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_get("/files/{file_id}/{name}", self._file)
        app.router.add_post("/response/{token}", self._response_url)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._session = aiohttp.ClientSession()
        return self

    async def stop(self) -> None:
        for client in self.sockets:
            await client.ws.close()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeSlack:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What ``SLACK_API_URL`` should be."""
        return f"{self.url}/api/"

    # --- faults and fixtures --------------------------------------------------------------

    def rate_limit(self, method: str, *, times: int = 1, retry_after: int = 0) -> None:
        """Answer the next ``times`` calls of ``method`` with HTTP 429 and Retry-After."""
        self._faults.setdefault(method, []).append(_Fault(429, "ratelimited", times, retry_after))

    def fail(self, method: str, error: str, *, times: int = 1, after: int = 0) -> None:
        """Answer ``times`` calls of ``method`` with ``{"ok": false, "error": error}``: the next
        ones, or those following the next ``after`` calls, which succeed."""
        self._faults.setdefault(method, []).append(_Fault(200, error, times, after=after))

    def add_team(self, team_id: str, *, installed: bool = False, name: str = "") -> Team:
        """Another workspace, with its own bot user and (once installed) bot token."""
        n = len(self.teams) + 1
        team = Team(
            team_id,
            f"xoxb-fake-{team_id.lower()}-{uuid.uuid4().hex[:8]}",
            f"UPARLEY{n}",
            f"BPARLEY{n}",
            name or f"Team {team_id}",
        )
        self.teams[team_id] = team
        if installed:
            self.tokens[team.bot_token] = team
        return team

    def grant(self, team_id: str) -> str:
        """A person approved the install into ``team_id`` on Slack's page: the code Slack
        hands the app's redirect URL (usable once)."""
        code = f"code-{uuid.uuid4().hex}"
        self._codes[code] = self.teams[team_id]
        return code

    def uninstall(self, team_id: str) -> None:
        """The app is removed from ``team_id``: its tokens stop working."""
        for token, team in list(self.tokens.items()):
            if team.team_id == team_id:
                del self.tokens[token]

    def next_ts(self) -> str:
        return f"1700000000.{next(self._ts):06d}"

    def add_message(
        self,
        channel: str,
        text: str,
        *,
        user: str = "UALICE",
        ts: str | None = None,
        thread_ts: str | None = None,
        bot_id: str | None = None,
    ) -> Message:
        """Put a message in the workspace (for conversations.history/replies)."""
        message = Message(channel, ts or self.next_ts(), text, user, bot_id, thread_ts)
        self.messages.setdefault(channel, []).append(message)
        return message

    def add_file(
        self, name: str, content: bytes, mimetype: str, *, filetype: str = ""
    ) -> dict[str, Any]:
        """A file object as Slack puts it in ``files``; its ``url_private`` is served here."""
        file_id = f"F{next(self._ids):08d}"
        self._files[file_id] = _File(content, mimetype)
        url = f"{self.url}/files/{file_id}/{name}"
        return {
            "id": file_id,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": filetype or name.rsplit(".", 1)[-1],
            "size": len(content),
            "url_private": url,
            "url_private_download": url + "?download=1",
            "mode": "hosted",
        }

    def downloads(self, file: Mapping[str, Any]) -> int:
        return self._files[str(file["id"])].downloads

    # --- what tests read ------------------------------------------------------------------

    def called(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def thread(self, channel: str, thread_ts: str) -> list[Message]:
        """The replies in a thread (not its parent), oldest first."""
        return sorted(
            (
                m
                for m in self.messages.get(channel, [])
                if m.thread_ts == thread_ts and m.ts != thread_ts
            ),
            key=lambda m: m.ts,
        )

    def open_streams(self) -> list[Stream]:
        """Streams opened and neither stopped nor deleted, oldest first."""
        return sorted((s for s in self.streams.values() if s.open), key=lambda s: s.ts)

    def bot_messages(self, channel: str, thread_ts: str | None = None) -> list[Message]:
        """Messages the bot posted in ``channel`` (in a thread, or at the top level)."""
        return sorted(
            (
                m
                for m in self.messages.get(channel, [])
                if m.bot_id == self.bot_id and m.thread_ts == thread_ts
            ),
            key=lambda m: m.ts,
        )

    async def wait_for(self, check: Callable[[], Any], guard: float = 15.0) -> Any:
        """Wait until ``check()`` is truthy (re-checked after every call); a hang guard only."""
        async with asyncio.timeout(guard):
            async with self._changed:
                while not (result := check()):
                    await self._changed.wait()
                return result

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- Events API delivery ----------------------------------------------------------------

    def event_body(
        self, event: Mapping[str, Any], *, event_id: str | None = None, team: Team | None = None
    ) -> dict[str, Any]:
        """The Events API envelope Slack wraps an event in (from ``team``, default the first)."""
        team = team or self.home
        return {
            "token": "legacy-verification-token",
            "team_id": team.team_id,
            "api_app_id": "A0PARLEY",
            "event": dict(event),
            "type": "event_callback",
            "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": team.team_id,
                    "user_id": team.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        }

    def signed_headers(
        self, body: str, *, timestamp: int | None = None, secret: str | None = None
    ) -> dict[str, str]:
        """Headers of a request signed the way Slack signs (v0, HMAC-SHA256)."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        key = (self.signing_secret if secret is None else secret).encode()
        digest = hmac.new(key, f"v0:{stamp}:{body}".encode(), hashlib.sha256).hexdigest()
        return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}

    async def post_event(
        self,
        url: str,
        body: Mapping[str, Any],
        *,
        retry_num: int | None = None,
        timestamp: int | None = None,
        secret: str | None = None,
    ) -> int:
        """POST an Events API body to the app at ``url`` like Slack does; returns the status."""
        raw = json.dumps(body)
        headers = {
            "Content-Type": "application/json",
            **self.signed_headers(raw, timestamp=timestamp, secret=secret),
        }
        if retry_num:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        assert self._session is not None
        async with self._session.post(url, data=raw, headers=headers) as response:
            await response.read()
            return response.status

    async def post_command(
        self,
        url: str,
        command: str,
        text: str,
        *,
        channel: str = "C0GENERAL",
        user: str = "UALICE",
    ) -> int:
        """POST a slash command form like Slack does; its response_url points at this fake."""
        form = {
            "token": "legacy-verification-token",
            "team_id": self.team_id,
            "team_domain": "parley-test",
            "channel_id": channel,
            "channel_name": "general",
            "user_id": user,
            "user_name": "alice",
            "command": command,
            "text": text,
            "api_app_id": "A0PARLEY",
            "is_enterprise_install": "false",
            "response_url": f"{self.url}/response/{uuid.uuid4().hex}",
            "trigger_id": f"{next(self._ids)}.trigger",
        }
        raw = urlencode(form)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            **self.signed_headers(raw),
        }
        assert self._session is not None
        async with self._session.post(url, data=raw, headers=headers) as response:
            await response.read()
            return response.status

    # --- Socket Mode ------------------------------------------------------------------------

    async def push(self, payload: Mapping[str, Any], *, kind: str = "events_api") -> str:
        """Send an envelope to the connected Socket Mode client; returns its envelope_id."""
        await self.wait_for(lambda: self.sockets)
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": 0,
            "retry_reason": "",
            "payload": dict(payload),
        }
        await self.sockets[-1].ws.send_str(json.dumps(envelope))
        return envelope_id

    async def wait_ack(self, envelope_id: str) -> dict[str, Any]:
        """The client's ack of an envelope."""
        return await self.wait_for(
            lambda: next((c.acks[envelope_id] for c in self.sockets if envelope_id in c.acks), None)
        )

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        client = SocketClient(ws)
        self.sockets.append(client)
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": len(self.sockets),
                    "debug_info": {"host": "fake-slack", "approximate_connection_time": 18060},
                    "connection_info": {"app_id": "A0PARLEY"},
                }
            )
        )
        await self._notify()
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                data = json.loads(message.data)
                if "envelope_id" in data:
                    client.acks[data["envelope_id"]] = data
                    await self._notify()
        self.sockets.remove(client)
        await self._notify()
        return ws

    # --- Web API ------------------------------------------------------------------------------

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST":
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                params.update(dict(await request.post()))
        return params

    def _token(self, request: web.Request, params: Mapping[str, Any]) -> str:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return header[len("Bearer ") :]
        return str(params.get("token") or "")

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        token = self._token(request, params)
        call = Call(method, params, token=token)
        self.calls.append(call)
        if self.write_delay and method in WRITE_METHODS:
            await asyncio.sleep(self.write_delay)
        try:
            fault = self._take_fault(method)
            if fault is not None:
                call.status, call.error = fault.status, fault.error
                headers = {"Retry-After": str(fault.retry_after)} if fault.status == 429 else {}
                return web.json_response(
                    {"ok": False, "error": fault.error}, status=fault.status, headers=headers
                )
            if method == "oauth.v2.access":
                result = self._oauth_access(request, params)
                call.error = None if result.get("ok") else str(result["error"])
                return web.json_response(result)
            if method == "apps.connections.open":
                known = token == self.app_token
            else:
                known = token in self.tokens
                self._caller = self.tokens.get(token, self.home)
            if not known:
                call.error = "invalid_auth"
                return web.json_response({"ok": False, "error": "invalid_auth"})
            if method in STREAM_METHODS and not self.streaming:
                call.error = "unknown_method"
                return web.json_response({"ok": False, "error": "unknown_method"})
            handler = getattr(self, "_m_" + method.replace(".", "_"), None)
            if handler is None:
                call.error = "unknown_method"
                return web.json_response({"ok": False, "error": "unknown_method"})
            result = handler(params)
            if not result.get("ok", True):
                call.error = result["error"]
                return web.json_response(result)
            return web.json_response({"ok": True, **result})
        finally:
            await self._notify()

    def _take_fault(self, method: str) -> _Fault | None:
        queue = self._faults.get(method)
        if not queue:
            return None
        fault = queue[0]
        if fault.after > 0:
            fault.after -= 1
            return None
        fault.times -= 1
        if fault.times <= 0:
            queue.pop(0)
        return fault

    def _find(self, channel: str, ts: str) -> Message | None:
        return next((m for m in self.messages.get(channel, []) if m.ts == ts), None)

    def _post(self, channel: str, text: str, thread_ts: str | None, **flags: bool) -> Message:
        bot = self._caller
        message = Message(
            channel, self.next_ts(), text, bot.bot_user_id, bot.bot_id, thread_ts or None, **flags
        )
        self.messages.setdefault(channel, []).append(message)
        return message

    def _m_auth_test(self, params: Mapping[str, Any]) -> dict[str, Any]:
        bot = self._caller
        return {
            "url": f"https://{bot.team_id.lower()}.slack.com/",
            "team": bot.name,
            "user": "parley",
            "team_id": bot.team_id,
            "user_id": bot.bot_user_id,
            "bot_id": bot.bot_id,
            "is_enterprise_install": False,
        }

    def _oauth_access(self, request: web.Request, params: Mapping[str, Any]) -> dict[str, Any]:
        """oauth.v2.access: the app's id and secret (Basic auth, or form fields) and a code
        from ``grant`` give the workspace's bot token, once."""
        client_id, secret = params.get("client_id"), params.get("client_secret")
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        if client_id != self.client_id:
            return {"ok": False, "error": "invalid_client_id"}
        if secret != self.client_secret:
            return {"ok": False, "error": "bad_client_secret"}
        team = self._codes.pop(str(params.get("code") or ""), None)
        if team is None:
            return {"ok": False, "error": "invalid_code"}
        self.tokens[team.bot_token] = team
        return {
            "ok": True,
            "app_id": "A0PARLEY",
            "authed_user": {"id": "UALICE"},
            "scope": "app_mentions:read,chat:write",
            "token_type": "bot",
            "access_token": team.bot_token,
            "bot_user_id": team.bot_user_id,
            "team": {"id": team.team_id, "name": team.name},
            "enterprise": None,
            "is_enterprise_install": False,
        }

    def _m_apps_connections_open(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"url": f"ws://127.0.0.1:{self.port}/socket?ticket={uuid.uuid4().hex}"}

    def _m_chat_postMessage(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        text = str(params.get("text") or params.get("markdown_text") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not text and not params.get("blocks"):
            return {"ok": False, "error": "no_text"}
        if len(text) > 40_000:
            return {"ok": False, "error": "msg_too_long"}
        message = self._post(channel, text, params.get("thread_ts"))
        message.blocks = _blocks(params)
        message.metadata = _metadata(params, message.metadata)
        return {"channel": channel, "ts": message.ts, "message": message.as_json()}

    def _m_chat_update(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel") or ""), str(params.get("ts") or "")
        message = self._find(channel, ts)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if message.user != self.bot_user_id:
            return {"ok": False, "error": "cant_update_message"}
        if params.get("markdown_text"):
            message.text, message.markdown = str(params["markdown_text"]), True
        else:
            message.text, message.markdown = str(params.get("text") or ""), False
            message.blocks = _blocks(params)
        message.metadata = _metadata(params, message.metadata)
        message.streaming = False
        return {"channel": channel, "ts": ts, "text": message.text}

    def _m_chat_delete(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel") or ""), str(params.get("ts") or "")
        message = self._find(channel, ts)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        self.messages[channel].remove(message)
        if ts in self.streams:
            self.streams[ts].deleted = True
        return {"channel": channel, "ts": ts}

    def _m_chat_postEphemeral(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if not params.get("channel") or not params.get("user"):
            return {"ok": False, "error": "invalid_arguments"}
        return {"message_ts": self.next_ts()}

    def _m_chat_startStream(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel, thread_ts = str(params.get("channel") or ""), params.get("thread_ts")
        if not channel or not thread_ts:
            return {"ok": False, "error": "invalid_arguments"}
        if not channel.startswith("D") and not (
            params.get("recipient_user_id") and params.get("recipient_team_id")
        ):
            # Slack needs the recipient when streaming outside a DM.
            return {"ok": False, "error": "invalid_arguments"}
        text = Call("chat.startStream", dict(params)).text
        message = self._post(channel, text, str(thread_ts), markdown=True, streaming=True)
        self.streams[message.ts] = Stream(channel, message.ts, str(thread_ts))
        return {"channel": channel, "ts": message.ts}

    def _m_chat_appendStream(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return self._stream_to(params, stop=False)

    def _m_chat_stopStream(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return self._stream_to(params, stop=True)

    def _stream_to(self, params: Mapping[str, Any], *, stop: bool) -> dict[str, Any]:
        channel, ts = str(params.get("channel") or ""), str(params.get("ts") or "")
        message = self._find(channel, ts)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if not message.streaming:
            return {"ok": False, "error": "message_not_in_streaming_state"}
        text = Call("chat.appendStream", dict(params)).text
        if not stop and not text:
            return {"ok": False, "error": "invalid_arguments"}
        message.text += text
        if stop:
            message.streaming = False
            if ts in self.streams:
                self.streams[ts].stopped = True
            message.blocks = _blocks(params)
            message.metadata = _metadata(params, message.metadata)
        return {"channel": channel, "ts": ts}

    def _m_conversations_replies(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The thread's parent, then its replies oldest first (those after ``oldest``)."""
        channel, ts = str(params.get("channel") or ""), str(params.get("ts") or "")
        found = [m for m in self.messages.get(channel, []) if m.ts == ts or m.thread_ts == ts]
        if not found:
            return {"ok": False, "error": "thread_not_found"}
        found.sort(key=lambda m: m.ts)
        found = [m for m in found if m.ts == ts or _within(m.ts, params)]
        return _page(found, params, 1000)

    def _m_conversations_history(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Top-level messages, newest first (those after ``oldest``)."""
        channel = str(params.get("channel") or "")
        top = [m for m in self.messages.get(channel, []) if not m.thread_ts or m.thread_ts == m.ts]
        top.sort(key=lambda m: m.ts, reverse=True)
        return _page([m for m in top if _within(m.ts, params)], params, 100)

    def _m_users_info(self, params: Mapping[str, Any]) -> dict[str, Any]:
        user = str(params.get("user") or "")
        if not user.startswith(("U", "W")):
            return {"ok": False, "error": "user_not_found"}
        return {
            "user": {
                "id": user,
                "team_id": self.team_id,
                "name": user.lower(),
                "is_admin": user in self.admins or user in self.owners,
                "is_owner": user in self.owners,
                "is_primary_owner": False,
                "is_bot": False,
                "profile": {"display_name": self.display_names.get(user, ""), "real_name": ""},
            }
        }

    def _m_usergroups_users_list(self, params: Mapping[str, Any]) -> dict[str, Any]:
        group = str(params.get("usergroup") or "")
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"users": list(self.usergroups[group])}

    def _m_conversations_info(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        is_dm = channel.startswith("D")
        return {
            "channel": {
                "id": channel,
                "name": self.channel_names.get(channel, "" if is_dm else channel.lower()),
                "is_channel": channel.startswith("C"),
                "is_im": channel.startswith("D"),
                "creator": self.creators.get(channel, "UFOUNDER"),
            }
        }

    def _m_assistant_threads_setStatus(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return self._assistant(params)

    def _m_assistant_threads_setSuggestedPrompts(self, params: Mapping[str, Any]) -> dict[str, Any]:
        prompts = params.get("prompts")
        if isinstance(prompts, str):
            prompts = json.loads(prompts)
        if not prompts:
            return {"ok": False, "error": "invalid_arguments"}
        return self._assistant(params)

    def _m_assistant_threads_setTitle(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return self._assistant(params)

    def _assistant(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if not params.get("channel_id") or not params.get("thread_ts"):
            return {"ok": False, "error": "invalid_arguments"}
        return {}

    # --- file uploads (Slack's external upload flow) ------------------------------------------

    def _m_files_getUploadURLExternal(self, params: Mapping[str, Any]) -> dict[str, Any]:
        filename, length = params.get("filename"), params.get("length")
        if not filename or not str(length or "").isdigit() or int(length) < 1:
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{next(self._ids):08d}"
        self.uploads[file_id] = {"filename": filename, "length": int(length), "data": None}
        return {"upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}

    async def _upload(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["file_id"])
        if upload is None:
            return web.Response(status=404, text="not found")
        upload["data"] = await request.read()
        return web.Response(text=f"OK - {len(upload['data'])}")

    def _m_files_completeUploadExternal(self, params: Mapping[str, Any]) -> dict[str, Any]:
        files = params.get("files")
        listed = json.loads(files) if isinstance(files, str) else files
        channel = str(params.get("channel_id") or "")
        shared = []
        for item in listed or []:
            upload = self.uploads.get(str(item.get("id")))
            if upload is None or upload["data"] is None:
                return {"ok": False, "error": "file_not_found"}
            if len(upload["data"]) != upload["length"]:
                return {"ok": False, "error": "file_size_mismatch"}
            shared.append({"id": item["id"], "name": upload["filename"], **item, **upload})
        if channel:
            comment = str(params.get("initial_comment") or "")
            message = self._post(channel, comment, params.get("thread_ts"))
            message.files = shared
        return {"files": [{"id": f["id"], "title": f.get("title") or f["name"]} for f in shared]}

    # --- interactivity ------------------------------------------------------------------------

    async def post_action(
        self,
        url: str,
        message: Message,
        action_id: str,
        *,
        user: str = "UALICE",
        secret: str | None = None,
    ) -> int:
        """A button click on ``message``: a block_actions payload, signed, posted like Slack."""
        payload = {
            "type": "block_actions",
            "team": {"id": self.team_id, "domain": "parley-test"},
            "user": {"id": user, "team_id": self.team_id},
            "api_app_id": "A0PARLEY",
            "token": "legacy-verification-token",
            "container": {
                "type": "message",
                "message_ts": message.ts,
                "channel_id": message.channel,
                "is_ephemeral": False,
                "thread_ts": message.thread_ts,
            },
            "trigger_id": f"{next(self._ids)}.trigger",
            "channel": {"id": message.channel, "name": "general"},
            "message": message.as_json(),
            "response_url": f"{self.url}/response/{uuid.uuid4().hex}",
            "actions": [
                {
                    "type": "button",
                    "action_id": action_id,
                    "block_id": "parley_feedback",
                    "value": action_id.rsplit("_", 1)[-1],
                    "action_ts": str(time.time()),
                }
            ],
        }
        raw = urlencode({"payload": json.dumps(payload)})
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            **self.signed_headers(raw, secret=secret),
        }
        assert self._session is not None
        async with self._session.post(url, data=raw, headers=headers) as response:
            await response.read()
            return response.status

    # --- files and response URLs ----------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.Response:
        file = self._files.get(request.match_info["file_id"])
        if file is None:
            return web.Response(status=404, text="not found")
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if bearer not in self.tokens:
            # Slack answers a sign-in page, not an error, when the token is missing or wrong.
            return web.Response(text="<html>Sign in to Slack</html>", content_type="text/html")
        file.downloads += 1
        return web.Response(body=file.content, content_type=file.mimetype)

    async def _response_url(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self.calls.append(Call("response_url", params))
        await self._notify()
        return web.Response(text="ok")


def _ts(ts: Any) -> tuple[int, int]:
    seconds, _, fraction = str(ts or "0").partition(".")
    return (int(seconds or 0), int(fraction.ljust(6, "0")[:6] or 0))


def _within(ts: str, params: Mapping[str, Any]) -> bool:
    """Whether ``ts`` lies between ``oldest`` and ``latest`` (exclusive unless ``inclusive``)."""
    inclusive = str(params.get("inclusive") or "").lower() in ("1", "true")
    oldest, latest = params.get("oldest"), params.get("latest")
    if oldest and (_ts(ts) < _ts(oldest) or (_ts(ts) == _ts(oldest) and not inclusive)):
        return False
    return not (latest and (_ts(ts) > _ts(latest) or (_ts(ts) == _ts(latest) and not inclusive)))


def _page(found: list[Message], params: Mapping[str, Any], default: int) -> dict[str, Any]:
    """One page of ``found`` as the Web API pages lists (``limit``, ``cursor``)."""
    limit = int(params.get("limit") or default)
    start = int(params.get("cursor") or 0)
    metadata = str(params.get("include_all_metadata") or "").lower() in ("1", "true")
    page = found[start : start + limit]
    more = start + limit < len(found)
    return {
        "messages": [m.as_json(metadata=metadata) for m in page],
        "has_more": more,
        "response_metadata": {"next_cursor": str(start + limit) if more else ""},
    }


def _metadata(params: Mapping[str, Any], kept: dict[str, Any] | None) -> dict[str, Any] | None:
    """A write's ``metadata`` (JSON text or an object); a write without keeps what was."""
    given = params.get("metadata")
    if isinstance(given, str):
        given = json.loads(given)
    if not isinstance(given, dict):
        return kept
    if not isinstance(given.get("event_type"), str) or not isinstance(
        given.get("event_payload"), dict
    ):
        return kept
    return {"event_type": given["event_type"], "event_payload": given["event_payload"]}


def _blocks(params: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The ``blocks`` of a message call, sent as JSON or as a JSON string in a form."""
    blocks = params.get("blocks")
    return json.loads(blocks) if isinstance(blocks, str) else blocks
