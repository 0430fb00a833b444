"""The core's commands on Slack: ``/parley <command>``, and commands typed after a mention or
in a DM ("@parley reset", "!system be terse").

The core parses names (aliases included) and arguments; this module only says where a command
was given, reads the messages ``summarize`` covers there, and shows the reply.
``summarize [N]`` means the last N messages of that place: the thread (``conversations.replies``),
the channel (``conversations.history``), or at the top level of a DM the stored conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.slack import translate
from adapters.slack.layout import fit
from adapters.slack.mrkdwn import to_mrkdwn
from adapters.slack.permissions import SlackPrivileges
from adapters.slack.render import REPLY_METADATA, describe, error_code
from core import sentences
from core.commands import canonical, summary_count
from core.errors import BadCommand, UserFacingError
from core.messages import Author, CommandReply, ConversationKey
from core.permissions import Privileges
from core.service import ConversationService

log = logging.getLogger("parley.slack")

THREAD_PAGE = 1000  # conversations.replies: the most Slack gives in one page
SPEAK_IN_THREADS = (
    "My answers here are in threads, each a conversation of its own: write `@parley speak` "
    "in a thread to hear its last answer."
)
RESET_SCOPE = (
    "`{command} reset` resets the top-level conversation here (in a DM with me: the messages "
    "outside threads). Every thread, assistant threads included, is a conversation of its "
    "own: to reset one, write `@parley reset` in that thread."
)


@dataclass(frozen=True, slots=True)
class Place:
    """Where a command was given: for ``summarize``, what it covers there and the command's
    own message (left out of the summary); whether it is a DM with the bot (for permissions)."""

    channel: str
    source: translate.SummarySource
    thread_ts: str | None = None
    own_ts: str = ""
    direct: bool = False


class SlackCommands:
    """Runs the core's commands for Slack and shows their replies."""

    def __init__(
        self,
        service: ConversationService,
        client: AsyncWebClient,
        *,
        slash_name: str,
        wire_log: logging.Logger,
        privileges: SlackPrivileges,
    ) -> None:
        self.service = service
        self.client = client
        self.privileges = privileges
        self.slash_name = slash_name
        self.wire_log = wire_log
        self.session: aiohttp.ClientSession | None = None

    # --- slash command --------------------------------------------------------------------

    async def slash(
        self, body: Mapping[str, Any], *, team_id: str | None, bot_user_id: str | None
    ) -> None:
        """``/parley <command>``: acts on the channel's top-level conversation; the reply goes
        through the command's response_url."""
        command = translate.parse_slash(body, team_id)
        place = Place(command.key.channel, command.summary_source, direct=command.direct)
        try:
            reply = await self.run(
                command.key, command.author, command.name, command.args, place, bot_user_id
            )
            if canonical(command.name) == "reset" and reply.ok:
                scope = RESET_SCOPE.format(command=self.slash_name)
                private = reply.private or not command.direct
                reply = CommandReply(f"{reply.text}\n{scope}", private=private)
            if canonical(command.name) == "speak":
                reply = await self._speak_reply(reply, command.key.channel, None, command.direct)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                restarted = CommandReply(sentences.RESTARTED, private=True, ok=False)
                await self.respond(command.response_url, restarted)
            raise
        except Exception as exc:
            log.error(
                "slack: running a slash command in %s failed (%s)", command.key, describe(exc)
            )
            reply = CommandReply(sentences.GENERIC_ERROR, private=True, ok=False)
        if canonical(command.name) == "speak" and not reply.text:
            return  # said with the upload
        try:
            await self.respond(command.response_url, reply)
        except Exception as exc:
            log.error("slack: responding to a slash command failed (%s)", describe(exc))

    async def respond(self, response_url: str, reply: CommandReply) -> None:
        """Answer a slash command through its response_url: ephemeral when the reply is private."""
        if not response_url.startswith(("https://", "http://")):
            log.warning("slack: slash command without a response_url")
            return
        hook = AsyncWebhookClient(
            response_url,
            session=self.session,
            logger=self.wire_log,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=2),
                AsyncRateLimitErrorRetryHandler(max_retry_count=5),
            ],
        )
        kind = "ephemeral" if reply.private else "in_channel"
        for piece in fit(reply.text):
            response = await hook.send(text=to_mrkdwn(piece), response_type=kind)
            if response.status_code != 200:
                log.warning("slack: response_url answered HTTP %s", response.status_code)
                return

    # --- commands typed in a message ------------------------------------------------------

    async def typed(
        self, message: translate.SlackMessage, name: str, args: str, bot_user_id: str | None
    ) -> None:
        """A command typed in a mention or DM: runs on that conversation, once per message
        however often Slack delivers it."""
        place = Place(
            message.channel,
            message.summary_source,
            message.thread_ts,
            message.ts,
            direct=message.direct,
        )
        reply = await self.run(
            message.key,
            message.author,
            name,
            args,
            place,
            bot_user_id,
            event_id=message.dedupe_id,
        )
        if reply.redelivered:
            log.info("slack: dropping a redelivered command in %s", message.channel)
            return
        target = message.target
        if reply.audio is not None:
            reply = await self._speak_reply(reply, message.channel, target.thread_ts, True)
            if not reply.text:
                return
        for piece in fit(reply.text):
            if reply.private and not message.direct:
                await self.client.chat_postEphemeral(
                    channel=message.channel,
                    user=message.user,
                    text=to_mrkdwn(piece),
                    thread_ts=target.thread_ts,
                )
                continue
            where: dict[str, Any] = {
                "channel": message.channel,
                "text": to_mrkdwn(piece),
                "metadata": {"event_type": REPLY_METADATA, "event_payload": {"reply": "command"}},
            }
            if target.thread_ts:
                where["thread_ts"] = target.thread_ts
            await self.client.chat_postMessage(**where)

    # --- audio files -----------------------------------------------------------------------

    async def _speak_reply(
        self, reply: CommandReply, channel: str, thread_ts: str | None, direct: bool
    ) -> CommandReply:
        """Upload the audio of ``speak`` where it was asked, its text as the file's comment:
        what is left to say afterwards (nothing once uploaded; why not, when it failed)."""
        if reply.audio is None:
            if not reply.ok and reply.text == sentences.NOTHING_TO_SPEAK and not direct:
                return CommandReply(f"{reply.text}\n{SPEAK_IN_THREADS}", private=True, ok=False)
            return reply
        try:
            await self.upload(channel, thread_ts, reply)
        except SlackApiError as exc:
            code = error_code(exc)
            log.warning("slack: uploading an audio file failed (%s)", code)
            hint = " I need the files:write scope." if code == "missing_scope" else ""
            text = f"I couldn't upload the audio file here (Slack answered {code}).{hint}"
            return CommandReply(text, private=True, ok=False)
        return CommandReply("", private=reply.private)

    async def upload(self, channel: str, thread_ts: str | None, reply: CommandReply) -> None:
        """Slack's external upload: an upload URL, the bytes posted to it, then the file
        shared in ``channel`` (and thread) with the reply's text as its comment."""
        assert reply.audio is not None
        audio = reply.audio
        await self.client.files_upload_v2(
            channel=channel,
            thread_ts=thread_ts or None,
            file=audio.data,
            filename=audio.name,
            title="Parley's answer, read aloud",
            initial_comment=to_mrkdwn(reply.text),
        )

    # --- running --------------------------------------------------------------------------

    async def run(
        self,
        key: ConversationKey,
        author: Author,
        name: str,
        args: str,
        place: Place,
        bot_user_id: str | None,
        *,
        event_id: str | None = None,
    ) -> CommandReply:
        """Run a command in the core; for ``summarize``, with the messages it covers here. The
        core asks what Slack says about the person only when the command changes something."""
        try:
            transcript = await self._transcript(name, args, place, bot_user_id)
        except UserFacingError as exc:
            return CommandReply(exc.user_message, private=True, ok=False)

        async def viewer() -> Privileges:
            return await self.privileges.of(author.id, place.channel, direct=place.direct)

        return await self.service.command(
            key, author, name, args, transcript, event_id=event_id, viewer=viewer
        )

    async def _transcript(
        self, name: str, args: str, place: Place, bot_user_id: str | None
    ) -> str | None:
        """The last N messages where ``summarize`` was given, as text; None for anything else
        (and for the stored conversation, which the core reads itself)."""
        if canonical(name) != "summarize" or place.source == "stored":
            return None
        try:
            count = summary_count(args)
        except BadCommand:
            return None  # the core says what is wrong with N
        if place.source == "thread":
            messages = await self._read(
                "conversations.replies",
                self.client.conversations_replies(
                    channel=place.channel, ts=str(place.thread_ts), limit=THREAD_PAGE
                ),
            )
        else:
            limit = count + 1 if place.own_ts else count
            history = await self._read(
                "conversations.history",
                self.client.conversations_history(channel=place.channel, limit=limit),
            )
            messages = list(reversed(history))
        kept = [m for m in messages if m.get("ts") != place.own_ts][-count:]
        return translate.transcript(kept, bot_user_id, place.own_ts)

    async def _read(self, method: str, call: Awaitable[Any]) -> list[Mapping[str, Any]]:
        """The ``messages`` of a conversations.* call; a clear ``BadCommand`` when Slack refuses."""
        try:
            response = await call
        except SlackApiError as exc:
            code = error_code(exc)
            log.info("slack: %s failed (%s)", method, code)
            hint = (
                " Invite me first with `/invite @parley`."
                if code in {"not_in_channel", "channel_not_found"}
                else ""
            )
            raise BadCommand(
                f"I can't read the messages here (Slack answered {code}).{hint}"
            ) from None
        return list(response.get("messages") or [])


__all__ = ["Place", "RESET_SCOPE", "SlackCommands"]
