"""The Slack adapter: a slack-bolt ``AsyncApp``, its listeners and its lifecycle.

Socket Mode (default) or HTTP mode (aiohttp, signatures checked by bolt). Every Web API call
goes through one ``AsyncWebClient`` pointed at ``SLACK_API_URL``, with slack_sdk's retry
handlers installed, so a 429 waits for Retry-After before the call is repeated.

The rest has its own module: ``translate`` (payload → core message), ``commands``,
``render`` (the answer's ``core.delivery.Renderer``), ``files``, ``threads``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_bolt.authorization.async_authorize import AsyncInstallationStoreAuthorize
from slack_bolt.middleware.authorization.async_single_team_authorization import (
    AsyncSingleTeamAuthorization,
)
from slack_bolt.oauth.async_oauth_flow import AsyncOAuthFlow
from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from adapters.inflight import InFlight
from adapters.slack import translate
from adapters.slack.arrivals import Arrival, Claim
from adapters.slack.budget import BudgetedWebClient
from adapters.slack.commands import SlackCommands
from adapters.slack.edge import HttpEdge, quiet_bolt_error
from adapters.slack.files import FileFetcher
from adapters.slack.installations import SqlInstallationStore, SqlOAuthStateStore
from adapters.slack.people import SlackNames
from adapters.slack.permissions import SlackPrivileges
from adapters.slack.render import (
    FEEDBACK_ACTION,
    ReplyTarget,
    SlackAnswer,
    describe,
    error_code,
)
from adapters.slack.settings import SlackSettings
from adapters.slack.threads import FollowedThreads
from adapters.slack.viewing import AssistantContexts, ChannelNames, viewing_note
from adapters.slack.workspaces import Workspace, Workspaces
from core import sentences
from core.attachments import AttachmentPolicy
from core.delivery import Delivered, Interval, deliver
from core.errors import ConfigError
from core.messages import ChannelKey, ConversationKey, Inbound
from core.recovery import Resumed
from core.service import ConversationService
from core.store.installations import InstallationRecords

log = logging.getLogger("parley.slack")

EVENTS_PATH = "/slack/events"
SUGGESTED_PROMPTS = (
    {"title": "Explain an error", "message": "What does this error mean, and how do I fix it?"},
    {"title": "Summarise a text", "message": "Summarise the following text in five bullets:"},
    {"title": "Draft a message", "message": "Help me write a short, friendly announcement about"},
)
STOP_GRACE = 6.0  # how long stop() lets answers in progress finish
CUT_GRACE = 2.0  # then how long answers cut by shutdown get to say so
HTTP_SHUTDOWN = 1.0  # how long an open HTTP request may hold up shutdown (requests only ack)
STATE_SECONDS = 600  # how long an OAuth install may take between Parley and Slack's page

# A worker's health: (healthy, a short JSON-able reason), what /healthz answers in HTTP mode.
HealthCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


def _check_tokens(settings: SlackSettings) -> None:
    """Stop start-up with a clear message when a token the mode needs is missing."""
    if settings.installable:
        if settings.mode != "http":
            raise ConfigError(
                "SLACK_CLIENT_ID is set without SLACK_BOT_TOKEN, so Parley installs into "
                "workspaces through OAuth: that needs SLACK_MODE=http (Slack sends people back "
                "to Parley's HTTP server), or set SLACK_BOT_TOKEN for one workspace."
            )
    elif settings.bot_token is None:
        raise ConfigError(
            "SLACK_BOT_TOKEN is not set: copy the Bot User OAuth Token (xoxb-...), or set "
            "SLACK_CLIENT_ID and SLACK_CLIENT_SECRET (with SLACK_MODE=http) to install Parley "
            "into workspaces."
        )
    if settings.mode == "socket" and settings.app_token is None:
        raise ConfigError(
            "SLACK_APP_TOKEN is not set: Socket Mode needs an app-level token (xapp-...) "
            "with the connections:write scope, or set SLACK_MODE=http."
        )
    if settings.mode == "http" and settings.signing_secret is None:
        raise ConfigError("SLACK_SIGNING_SECRET is not set: HTTP mode needs it to check requests.")


def _web_client(settings: SlackSettings, logger: logging.Logger) -> BudgetedWebClient:
    """The client of ``SLACK_BOT_TOKEN`` (without one: the client workspaces' clients copy)."""
    token = settings.bot_token
    return BudgetedWebClient(
        token=token.get_secret_value() if token is not None else None,
        base_url=settings.api_url,
        logger=logger,
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            AsyncRateLimitErrorRetryHandler(max_retry_count=5),
            AsyncServerErrorRetryHandler(max_retry_count=1),
        ],
    )


