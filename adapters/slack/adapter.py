"""The Slack adapter: a slack-bolt ``AsyncApp`` that feeds the core and renders its replies.

Socket Mode (default) or HTTP mode (aiohttp, signatures checked by bolt). Every Web API call
goes through one ``AsyncWebClient`` pointed at ``SLACK_API_URL``, with slack_sdk's retry
handlers installed, so a 429 waits for Retry-After before the call is repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterator, Mapping
from typing import Any, cast

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.inflight import InFlight
from adapters.slack import translate
from adapters.slack.files import FileFetcher
from adapters.slack.mrkdwn import to_mrkdwn, to_plain
from adapters.slack.render import LIMIT, ReplyTarget, SlackReply, describe, error_code
from core.commands import parse_count
from core.errors import BadCommand, ConfigError, UserFacingError
from core.messages import (
    Author,
    CommandReply,
    ConversationKey,
    FinalText,
    Inbound,
    Notice,
    UserError,
)
from core.service import GENERIC_ERROR, ConversationService
from core.settings import Settings
from core.splitting import split_message
from core.streaming import Snapshot, paced

log = logging.getLogger("parley.slack")

EVENTS_PATH = "/slack/events"
THINKING_STATUS = "is thinking…"
SUGGESTED_PROMPTS = (
    {"title": "Explain an error", "message": "What does this error mean, and how do I fix it?"},
    {"title": "Summarise a text", "message": "Summarise the following text in five bullets:"},
    {"title": "Draft a message", "message": "Help me write a short, friendly announcement about"},
)
SUMMARY_MESSAGES = 50
FOLLOW_CACHE_SIZE = 10_000
NOT_OURS_TTL = 60.0
STOP_GRACE = 6.0  # how long stop() lets answers in progress finish
CUT_GRACE = 2.0  # then how long answers cut by shutdown get to say so
RESTARTED = "Parley was restarted while answering; please ask again."
RESET_SCOPE = (
    "`{command} reset` resets the top-level conversation here (in a DM with me: the messages "
    "outside threads). Every thread, assistant threads included, is a conversation of its "
    "own: to reset one, write `@parley reset` in that thread."
)


class SlackAdapter:
    """Slack in and out for one workspace; ``start()`` connects, ``stop()`` disconnects.

    In HTTP mode ``web_app`` is the aiohttp application (tests may serve it themselves) and
    ``port`` the port it listens on once started.
    """

    def __init__(
        self,
        settings: Settings,
        service: ConversationService,
        *,
        host: str = "0.0.0.0",
        port: int | None = None,
    ) -> None:
        if settings.slack_bot_token is None:
            raise ConfigError(
                "SLACK_BOT_TOKEN is not set: copy the Bot User OAuth Token (xoxb-...)."
            )
        if settings.slack_mode == "socket" and settings.slack_app_token is None:
            raise ConfigError(
                "SLACK_APP_TOKEN is not set: Socket Mode needs an app-level token (xapp-...) "
                "with the connections:write scope, or set SLACK_MODE=http."
            )
        if settings.slack_mode == "http" and settings.slack_signing_secret is None:
            raise ConfigError(
                "SLACK_SIGNING_SECRET is not set: HTTP mode needs it to check requests."
            )
        self.settings = settings
        self.service = service
        self.host = host
        self.port = settings.slack_port if port is None else port
        wire_log = self._wire_log = logging.getLogger("parley.slack.wire")
        if not settings.parley_log_content:
            # slack_sdk and bolt log request bodies (message text) at DEBUG.
            wire_log.setLevel(max(logging.INFO, wire_log.getEffectiveLevel()))
        token = settings.slack_bot_token.get_secret_value()
        self.client = AsyncWebClient(
            token=token,
            base_url=settings.slack_api_url,
            logger=wire_log,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=2),
                AsyncRateLimitErrorRetryHandler(max_retry_count=5),
                AsyncServerErrorRetryHandler(max_retry_count=1),
            ],
        )
        http = settings.slack_mode == "http"
        secret = settings.slack_signing_secret
        self.app = AsyncApp(
            name="parley",
            client=self.client,
            logger=wire_log,
            signing_secret=secret.get_secret_value() if secret is not None else "",
            request_verification_enabled=http,
            process_before_response=False,
        )
        self.files = FileFetcher(
            token,
            settings.slack_api_url,
            max_image_bytes=settings.parley_max_image_bytes,
            max_text_bytes=settings.parley_max_text_file_bytes,
        )
        self.streaming = True
        self.stop_grace = STOP_GRACE
        self._closing = False
        self._threads: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._inflight: set[asyncio.Future[None]] = set()
        self._tasks = InFlight()
        self._web_app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._session: aiohttp.ClientSession | None = None
        self.bot_user_id: str | None = None
        self._register()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the token, then connect over Socket Mode or listen for HTTP requests."""
        self._closing = False
        self._session = aiohttp.ClientSession()
        self.client.session = self._session
        self.files.session = self._session
        try:
            identity = await self.client.auth_test()
        except SlackApiError as exc:
            await self._close_session()
            raise ConfigError(
                f"Slack rejected SLACK_BOT_TOKEN ({error_code(exc)}): check the Bot User OAuth Token."
            ) from None
        self.bot_user_id = identity.get("user_id")
        log.info(
            "slack: connected as %s in team %s (%s mode)",
            self.bot_user_id,
            identity.get("team_id"),
            self.settings.slack_mode,
        )
        if self.settings.slack_mode == "http":
            self._runner = web.AppRunner(self.web_app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
            address = self._runner.addresses[0]
            self.port = int(address[1])
            log.info("slack: listening for events on %s:%s%s", self.host, self.port, EVENTS_PATH)
        else:
            assert self.settings.slack_app_token is not None
            app_token = self.settings.slack_app_token.get_secret_value()
            # Asked here once so a bad app token stops start-up (the client would retry forever).
            try:
                opened = await self.client.apps_connections_open(app_token=app_token)
            except SlackApiError as exc:
                await self._close_session()
                raise ConfigError(
                    f"Slack rejected SLACK_APP_TOKEN ({error_code(exc)}): it must be an app-level "
                    "token (xapp-...) with the connections:write scope, and Socket Mode must be "
                    "enabled for the app."
                ) from None
            self._socket = AsyncSocketModeHandler(
                self.app, app_token=app_token, logger=self._wire_log, web_client=self.client
            )
            self._socket.client.wss_uri = opened["url"]
            await self._socket.connect_async()  # type: ignore[no-untyped-call]
            log.info("slack: Socket Mode connected")

    async def stop(self) -> None:
        """Stop taking events, let answers in progress finish (``stop_grace`` s), then disconnect.

        Events that still arrive are refused without an ack, so Slack delivers them again. An
        answer still running after the grace period is cut: it ends with ``RESTARTED`` instead
        of a "Thinking…" placeholder or an open stream.
        """
        self._closing = True
        if self._socket is not None:
            await self._socket.close_async()  # type: ignore[no-untyped-call]
            self._socket = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if not await self.drain(self.stop_grace):
            await self._cut_unfinished()
        await self._close_session()

    async def drain(self, grace: float | None = None) -> bool:
        """Wait until every event handler that has been scheduled is done (at most ``grace`` s
        in all); False when some are still running."""
        loop = asyncio.get_running_loop()
        deadline = None if grace is None else loop.time() + grace
        while self._inflight:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            _, pending = await asyncio.wait(set(self._inflight), timeout=timeout)
            if pending and deadline is not None and loop.time() >= deadline:
                return False
        return True

    async def _cut_unfinished(self) -> None:
        """Cancel the handlers still running; each ends its answer with ``RESTARTED``."""
        log.warning("slack: %d answers still running at shutdown; cutting them", len(self._tasks))
        await self._tasks.cancel(CUT_GRACE)
        if self._tasks:
            log.error("slack: %d cut answers did not end in time", len(self._tasks))

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            self.client.session = None
            self.files.session = None

    @property
    def web_app(self) -> web.Application:
        """The aiohttp application that receives Events API, slash command and interactivity posts."""
        if self._web_app is None:
            app = web.Application()
            app.router.add_post(EVENTS_PATH, self._http_event)
            app.router.add_get("/healthz", self._healthz)
            self._web_app = app
        return self._web_app

    async def _http_event(self, request: web.Request) -> web.Response:
        bolt_request = await to_bolt_request(request)
        bolt_response = await self.app.async_dispatch(bolt_request)
        return await to_aiohttp_response(bolt_response)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    # --- listeners ------------------------------------------------------------------------

    def _register(self) -> None:
        track = [self._track]
        self.app.event("app_mention", middleware=track)(self._on_mention)
        self.app.event("message", middleware=track)(self._on_message)
        self.app.event("assistant_thread_started", middleware=track)(
            self._on_assistant_thread_started
        )
        self.app.event("assistant_thread_context_changed")(self._on_ignored)
        self.app.command(self.settings.slack_command, middleware=track)(self._on_command)

    async def _track(self, context: AsyncBoltContext, next: Any) -> BoltResponse | None:
        """Listener middleware: count the request as in flight before bolt acks it.

        It runs before the ack, so ``drain()`` (and ``stop()``) also wait for handlers that
        bolt has scheduled but not yet started. While stopping, requests are refused (503, and
        no Socket Mode ack), so Slack delivers them again later.
        """
        if self._closing:
            return BoltResponse(status=503, body="Parley is shutting down")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight.add(done)
        done.add_done_callback(self._inflight.discard)
        context["parley_done"] = done
        await next()
        return None

    @contextlib.contextmanager
    def _handling(self, context: AsyncBoltContext) -> Iterator[None]:
        """Around a listener: its task can be cut by ``stop()``; marks the request done."""
        try:
            with self._tasks.track():
                yield
        finally:
            done = context.get("parley_done")
            if done is not None and not done.done():
                done.set_result(None)

    async def _on_ignored(self) -> None:
        return None

    async def _on_mention(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        with self._handling(context):
            await self._on_message_like(body, event, context, mention=True)

    async def _on_message(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        with self._handling(context):
            await self._on_message_like(body, event, context, mention=False)

    async def _on_message_like(
        self,
        body: Mapping[str, Any],
        event: Mapping[str, Any],
        context: AsyncBoltContext,
        *,
        mention: bool,
    ) -> None:
        bot_user, bot_id = context.bot_user_id, context.bot_id
        reason = translate.ignore_reason(event, bot_user, bot_id)
        if reason is not None:
            log.debug("slack: ignoring a %s event (%s)", event.get("type"), reason)
            return
        message = translate.parse_message(body, event)
        if not mention and not message.direct:
            # Channel messages: mentions come as app_mention; others only in followed threads.
            if message.mentions(bot_user) or not message.thread_reply:
                return
            if not self.settings.slack_follow_threads:
                return
            if not await self._bot_in_thread(message, bot_user, bot_id):
                return
        target = ReplyTarget(message.channel, message.reply_thread, message.team, message.user)
        try:
            claimed = await self.service.claim_event(translate.PLATFORM, message.dedupe_id)
        except asyncio.CancelledError:
            await self._apologise(target, RESTARTED)
            raise
        except Exception as exc:
            # The database is unavailable: say sorry rather than answer twice or stay silent.
            log.error("slack: claiming a message in %s failed (%s)", message.key, describe(exc))
            await self._apologise(target)
            return
        if not claimed:
            log.info("slack: dropping a redelivered message in %s", message.channel)
            return
        try:
            text = to_plain(message.text, bot_user)
            command = None if message.files else self.service.parse_command(text)
            if command is not None:
                await self._text_command(message, target, *command, bot_user=bot_user)
                return
            fetched = await self.files.fetch(message.files)
            inbound = Inbound(
                message.key,
                message.author,
                text,
                attachments=fetched.attachments,
                notes=fetched.notes,
            )
        except asyncio.CancelledError:
            await self._apologise(target, RESTARTED)
            raise
        except Exception as exc:
            self._log_failure("reading a message", message.key, exc)
            await self._apologise(target)
            return
        if not message.direct:
            self._remember_thread(message.channel, target.thread_ts or message.ts)
        await self.answer(inbound, target, status=message.direct and message.thread_ts is not None)

    async def answer(self, inbound: Inbound, target: ReplyTarget, *, status: bool = False) -> None:
        """Stream the core's answer to ``inbound`` into Slack; always ends in a final message."""
        reply = SlackReply(
            self.client,
            target,
            stream=self.streaming,
            on_streaming_unsupported=self._streaming_unsupported,
        )
        if status:
            await self._set_status(target, THINKING_STATUS)
        try:
            await reply.begin()
            events = paced(self.service.answer(inbound), self.settings.slack_update_interval)
            async with contextlib.aclosing(cast(AsyncGenerator[Any, None], events)):
                async for event in events:
                    if isinstance(event, Snapshot):
                        await reply.show(event.text)
                    elif isinstance(event, FinalText):
                        await reply.finish(event.text)
                    elif isinstance(event, Notice):
                        reply.note(event.text)
                    elif isinstance(event, UserError):
                        log.info("slack: answer in %s ended with %s", inbound.key, event.code)
                        await reply.fail(event.text)
            await reply.close(GENERIC_ERROR)
        except asyncio.CancelledError:
            log.warning("slack: answer in %s cut by shutdown", inbound.key)
            try:
                await reply.close(RESTARTED)
            except Exception as again:
                self._log_failure("ending a cut answer", inbound.key, again)
            raise
        except Exception as exc:
            self._log_failure("answering", inbound.key, exc)
            try:
                await reply.close(GENERIC_ERROR)
            except Exception as again:
                self._log_failure("apologising", inbound.key, again)
        finally:
            if status:
                await self._set_status(target, "")

    def _streaming_unsupported(self, code: str) -> None:
        if self.streaming:
            log.warning("slack: chat streaming is not available (%s); using chat.update", code)
        self.streaming = False

    async def _set_status(self, target: ReplyTarget, status: str) -> None:
        if not target.thread_ts:
            return
        try:
            await self.client.assistant_threads_setStatus(
                channel_id=target.channel, thread_ts=target.thread_ts, status=status
            )
        except SlackApiError as exc:
            log.debug("slack: assistant.threads.setStatus failed (%s)", error_code(exc))
        except Exception as exc:
            log.debug("slack: assistant.threads.setStatus failed (%s)", type(exc).__name__)

    async def _apologise(self, target: ReplyTarget, sentence: str = GENERIC_ERROR) -> None:
        reply = SlackReply(self.client, target, stream=False)
        try:
            await reply.fail(sentence)
        except Exception as exc:
            log.error("slack: could not post an apology: %s", describe(exc))

    def _log_failure(self, doing: str, key: ConversationKey, exc: BaseException) -> None:
        if isinstance(exc, SlackApiError):
            log.error("slack: %s in %s failed: Slack answered %s", doing, key, error_code(exc))
        else:
            log.error("slack: %s in %s failed", doing, key, exc_info=exc)

    # --- thread following -----------------------------------------------------------------

    def _remember_thread(self, channel: str, thread_ts: str) -> None:
        self._threads[(channel, thread_ts)] = float("inf")
        self._threads.move_to_end((channel, thread_ts))
        while len(self._threads) > FOLLOW_CACHE_SIZE:
            self._threads.popitem(last=False)

    async def _bot_in_thread(
        self, message: translate.SlackMessage, bot_user: str | None, bot_id: str | None
    ) -> bool:
        """Whether the bot has answered in this thread: remembered, else conversations.replies."""
        assert message.thread_ts is not None
        key = (message.channel, message.thread_ts)
        now = time.monotonic()
        known = self._threads.get(key)
        if known == float("inf"):
            return True
        if known is not None and known > now:
            return False
        try:
            response = await self.client.conversations_replies(
                channel=message.channel, ts=message.thread_ts, limit=200
            )
        except SlackApiError as exc:
            log.info("slack: conversations.replies failed (%s)", error_code(exc))
            return False
        ours = any(
            (bot_user and m.get("user") == bot_user) or (bot_id and m.get("bot_id") == bot_id)
            for m in response.get("messages") or []
        )
        if ours:
            self._remember_thread(*key)
        else:
            self._threads[key] = now + NOT_OURS_TTL
            while len(self._threads) > FOLLOW_CACHE_SIZE:
                self._threads.popitem(last=False)
        return ours

    # --- assistant threads ----------------------------------------------------------------

    async def _on_assistant_thread_started(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        with self._handling(context):
            await self._suggest_prompts(body, event)

    async def _suggest_prompts(self, body: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        """A new assistant thread: offer a few starting prompts."""
        thread = event.get("assistant_thread") or {}
        channel, thread_ts = thread.get("channel_id"), thread.get("thread_ts")
        if not channel or not thread_ts:
            return
        event_id = body.get("event_id")
        if event_id:
            try:
                claimed = await self.service.claim_event(translate.PLATFORM, str(event_id))
            except Exception as exc:
                # Suggesting the prompts twice is harmless; not suggesting them is not.
                log.error("slack: claiming an assistant thread event failed (%s)", describe(exc))
                claimed = True
            if not claimed:
                return
        try:
            await self.client.assistant_threads_setSuggestedPrompts(
                channel_id=channel,
                thread_ts=thread_ts,
                title="Ask me anything, or try:",
                prompts=list(SUGGESTED_PROMPTS),
            )
        except SlackApiError as exc:
            log.warning("slack: setSuggestedPrompts failed (%s)", error_code(exc))

    # --- commands -------------------------------------------------------------------------

    async def _on_command(self, ack: Any, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await ack()
        with self._handling(context):
            await self._slash_command(body, context)

    async def _slash_command(self, body: Mapping[str, Any], context: AsyncBoltContext) -> None:
        """``/parley <command>``. Slack does not say in which thread a slash command was typed
        (no ``thread_ts``), so it acts on the channel: ``reset`` on its top-level conversation
        (and says how to reset a thread), ``summarize [n]`` on its last n messages."""
        text = str(body.get("text") or "").strip()
        # Everything after /parley is a command: marked, so aliases and arguments are read.
        parsed = self.service.parse_command("/" + text) if text else None
        if parsed is None:
            name, _, args = text.partition(" ")
            parsed = (name.lower() or "help", args.strip())
        name, args = parsed
        team = str(body.get("team_id") or context.team_id or "")
        channel = str(body.get("channel_id") or "")
        key = ConversationKey(translate.PLATFORM, team, channel)
        author = Author(str(body.get("user_id") or ""), str(body.get("user_name") or ""))
        response_url = str(body.get("response_url") or "")
        try:
            transcript = None
            if name == "summarize":
                count = parse_count(args) if args else SUMMARY_MESSAGES
                transcript = await self._channel_transcript(channel, count, context.bot_user_id)
            reply = await self.service.command(key, author, name, args, transcript)
            if name == "reset" and reply.ok:
                direct = channel.startswith("D")
                reply = CommandReply(
                    f"{reply.text}\n{RESET_SCOPE.format(command=self.settings.slack_command)}",
                    private=reply.private or not direct,
                )
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self._respond(response_url, CommandReply(RESTARTED, private=True, ok=False))
            raise
        except UserFacingError as exc:
            reply = CommandReply(exc.user_message, private=True, ok=False)
        except Exception as exc:
            self._log_failure("running a slash command", key, exc)
            reply = CommandReply(GENERIC_ERROR, private=True, ok=False)
        try:
            await self._respond(response_url, reply)
        except Exception as exc:
            self._log_failure("responding to a slash command", key, exc)

    async def _respond(self, response_url: str, reply: CommandReply) -> None:
        """Answer a slash command through its response_url: ephemeral when the reply is private."""
        if not response_url.startswith(("https://", "http://")):
            log.warning("slack: slash command without a response_url")
            return
        hook = AsyncWebhookClient(
            response_url,
            session=self._session,
            logger=self._wire_log,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=2),
                AsyncRateLimitErrorRetryHandler(max_retry_count=5),
            ],
        )
        kind = "ephemeral" if reply.private else "in_channel"
        for piece in split_message(reply.text, LIMIT):
            response = await hook.send(text=to_mrkdwn(piece), response_type=kind)
            if response.status_code != 200:
                log.warning("slack: response_url answered HTTP %s", response.status_code)
                return

    async def _text_command(
        self,
        message: translate.SlackMessage,
        target: ReplyTarget,
        name: str,
        args: str,
        *,
        bot_user: str | None,
    ) -> None:
        """A command typed in a mention or DM ("@parley reset"): runs on that conversation."""
        transcript = None
        try:
            if name == "summarize" and not message.direct:
                count = parse_count(args) if args else SUMMARY_MESSAGES
                if message.thread_reply:
                    transcript = await self._thread_transcript(message, count, bot_user)
                else:
                    transcript = await self._channel_transcript(
                        message.channel, count, bot_user, skip_ts=message.ts
                    )
            reply = await self.service.command(message.key, message.author, name, args, transcript)
        except UserFacingError as exc:
            reply = CommandReply(exc.user_message, private=True, ok=False)
        pieces = split_message(reply.text, LIMIT)
        if reply.private and not message.direct:
            for piece in pieces:
                await self.client.chat_postEphemeral(
                    channel=message.channel,
                    user=message.user,
                    text=to_mrkdwn(piece),
                    thread_ts=target.thread_ts,
                )
            return
        for piece in pieces:
            kwargs: dict[str, Any] = {"channel": message.channel, "text": to_mrkdwn(piece)}
            if target.thread_ts:
                kwargs["thread_ts"] = target.thread_ts
            await self.client.chat_postMessage(**kwargs)

    async def _channel_transcript(
        self, channel: str, count: int, bot_user: str | None, *, skip_ts: str = ""
    ) -> str:
        """The channel's last ``count`` messages; a clear ``BadCommand`` when Slack refuses."""
        try:
            response = await self.client.conversations_history(channel=channel, limit=count)
        except SlackApiError as exc:
            code = error_code(exc)
            log.info("slack: conversations.history failed (%s)", code)
            hint = (
                " Invite me first with `/invite @parley`."
                if code in {"not_in_channel", "channel_not_found"}
                else ""
            )
            raise BadCommand(
                f"I can't read this channel's messages (Slack answered {code}).{hint}"
            ) from None
        messages = list(reversed(response.get("messages") or []))
        return translate.transcript(messages, bot_user, skip_ts)

    async def _thread_transcript(
        self, message: translate.SlackMessage, count: int, bot_user: str | None
    ) -> str | None:
        try:
            response = await self.client.conversations_replies(
                channel=message.channel, ts=str(message.thread_ts), limit=200
            )
        except SlackApiError as exc:
            log.info("slack: conversations.replies failed (%s)", error_code(exc))
            return None
        messages = list(response.get("messages") or [])[-(count + 1) :]
        return translate.transcript(messages, bot_user, message.ts)
