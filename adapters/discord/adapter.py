"""``DiscordAdapter``: connects discord.py to the core and keeps it connected.

It requests the Message Content intent and, when the gateway refuses it (close code 4014),
reconnects without it so slash commands and mentions keep working, with one log line saying
what is missing and where to enable it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import discord
from discord import app_commands

from adapters.discord.endpoints import use_endpoints
from adapters.discord.guard import DispatchGuard, GuardedTree, guard_gateway
from adapters.discord.inbound import Answers, MessageHandler
from adapters.discord.interactions import SlashCommands
from adapters.discord.render import NO_MENTIONS
from adapters.discord.resume import resume
from adapters.discord.settings import DiscordSettings
from adapters.discord.translate import PLATFORM, AccessPolicy
from core.attachments import AttachmentPolicy
from core.errors import ConfigError, ParleyError
from core.recovery import Resumed
from core.service import ConversationService

log = logging.getLogger("parley.discord")

STOP_GRACE_SECONDS = 6.0
# After the grace period, answers still running are cancelled and get this long to say so.
CUT_NOTE_SECONDS = 2.0
MISSING_CONTENT_INTENT = (
    "Discord refused the Message Content intent, so Parley connected without it: slash commands "
    "and mentions work, but plain messages in /chat threads and replies without a mention are "
    "not read. Enable it in the Discord Developer Portal → your application → Bot → Privileged "
    "Gateway Intents → Message Content Intent, then restart."
)


class ParleyClient(discord.Client):
    """A discord.py client wired to Parley's slash commands and message handler.

    ``options`` go to discord.py: the shard (``shard_id``, ``shard_count``), ``http_trace``.
    """

    def __init__(self, adapter: DiscordAdapter, *, message_content: bool, **options: Any) -> None:
        intents = discord.Intents.default()
        intents.message_content = message_content
        # Parley has no voice features; don't warn at start-up that voice libraries are missing.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        super().__init__(intents=intents, allowed_mentions=NO_MENTIONS, **options)
        self.adapter = adapter
        self.tree: app_commands.CommandTree[ParleyClient] = GuardedTree(self)
        args = (
            adapter.service,
            adapter.settings,
            adapter.policy,
            adapter.attachments,
            adapter.inflight,
        )
        SlashCommands(self, *args).install(self.tree)
        self.messages = MessageHandler(self, *args)
        self.dispatch_guard = DispatchGuard()
        self.dispatch_guard.install(self._connection.parsers)
        guard_gateway()

    async def setup_hook(self) -> None:
        await self.adapter.sync_commands(self.tree)

    async def on_ready(self) -> None:
        log.info(
            "connected to Discord as %s (id %s) in %d servers",
            self.user,
            self.application_id,
            len(self.guilds),
        )
        self.adapter.ready.set()

    async def on_message(self, message: discord.Message) -> None:
        await self.messages.handle(message)

    @property
    def connected(self) -> bool:
        """Whether the gateway connection is up and ready (every shard of it)."""
        if not self.is_ready() or self.is_closed():
            return False
        ws: Any = self.ws
        return ws is not None and bool(ws.open)


class ShardedParleyClient(ParleyClient, discord.AutoShardedClient):
    """A ``ParleyClient`` that runs several shards of the bot on one worker (``shard_ids``)."""

    @property
    def connected(self) -> bool:
        if not self.is_ready() or self.is_closed():
            return False
        return all(not shard.is_closed() for shard in self.shards.values())


def client_options(settings: DiscordSettings) -> tuple[type[ParleyClient], dict[str, Any]]:
    """The client class and discord.py options for the shards this worker runs: one plain
    client unsharded or for one shard, an auto-sharded one for several."""
    shards = settings.shards
    if shards is None:
        return ParleyClient, {}
    if len(shards) == 1:
        return ParleyClient, {"shard_id": shards[0], "shard_count": settings.shard_count}
    return ShardedParleyClient, {"shard_ids": list(shards), "shard_count": settings.shard_count}


class DiscordAdapter:
    """Runs Parley on Discord: ``await start()`` logs in and connects in the background,
    ``await stop()`` lets answers in progress finish and disconnects.

    If the connection ends for good on its own (token revoked, intents refused, a close code
    Discord says not to reconnect after), ``failed`` is set and ``failure`` holds the
    exception; ``wait_failed()`` returns it. The process should then stop (and be restarted by
    its supervisor) rather than run on without Discord. ``stop()`` never sets ``failed``.
    """

    name = "discord"
    platform = PLATFORM

    def __init__(
        self,
        settings: DiscordSettings,
        service: ConversationService,
        *,
        attachments: AttachmentPolicy,
        log_content: bool,
        http_trace: aiohttp.TraceConfig | None = None,
    ) -> None:
        """``http_trace`` sees every REST request discord.py makes (metrics count them)."""
        if settings.token is None:
            raise ConfigError(
                "DISCORD_TOKEN: not set; copy the bot token from the Developer Portal."
            )
        self.settings = settings
        self.service = service
        self.policy = AccessPolicy.from_settings(settings)
        self.attachments = attachments
        self.inflight = Answers(settings.max_concurrent_answers)
        self.ready = asyncio.Event()
        self.failed = asyncio.Event()
        self.failure: BaseException | None = None
        self.message_content = True
        self.client: ParleyClient | None = None
        self.http_trace = http_trace
        self._task: asyncio.Task[None] | None = None
        self._synced = False
        self._stopping = False
        # Process-wide: discord.py keeps its REST base and gateway URL as class attributes.
        use_endpoints(settings.api_url, settings.gateway_url)
        discord_log = logging.getLogger("discord")
        if not log_content and discord_log.getEffectiveLevel() < logging.INFO:
            # discord.py's debug logs carry request bodies and gateway events: message content.
            discord_log.setLevel(logging.INFO)

    @property
    def connected(self) -> bool:
        """Whether Discord is connected now (health checks ask)."""
        return self.client is not None and self.ready.is_set() and self.client.connected

    async def start(self) -> None:
        """Log in (a rejected token raises ConfigError here) and connect in a background task."""
        self.client = await self._login(message_content=True)
        self._task = asyncio.create_task(self._connect(), name="parley-discord-gateway")
        self._task.add_done_callback(self._report_end)

    async def wait_failed(self) -> BaseException:
        """Wait until the connection has ended for good on its own; the reason."""
        await self.failed.wait()
        assert self.failure is not None
        return self.failure

    async def stop(self) -> None:
        """Take no new messages or commands, let answers in progress finish for up to
        ``STOP_GRACE_SECONDS``, end the rest with a note that Parley restarted, disconnect."""
        self._stopping = True
        self.inflight.close()
        await self.inflight.wait(STOP_GRACE_SECONDS)
        if len(self.inflight):
            log.warning("stopping: cutting %d answers short", len(self.inflight))
            await self.inflight.cancel(CUT_NOTE_SECONDS)
        if self.client is not None:
            await self.client.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.ready.clear()

    async def resume(self, resumed: Resumed) -> None:
        """Finish an answer a stopped worker left (``core.recovery``), once logged in; one
        answer in flight like any other (``stop`` waits for it)."""
        await self.ready.wait()
        if self.inflight.closing:  # stopping: its claim runs out with this worker's lease
            return
        client = self.client
        assert client is not None
        with self.inflight.track():
            async with self.inflight.slots:
                try:
                    interval = self.settings.edit_interval
                    await resume(client, self.service, resumed, edit_interval=interval)
                except discord.HTTPException as exc:
                    log.warning(
                        "finishing an answer failed: HTTP %s (code %s)", exc.status, exc.code
                    )

    async def _login(self, *, message_content: bool) -> ParleyClient:
        kind, options = client_options(self.settings)
        if self.http_trace is not None:
            options["http_trace"] = self.http_trace
        client = kind(self, message_content=message_content, **options)
        token = self.settings.token
        assert token is not None
        try:
            await client.login(token.get_secret_value())
        except discord.LoginFailure:
            await client.close()
            raise ConfigError(
                "DISCORD_TOKEN: Discord rejected the bot token; copy a fresh one from the "
                "Developer Portal (Bot → Reset Token)."
            ) from None
        except (OSError, aiohttp.ClientError, discord.HTTPException) as exc:
            await client.close()
            raise ParleyError(
                f"could not log in to Discord at {discord.http.Route.BASE} "
                f"({type(exc).__name__}); check the network, or DISCORD_API_URL if it is set."
            ) from exc
        except BaseException:
            await client.close()
            raise
        return client

    async def _connect(self) -> None:
        while True:
            assert self.client is not None
            try:
                await self.client.connect(reconnect=True)
                if not self._stopping:
                    raise ParleyError("the Discord connection was closed")
                return
            except discord.PrivilegedIntentsRequired:
                if not self.message_content:
                    raise
                log.warning(MISSING_CONTENT_INTENT)
                self.message_content = False
                await self.client.close()
                self.client = await self._login(message_content=False)

    async def sync_commands(self, tree: app_commands.CommandTree[Any]) -> None:
        """Register the slash commands once: in DISCORD_GUILD_IDS (instant) or globally."""
        if self._synced:
            return
        guild_ids = self.settings.guild_ids
        try:
            if guild_ids:
                for guild_id in guild_ids:
                    synced = await tree.sync(guild=discord.Object(guild_id))
                    log.info("registered %d slash commands in server %s", len(synced), guild_id)
            else:
                synced = await tree.sync()
                log.info(
                    "registered %d slash commands globally (Discord may take up to an hour to "
                    "show changes; set DISCORD_GUILD_IDS for instant updates)",
                    len(synced),
                )
        except discord.Forbidden:
            log.error(
                "Discord refused to register slash commands: invite the bot with the "
                "applications.commands scope (see docs/discord.md)"
            )
            return
        except discord.HTTPException as exc:
            log.error("registering slash commands failed: HTTP %s (code %s)", exc.status, exc.code)
            return
        self._synced = True

    def _report_end(self, task: asyncio.Task[None]) -> None:
        """The gateway task ended: unless by ``stop()``, that is fatal; say so and signal it."""
        if task.cancelled() or self._stopping:
            return
        exc = task.exception() or ParleyError("the Discord connection ended")
        log.error("the Discord connection ended for good: %s", exc, exc_info=exc)
        self.failure = exc
        self.ready.clear()
        self.failed.set()