def oauth_flow(
    settings: SlackSettings, store: SqlInstallationStore, states: SqlOAuthStateStore
) -> AsyncOAuthFlow:
    """Slack's OAuth install on Parley's HTTP server (``SLACK_INSTALL_PATH`` sends the browser
    to Slack, which sends it back to ``SLACK_REDIRECT_PATH``), on its own client: the answer
    to oauth.v2.access carries the new bot token, so that client never logs a body."""
    assert settings.client_id is not None and settings.client_secret is not None
    quiet = logging.getLogger("parley.slack.oauth")
    quiet.setLevel(logging.WARNING)
    client = AsyncWebClient(base_url=settings.api_url, logger=quiet)
    return AsyncOAuthFlow(
        client=client,
        logger=quiet,
        settings=AsyncOAuthSettings(
            client_id=settings.client_id,
            client_secret=settings.client_secret.get_secret_value(),
            scopes=settings.scopes,
            redirect_uri=settings.redirect_uri or None,
            install_path=settings.install_path,
            install_page_rendering_enabled=False,
            redirect_uri_path=settings.redirect_path,
            authorization_url=settings.authorize_url,
            installation_store=store,
            installation_store_bot_only=True,
            state_store=states,
            state_expiration_seconds=STATE_SECONDS,
            logger=quiet,
        ),
    )


def installed_authorization(
    settings: SlackSettings, records: InstallationRecords | None, logger: logging.Logger
) -> dict[str, Any]:
    """``AsyncApp`` arguments for workspaces installed through OAuth: the flow, and bolt's
    authorization from the installation store (each bot token's ``auth.test`` asked once)."""
    if not settings.installable:
        return {}
    if records is None:
        raise ConfigError(
            "Installing Parley into workspaces (SLACK_CLIENT_ID) keeps the installations in "
            "Parley's SQL database (DATABASE_URL)."
        )
    store = SqlInstallationStore(records)
    flow = oauth_flow(
        settings, store, SqlOAuthStateStore(records, expiration_seconds=STATE_SECONDS)
    )
    authorize = AsyncInstallationStoreAuthorize(
        logger=logger,
        installation_store=store,
        client_id=settings.client_id,
        client_secret=flow.settings.client_secret,
        client=flow.client,
        bot_only=True,
        cache_enabled=True,
    )
    return {"oauth_flow": flow, "authorize": authorize, "installation_store": store}


def seed_authorization(app: AsyncApp, identity: AsyncSlackResponse) -> None:
    """Give bolt's single-workspace authorization the ``auth.test`` answer Parley just had.

    Bolt asks ``auth.test`` once and keeps the answer, but requests arriving before the first
    answer each ask again (50 mentions at once: 50 calls). Seeded, none asks. Request
    signatures are still checked (that is another middleware). Bolt versions without this
    middleware (or attribute) keep their own behaviour.
    """
    for middleware in getattr(app, "_async_middleware_list", ()):
        if isinstance(middleware, AsyncSingleTeamAuthorization):
            if middleware.auth_test_result is None:
                middleware.auth_test_result = identity


def _bolt_request(request: web.Request) -> AsyncBoltRequest:
    """A browser's GET (install, OAuth redirect) as bolt reads it: query and headers."""
    return AsyncBoltRequest(body="", query=request.query_string, headers=dict(request.headers))


class SlackAdapter:
    """Slack in and out; ``start()`` connects, ``stop()`` disconnects.

    One workspace (``SLACK_BOT_TOKEN``), or every workspace that installed Parley through
    OAuth (``SLACK_CLIENT_ID``, HTTP mode; installations kept in ``installations``). In HTTP
    mode ``web_app`` is the aiohttp application (tests may serve it themselves) and ``port``
    the port it listens on once started. From the core it takes only what it needs: the file
    limits (``attachments``) and whether message content may be logged.
    """

    name = "slack"
    platform = translate.PLATFORM

    def __init__(
        self,
        settings: SlackSettings,
        service: ConversationService,
        *,
        attachments: AttachmentPolicy,
        log_content: bool,
        host: str = "0.0.0.0",
        port: int | None = None,
        installations: InstallationRecords | None = None,
    ) -> None:
        _check_tokens(settings)
        self.settings = settings
        self.service = service
        self.host = host
        self.port = settings.port if port is None else port
        wire_log = self._wire_log = logging.getLogger("parley.slack.wire")
        if not log_content:
            # slack_sdk and bolt log request bodies (message text) at DEBUG.
            wire_log.setLevel(max(logging.INFO, wire_log.getEffectiveLevel()))
        self.client = _web_client(settings, wire_log)
        self.attachments = attachments
        secret = settings.signing_secret
        self.app = AsyncApp(
            name="parley",
            client=self.client,
            logger=wire_log,
            signing_secret=secret.get_secret_value() if secret is not None else "",
            request_verification_enabled=settings.mode == "http",
            process_before_response=False,
            raise_error_for_unhandled_request=True,
            **installed_authorization(settings, installations, wire_log),
        )
        self.app.error(quiet_bolt_error)
        self.installations: SqlInstallationStore | None = None
        if settings.installable:
            self.installations = self.app.installation_store  # type: ignore[assignment]
            self.app.enable_token_revocation_listeners()
        self.workspaces = Workspaces(self._new_workspace)
        # The one workspace of SLACK_BOT_TOKEN (None when installed into many through OAuth).
        self.home = self.workspaces.of(self.client.token) if self.client.token else None
        self.assistant_contexts = AssistantContexts()
        self.streaming = True
        self.stop_grace = STOP_GRACE
        self.failure: BaseException | None = None
        self.bot_user_id: str | None = None
        self._closing = False
        self._inflight: set[asyncio.Future[None]] = set()
        self._cleanups: set[asyncio.Task[None]] = set()
        self._tasks = InFlight()
        # Answers running at once; more wait here (Slack has been acked: none is dropped).
        self._answers = asyncio.Semaphore(settings.max_concurrent_answers)
        self._web_app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._session: aiohttp.ClientSession | None = None
        self.health: HealthCheck | None = None  # /healthz in HTTP mode, set by the composition root
        self._register()

    def _new_workspace(self, token: str) -> Workspace:
        """What acts in the workspace of bot token ``token``; its client copies ``client``'s
        settings (retry handlers included)."""
        base = self.client
        client = base
        if token != base.token:
            client = BudgetedWebClient(
                token=token,
                base_url=base.base_url,
                logger=base.logger,
                retry_handlers=list(base.retry_handlers),
            )
        commands = SlackCommands(
            self.service,
            client,
            slash_name=self.settings.command,
            wire_log=self._wire_log,
            privileges=SlackPrivileges(client, self.settings),
        )
        return Workspace(
            client=client,
            files=FileFetcher(token, self.settings.api_url, self.attachments),
            commands=commands,
            threads=FollowedThreads(client),
            names=SlackNames(client),
            channels=ChannelNames(client),
        )

    def workspace(self, context: AsyncBoltContext) -> Workspace | None:
        """The workspace a request came from (None: it has no bot token, not installed)."""
        if self.home is not None:
            return self.home
        token = context.bot_token
        return self.workspaces.of(token) if token else None

    async def workspace_of(self, team_id: str) -> Workspace | None:
        """The workspace ``team_id`` (None when Parley is not installed there)."""
        if self.home is not None or self.installations is None:
            return self.home
        bot = await self.installations.async_find_bot(enterprise_id=None, team_id=team_id)
        if bot is None:
            return None
        return self.workspaces.of(bot.bot_token)

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether Slack can reach this worker now: the Socket Mode connection is open, or
        (HTTP mode) the server listens."""
        if self._closing:
            return False
        if self.settings.mode == "http":
            return self._runner is not None
        session = self._socket.client.current_session if self._socket is not None else None
        return session is not None and not session.closed

    async def start(self) -> None:
        """Check the token, then connect over Socket Mode or listen for HTTP requests."""
        self._closing = False
        self._use_session(aiohttp.ClientSession())
        if self.home is not None:
            await self._identify()
        else:
            log.info(
                "slack: serving the workspaces that installed Parley (install at %s)",
                self.settings.install_path,
            )
        if self.settings.mode == "http":
            await self._listen()
        else:
            await self._connect_socket()

    async def _identify(self) -> None:
        """``auth.test`` of ``SLACK_BOT_TOKEN``: who Parley is, or a clear refusal."""
        try:
            identity = await self.client.auth_test()
        except SlackApiError as exc:
            await self._close_session()
            raise ConfigError(
                f"Slack rejected SLACK_BOT_TOKEN ({error_code(exc)}): check the Bot User OAuth Token."
            ) from None
        self.bot_user_id = identity.get("user_id")
        seed_authorization(self.app, identity)
        log.info(
            "slack: connected as %s in team %s (%s mode)",
            self.bot_user_id,
            identity.get("team_id"),
            self.settings.mode,
        )

    async def _listen(self) -> None:
        """HTTP mode: serve ``web_app`` on ``host:port``."""
        # aiohttp waits up to twice this for open requests at shutdown (60 s by default).
        self._runner = web.AppRunner(self.web_app, shutdown_timeout=HTTP_SHUTDOWN)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("slack: listening for events on %s:%s%s", self.host, self.port, EVENTS_PATH)

    async def _connect_socket(self) -> None:
        """Socket Mode: the URL is asked for here once, so a bad app token stops start-up (the
        client would retry forever)."""
        assert self.settings.app_token is not None
        app_token = self.settings.app_token.get_secret_value()
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

    async def wait_failed(self) -> BaseException:
        """The reason the connection ended for good on its own. slack_sdk reconnects by
        itself, so for Slack this never happens: it waits until cancelled."""
        never: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        return await never

    async def stop(self) -> None:
        """Stop taking events, let answers in progress finish (``stop_grace`` s), then disconnect.

        Events that still arrive are refused without an ack, so Slack delivers them again. An
        answer still running after the grace period is cut: it ends with the restart sentence
        instead of a "Thinking…" placeholder or an open stream.
        """
        self._closing = True
        if self._socket is not None:
            await self._socket.close_async()  # type: ignore[no-untyped-call]
            self._socket = None
        # Open HTTP connections close while answers drain, not before (whatever clients do).
        closing_http = asyncio.create_task(self._close_http())
        if not await self.drain(self.stop_grace):
            await self._cut_unfinished()
        for cleanup in set(self._cleanups):
            cleanup.cancel()  # a replaced message not deleted yet stays (its answer is whole)
        await closing_http
        await self._close_session()

    async def _close_http(self) -> None:
        """Stop listening; requests still open get ``HTTP_SHUTDOWN`` s, then are cut."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

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
        """Cancel the handlers still running; each ends its answer with the restart sentence."""
        log.warning("slack: %d answers still running at shutdown; cutting them", len(self._tasks))
        await self._tasks.cancel(CUT_GRACE)
        if self._tasks:
            log.error("slack: %d cut answers did not end in time", len(self._tasks))

    def _use_session(self, session: aiohttp.ClientSession | None) -> None:
        self._session = session
        self.client.session = session
        self.workspaces.use_session(session)

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._use_session(None)

    @property
    def web_app(self) -> web.Application:
        """The aiohttp application that receives Events API, slash command and interactivity posts."""
        if self._web_app is None:
            settings = self.settings
            secret = settings.signing_secret
            edge = HttpEdge(
                secret.get_secret_value() if secret is not None else "",
                self.app.async_dispatch,
                max_body=settings.http_max_body,
                read_timeout=settings.http_read_timeout,
            )
            app = web.Application(client_max_size=settings.http_max_body)
            app.router.add_post(EVENTS_PATH, edge.handle)
            app.router.add_get("/healthz", self._healthz)
            if self.app.oauth_flow is not None:
                app.router.add_get(settings.install_path, self._install)
                app.router.add_get(settings.redirect_path, self._oauth_redirect)
            self._web_app = app
        return self._web_app

    async def _install(self, request: web.Request) -> web.Response:
        """Start an install: a state (kept in the database, and as a cookie), then Slack."""
        flow = self.app.oauth_flow
        assert flow is not None
        return await to_aiohttp_response(await flow.handle_installation(_bolt_request(request)))

    async def _oauth_redirect(self, request: web.Request) -> web.Response:
        """Slack sends the browser back: the state checked, the code exchanged for the
        workspace's bot token (``oauth.v2.access``), the installation saved."""
        flow = self.app.oauth_flow
        assert flow is not None
        response = await flow.handle_callback(_bolt_request(request))
        if response.status != 200:
            log.warning("slack: an install did not complete (%s)", response.status)
        return await to_aiohttp_response(response)

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.health is None:
            return web.json_response({"ok": True})
        healthy, body = await self.health()
        return web.json_response(body, status=200 if healthy else 503)

    # --- listeners ------------------------------------------------------------------------

    def _register(self) -> None:
        track = [self._track]
        arriving: list[Callable[..., Any]] = [self._track, self._arrive]
        self.app.event("app_mention", middleware=arriving)(self._on_message)
        self.app.event("message", middleware=arriving)(self._on_message)
        self.app.event("assistant_thread_started", middleware=track)(
            self._on_assistant_thread_started
        )
        self.app.event("assistant_thread_context_changed")(self._on_assistant_context)
        self.app.command(self.settings.command, middleware=track)(self._on_command)
        feedback = re.compile(f"^{FEEDBACK_ACTION}_(up|down)$")
        self.app.action(feedback, middleware=track)(self._on_feedback)

    async def _track(
        self, context: AsyncBoltContext, next: Callable[[], Awaitable[Any]]
    ) -> BoltResponse | None:
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

    async def _arrive(
        self,
        body: dict[str, Any],
        event: dict[str, Any],
        context: AsyncBoltContext,
        next: Callable[[], Awaitable[Any]],
    ) -> BoltResponse | None:
        """Listener middleware of messages and mentions: one Parley may answer is claimed
        before bolt acknowledges it (``adapters.slack.arrivals``); a redelivery of one claimed
        already is acknowledged and goes no further."""
        arrival = Arrival(body, event, context.bot_user_id, context.bot_id)
        message = arrival.answerable(follow_threads=self.settings.follow_threads)
        if message is not None:
            claim = await Claim.start(self.service, arrival, message)
            if claim.redelivered:
                log.info("slack: dropping a redelivered message in %s", message.key)
                done = context.get("parley_done")
                if done is not None and not done.done():
                    done.set_result(None)
                return BoltResponse(status=200, body="")
            context["parley_claim"] = claim
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

    async def _on_assistant_context(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        """The person opened another channel beside an assistant thread: remember it."""
        self.assistant_contexts.keep(str(body.get("team_id") or ""), event)

    async def _on_message(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        """A message or a mention (``Arrival.mention`` tells them apart)."""
        with self._handling(context):
            arrival = Arrival(body, event, context.bot_user_id, context.bot_id)
            await self._handle(arrival, self.workspace(context), context.get("parley_claim"))

    async def _handle(
        self, arrival: Arrival, workspace: Workspace | None, arrived: Claim | None
    ) -> None:
        """Handle a message; a claim taken on its arrival and not taken on by an answer (no
        answer due, a command, a failure) is settled, so no worker handles it again."""
        claim = None
        if arrived is not None:
            claimed = await arrived.claiming
            if claimed is False:
                log.info("slack: dropping a redelivered message")
                return
            claim = arrived.event_id if claimed else None
        answering, state = False, "answered"
        try:
            answering = await self._on_message_like(arrival, workspace)
        except asyncio.CancelledError:
            claim = None  # cut by shutdown: left to another worker, as received
            raise
        except Exception:
            state = "failed"
            raise
        finally:
            if claim is not None and not answering:
                await self.service.settle_received(translate.PLATFORM, claim, state)

    async def _on_command(
        self, ack: Callable[[], Awaitable[Any]], body: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        await ack()
        with self._handling(context):
            workspace = self.workspace(context)
            if workspace is not None:
                await workspace.commands.slash(
                    body, team_id=context.team_id, bot_user_id=context.bot_user_id
                )

    async def _on_feedback(
        self,
        ack: Callable[[], Awaitable[Any]],
        body: dict[str, Any],
        action: dict[str, Any],
        context: AsyncBoltContext,
    ) -> None:
        """A 👍/👎 click under an answer: recorded once per person and answer (a second click
        replaces the first); the person is told, privately."""
        await ack()
        with self._handling(context):
            workspace = self.workspace(context)
            channel = str((body.get("channel") or {}).get("id") or "")
            container = body.get("container") or {}
            user = str((body.get("user") or {}).get("id") or "")
            team = context.team_id or str((body.get("team") or {}).get("id") or "")
            message_ts = str(container.get("message_ts") or "")
            if not (channel and user and message_ts and workspace):
                log.info("slack: a feedback click without its channel, user or message")
                return
            helpful = str(action.get("action_id") or "").endswith("_up")
            where = ChannelKey(translate.PLATFORM, team, channel)
            said = await self.service.feedback(where, message_ts, user, helpful=helpful)
            thread_ts = container.get("thread_ts")
            try:
                await workspace.client.chat_postEphemeral(
                    channel=channel, user=user, text=said, thread_ts=thread_ts or None
                )
            except SlackApiError as exc:
                log.info("slack: thanking for feedback failed (%s)", error_code(exc))

    async def _on_message_like(self, arrival: Arrival, workspace: Workspace | None) -> bool:
        """A message or mention: a command, or a question answered through the core (True:
        it was handed to ``answer``)."""
        bot_user, bot_id, event = arrival.bot_user_id, arrival.bot_id, arrival.event
        reason = translate.ignore_reason(event, bot_user, bot_id)
        if reason is not None or workspace is None:
            log.debug("slack: ignoring a %s event (%s)", event.get("type"), reason or "no token")
            return False
        message = translate.parse_message(arrival.body, event)
        route = translate.route(
            message,
            mention=arrival.mention,
            bot_user_id=bot_user,
            follow_threads=self.settings.follow_threads,
        )
        if route == "ignore":
            return False
        threads = workspace.threads
        if route == "if followed" and not await threads.answered_in(message, bot_user, bot_id):
            return False
        inbound = await self._read(workspace, message, bot_user)
        if inbound is None:
            return False
        if not message.direct:
            threads.remember(message.channel, message.reply_thread or message.ts)
        await self.answer(inbound, message.target, status=message.status, workspace=workspace)
        return True

    async def _read(
        self, workspace: Workspace, message: translate.SlackMessage, bot_user: str | None
    ) -> Inbound | None:
        """The core message for ``message`` (files downloaded), or None when it was a command
        (run here) or could not be read (the person is told)."""
        try:
            text = message.text_for(bot_user)
            command = None if message.files else self.service.parse_command(text)
            if command is not None:
                await workspace.commands.typed(message, *command, bot_user)
                return None
            fetched = await workspace.files.fetch(message.files)
            message = await workspace.names.named(message)
            text = await self._viewing(workspace, message, text)
            return message.inbound(text, fetched.attachments, fetched.notes)
        except asyncio.CancelledError:
            await self._apologise(workspace, message.target, sentences.RESTARTED)
            raise
        except Exception as exc:
            self._log_failure("reading a message", message.key, exc)
            await self._apologise(workspace, message.target)
            return None

    async def _viewing(
        self, workspace: Workspace, message: translate.SlackMessage, text: str
    ) -> str:
        """``text``, after "(viewing #name)" in an assistant thread whose person has a channel
        open beside it (the model then knows which channel "this channel" is)."""
        if not message.status:
            return text
        viewed = self.assistant_contexts.viewed(message.team, message.channel, message.thread_ts)
        name = await workspace.channels.of(viewed) if viewed else ""
        return f"{viewing_note(name)} {text}" if name else text

    async def answer(
        self,
        inbound: Inbound,
        target: ReplyTarget,
        *,
        status: bool = False,
        workspace: Workspace | None = None,
    ) -> Delivered | None:
        """Show the core's answer to ``inbound`` in Slack; it always ends in a final message.

        None when Slack refused the final write (logged)."""
        workspace = workspace or self.home
        if workspace is None:
            log.error("slack: no workspace to answer in %s", inbound.key)
            return None
        renderer = self._renderer(workspace, target, status, answers=inbound.event_id or "")
        journal = self.service.journal(inbound)
        pacing = Interval(self.settings.update_interval)
        try:
            # The slot is taken once the conversation is this answer's turn: a question
            # waiting (claimed, on record) holds up neither its conversation nor a slot.
            events = self.service.answer(inbound, slot=self._answers)
            return await deliver(events, renderer, pacing, journal=journal)
        except Exception as exc:
            self._log_failure("answering", inbound.key, exc)
            return None

    def _renderer(
        self,
        workspace: Workspace,
        target: ReplyTarget,
        status: bool,
        *,
        answers: str = "",
        bot_user_id: str | None = None,
    ) -> SlackAnswer:
        return SlackAnswer(
            workspace.client,
            target,
            stream=self.streaming,
            status=status,
            on_streaming_unsupported=self._streaming_unsupported,
            feedback=self.settings.feedback_buttons,
            later=self._later,
            answers=answers,
            bot_user_id=bot_user_id,
        )

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (an answer's clean-up) in the background; ``drain()`` and ``stop()``
        wait for it like for a handler."""
        task = asyncio.create_task(work)
        for tasks in (self._inflight, self._cleanups):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def resume(self, resumed: Resumed) -> None:
        """Finish an answer a stopped worker left (``core.recovery``): take down what it
        showed, then show the stored answer, or ask again, in the same place. A message it
        had only received is handled as if it had just arrived."""
        if resumed.received is not None:
            await self._handle_received(resumed.received, resumed.event_id)
            return
        inbound = resumed.inbound
        assert inbound is not None
        target, status = translate.reply_target(dict(inbound.reply_to))
        workspace = await self.workspace_of(target.team_id) if target.channel else None
        if workspace is None:
            log.error("slack: an unfinished answer in %s has no place to go; dropped", inbound.key)
            return
        bot_user = await self.bot_user_of(target.team_id)
        renderer = self._renderer(
            workspace, target, status, answers=inbound.event_id or "", bot_user_id=bot_user
        )
        since = translate.ts_of(inbound.sent_at) if inbound.sent_at is not None else None
        renderer.resume(resumed.shown, since)
        if resumed.answer is not None:
            events = self.service.replay(inbound, resumed.answer)
        else:
            events = self.service.answer(inbound, resumed=True, slot=self._answers)
        pacing = Interval(self.settings.update_interval)
        try:
            await deliver(events, renderer, pacing, journal=self.service.journal(inbound))
        except Exception as exc:
            self._log_failure("finishing an answer", inbound.key, exc)

    async def _handle_received(self, payload: Mapping[str, Any], claim: str) -> None:
        """A message a stopped worker claimed on arrival (``claim``) and never took on."""
        arrival = Arrival.of(payload)
        if arrival is None:
            log.error("slack: a message a stopped worker received could not be read; dropped")
            await self.service.settle_received(translate.PLATFORM, claim, "failed")
            return
        team = str(arrival.body.get("team_id") or arrival.event.get("team") or "")
        with self._tasks.track():
            await self._handle(arrival, await self.workspace_of(team), Claim.taken(claim))

    async def bot_user_of(self, team_id: str) -> str | None:
        """Parley's bot user in workspace ``team_id``."""
        if self.home is not None or self.installations is None:
            return self.bot_user_id
        bot = await self.installations.async_find_bot(enterprise_id=None, team_id=team_id)
        return bot.bot_user_id if bot is not None else None

    def _streaming_unsupported(self, code: str) -> None:
        if self.streaming:
            log.warning("slack: chat streaming is not available (%s); using chat.update", code)
        self.streaming = False

    async def _apologise(
        self, workspace: Workspace, target: ReplyTarget, sentence: str = sentences.GENERIC_ERROR
    ) -> None:
        try:
            await SlackAnswer(workspace.client, target, stream=False).fail(
                sentences.failure_text(sentence)
            )
        except Exception as exc:
            log.error("slack: could not post an apology: %s", describe(exc))

    def _log_failure(self, doing: str, key: ConversationKey, exc: BaseException) -> None:
        if isinstance(exc, SlackApiError):
            log.error("slack: %s in %s failed: Slack answered %s", doing, key, error_code(exc))
        else:
            log.error("slack: %s in %s failed", doing, key, exc_info=exc)

    # --- assistant threads ----------------------------------------------------------------

    async def _on_assistant_thread_started(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        with self._handling(context):
            self.assistant_contexts.keep(str(body.get("team_id") or ""), event)
            workspace = self.workspace(context)
            if workspace is not None:
                await self._suggest_prompts(workspace.client, body, event)

    async def _suggest_prompts(
        self, client: AsyncWebClient, body: Mapping[str, Any], event: Mapping[str, Any]
    ) -> None:
        """A new assistant thread: offer a few starting prompts (once per event)."""
        thread = event.get("assistant_thread")
        if not isinstance(thread, Mapping):  # a signed but malformed event: nothing to suggest
            return
        channel, thread_ts = thread.get("channel_id"), thread.get("thread_ts")
        if not (channel and thread_ts and isinstance(channel, str) and isinstance(thread_ts, str)):
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
            await client.assistant_threads_setSuggestedPrompts(
                channel_id=channel,
                thread_ts=thread_ts,
                title="Ask me anything, or try:",
                prompts=list(SUGGESTED_PROMPTS),
            )
        except SlackApiError as exc:
            log.warning("slack: setSuggestedPrompts failed (%s)", error_code(exc))
