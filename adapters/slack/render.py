"""Render out: one answer from the core becomes one or more Slack messages in a thread.

``SlackAnswer`` is the Slack ``core.delivery.Renderer``. Two ways to show an answer growing:

- streaming (primary): ``chat.startStream`` / ``chat.appendStream`` / ``chat.stopStream`` with
  Markdown, which Slack renders itself;
- editing (fallback, and top-level DM answers, which streaming cannot address): a
  "Thinking…" placeholder from ``chat.postMessage``, then ``chat.update`` with mrkdwn.

``adapters.slack.layout`` cuts the answer into messages of at most ``LIMIT`` characters as
Slack receives them; a long answer continues in further thread replies. Every text leaves
through ``to_mrkdwn`` or ``to_markdown_text``, which neutralise broadcast mentions.

Writes while the answer grows are best effort: a failed one is logged and skipped, and the next
(or the final write) shows the text. A failed final write is posted as a new message instead,
so an answer never stays "Thinking…" or half written while Slack still accepts posts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.budget import WriteDeferred, waiting_at_most
from adapters.slack.layout import LIMIT, Layout, fit
from adapters.slack.mrkdwn import to_markdown_text, to_mrkdwn
from adapters.slack.translate import ReplyTarget
from core import budget, sentences

log = logging.getLogger("parley.slack")

THINKING = "_Thinking…_"
FEEDBACK_ACTION = "parley_feedback"  # action ids: parley_feedback_up, parley_feedback_down
# The message metadata every message of an answer carries (its payload names the answer's
# event), so a worker finishing an answer another left can find what that one wrote.
ANSWER_METADATA = "parley_answer"
REPLY_METADATA = "parley_reply"  # what a command's reply carries
LEFTOVER_PAGES = 10  # pages of a thread read for what a dead worker left
SECTION_LIMIT = 3000  # characters of text in one section block
THINKING_STATUS = "is thinking…"
# How long the final edit of a message may wait for chat.update's budget before the piece is
# posted as a new message instead (and the old one deleted under chat.delete's budget).
FINAL_EDIT_PATIENCE = 3.0
EDITS = frozenset({"chat.update"})
# Runs a clean-up (deleting a replaced message) after the answer, without holding it up.
Later = Callable[[Coroutine[Any, Any, None]], None]
# Answers from chat.startStream meaning "this workspace/app/channel cannot stream": fall back.
STREAMING_UNSUPPORTED = frozenset(
    {
        "unknown_method",
        "not_allowed",
        "not_allowed_token_type",
        "method_not_supported_for_channel_type",
        "feature_not_enabled",
        "not_enabled",
        "missing_scope",
        "invalid_arguments",
        "team_not_allowed",
        "user_not_found",
    }
)


def error_code(exc: SlackApiError) -> str:
    """The ``error`` field of a failed Web API answer."""
    try:
        return str(exc.response.get("error") or "unknown")
    except Exception:
        return "unknown"


def describe(exc: BaseException) -> str:
    """A failure in a word or two, never message content: Slack's error code, or the type."""
    return error_code(exc) if isinstance(exc, SlackApiError) else type(exc).__name__


@dataclass(slots=True)
class _Message:
    """One Slack message showing one piece of the answer, and what it shows (as sent)."""

    ts: str
    shown: str
    markdown: bool  # posted as Markdown (a stream) rather than mrkdwn text
    streaming: bool  # the stream is still open


class SlackAnswer:
    """Shows one answer in Slack (a ``core.delivery.Renderer``); always leaves it final.

    ``status`` shows "is thinking…" in an assistant thread while the answer is written.
    ``later`` runs clean-ups that need not hold the answer up (deleting a message a new one
    replaced); without it they run at once.
    """

    def __init__(
        self,
        client: AsyncWebClient,
        target: ReplyTarget,
        *,
        stream: bool,
        status: bool = False,
        limit: int = LIMIT,
        on_streaming_unsupported: Callable[[str], None] | None = None,
        feedback: bool = False,
        later: Later | None = None,
        answers: str = "",
        bot_user_id: str | None = None,
    ) -> None:
        self._client = client
        self._target = target
        self._stream = stream and target.thread_ts is not None
        self._status = status and target.thread_ts is not None
        self._limit = limit
        self._layout = Layout(limit)
        self._on_unsupported = on_streaming_unsupported
        self._messages: list[_Message] = []
        self._status_shown = False
        self._feedback = feedback
        self._later = later
        # The feedback buttons, while the final write of the last piece still has to carry them.
        self._buttons: list[dict[str, Any]] | None = None
        self.finished = False
        # The event this answer answers, named in every message's metadata.
        self._answers = answers
        self._metadata: dict[str, Any] = {
            "event_type": ANSWER_METADATA,
            "event_payload": {"event": answers},
        }
        # Replaced messages still to delete (kept in the record until they are), and when.
        self._stale: list[_Message] = []
        self._retired: asyncio.Future[None] | None = None
        # Resuming: what a stopped worker's answer showed (its record) and the question's ts;
        # taken down before the first write (``resume``). The bot is ``bot_user_id``.
        self._left: tuple[Mapping[str, Any], str | None] | None = None
        self._bot_user_id = bot_user_id

    # --- the Renderer ---------------------------------------------------------------------

    async def start(self) -> None:
        """The core took the message on: the thinking status, and the placeholder when the
        answer will be shown by editing."""
        if self._status:
            self._status_shown = True
            await self._set_status(THINKING_STATUS)
        if not self._stream:
            response = await self._client.chat_postMessage(
                **self._where(), text=THINKING, metadata=self._metadata
            )
            self._messages.append(_Message(str(response["ts"]), THINKING, False, False))

    async def progress(self, text: str) -> None:
        """Show the answer so far; best effort (a failed write is logged and skipped)."""
        if self.finished:
            return
        await self._take_down_leftovers()
        # A "<" at the very end may begin "<!here>", escaped only once its "!" arrives.
        text = text.rstrip("<")
        try:
            pieces = self._layout.pieces(text, final=False)
            for index, piece in enumerate(pieces):
                await self._put(index, piece, done=index < len(pieces) - 1)
        except WriteDeferred:
            pass  # the write budget is tight: a later write shows the text
        except Exception as exc:
            log.warning("slack: showing part of an answer failed (%s); skipped", describe(exc))

    async def finish(self, text: str) -> None:
        """Show the complete answer and close every stream.

        When chat.update's budget cannot take the final edit of a message soon, that piece and
        the ones after it are posted as new messages (chat.postMessage is counted per channel)
        and the messages they replace are retired later, under chat.delete's own budget. A
        piece whose message cannot be written is posted anew too; when even that fails it is
        logged.
        """
        try:
            await self._take_down_leftovers()
            pieces = self._layout.pieces(text, final=True) or [sentences.EMPTY_ANSWER]
            await self._finish_pieces(pieces)
            for stale in self._messages[len(pieces) :]:
                await self._retire(stale)
            del self._messages[len(pieces) :]
        finally:
            self._buttons = None
            await self._end()

    async def _finish_pieces(self, pieces: list[str]) -> None:
        for index, piece in enumerate(pieces):
            if self._feedback and index == len(pieces) - 1:
                self._buttons = feedback_buttons()
            try:
                with waiting_at_most(FINAL_EDIT_PATIENCE, EDITS):
                    await self._put(index, piece, done=True)
            except WriteDeferred:
                log.info("slack: chat.update is busy; posting the final answer anew")
                await self._post_anew(pieces, index)
                return
            except Exception as exc:
                log.warning(
                    "slack: writing the final answer failed (%s); posting it anew", describe(exc)
                )
                if not await self._repost(index, piece):
                    return

    async def fail(self, text: str) -> None:
        """End with ``text`` (the reason, then the notes).

        A placeholder still showing "Thinking…" is replaced by it; partial text that was
        already shown stays, and the sentence follows it in a new message.
        """
        try:
            await self._take_down_leftovers()
            for message in self._messages:
                if message.streaming:
                    await self._stop(message)
            pieces = fit(text, self._limit)
            placeholder = self._messages[0] if self._messages else None
            if placeholder is not None and placeholder.shown == THINKING:
                if await self._try_update(placeholder, pieces[0]):
                    pieces = pieces[1:]
                    placeholder = None
            for piece in pieces:
                await self._post(piece)
            if placeholder is not None and placeholder.shown == THINKING:
                await self._delete(placeholder.ts)
        finally:
            await self._end()

    # --- resuming -------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """What this answer has shown, for another worker to clear if this one dies."""
        messages = [*self._messages, *self._stale]
        return {
            "channel": self._target.channel,
            "messages": [m.ts for m in messages],
            "streams": [m.ts for m in messages if m.streaming],
        }

    async def withdraw(self) -> None:
        """Another worker took this answer over and shows it: take down what this one
        showed (streams closed, messages deleted)."""
        self.finished = True
        for message in [*self._messages, *self._stale]:
            await self._retire(message)
        self._messages, self._stale = [], []
        await self._end()

    async def tidied(self, then: Callable[[], Awaitable[None]]) -> None:
        """Run ``then`` (the answer is shown in full: nothing is left to finish) once the
        messages the final write replaced are deleted; until then a worker finishing this
        answer after a crash takes them down too (they stay in ``record``)."""
        retired = self._retired
        if retired is None or retired.done() or self._later is None:
            await then()
            return

        async def after() -> None:
            await asyncio.shield(retired)
            await then()

        self._later(after())

    def resume(self, record: Mapping[str, Any], since: str | None) -> None:
        """Finish an answer a stopped worker left: before this answer's first write (made
        holding its conversation, so no other answer there is being written), take down what
        that worker wrote after the question (ts ``since``): what its ``record`` names, what
        carries this answer's metadata, and the bot's messages that carry none (a stream it
        opened and did not record). Best effort; each message is looked up first, so only
        what is still there is deleted (chat.delete has a small budget)."""
        self._left = (record, since)

    async def _take_down_leftovers(self) -> None:
        if self._left is None:
            return
        (record, since), self._left = self._left, None
        recorded = [str(ts) for ts in record.get("messages") or ()]
        streams = {str(ts) for ts in record.get("streams") or ()}
        found = None
        if since is not None:
            try:
                found = await self._written_since(since)
            except Exception as exc:
                log.warning("slack: reading what a stopped worker left failed (%s)", describe(exc))
        if found is None:  # not known what is there: what the record names
            leftovers = [(ts, ts in streams) for ts in recorded]
        else:
            mine = {m.ts for m in self._messages}
            leftovers = [
                (str(m.get("ts")), str(m.get("ts")) in streams or "metadata" not in m)
                for m in found
                if str(m.get("ts")) not in mine
                and (str(m.get("ts")) in recorded or self._leftover(m, since or ""))
            ]
        with budget.writing("final"):  # the answer's own writes wait for these
            for ts, stream in leftovers:
                if stream:
                    await self._stop_leftover(ts)
                await self._delete(ts)

    async def _stop_leftover(self, ts: str) -> None:
        try:
            await self._client.chat_stopStream(channel=self._target.channel, ts=ts)
        except Exception as exc:
            log.debug("slack: chat.stopStream of a leftover failed (%s)", describe(exc))

    def _leftover(self, message: Mapping[str, Any], since: str) -> bool:
        """Whether ``message`` is what a dead worker wrote for this answer."""
        if message.get("files") or _ts_key(message.get("ts")) <= _ts_key(since):
            return False
        metadata = message.get("metadata")
        if isinstance(metadata, Mapping):
            payload = metadata.get("event_payload")
            return (
                metadata.get("event_type") == ANSWER_METADATA
                and isinstance(payload, Mapping)
                and payload.get("event") == self._answers
            )
        # Unmarked: only the bot's stream (chat.startStream takes no metadata), in a thread.
        mine = self._bot_user_id is not None and message.get("user") == self._bot_user_id
        return mine and self._target.thread_ts is not None

    async def _written_since(self, since: str) -> list[Mapping[str, Any]]:
        """The messages after ``since`` where this answer goes (its thread, or the channel)."""
        found: list[Mapping[str, Any]] = []
        cursor = None
        channel, thread_ts = self._target.channel, self._target.thread_ts
        for _ in range(LEFTOVER_PAGES):
            asked: dict[str, Any] = {
                "channel": channel,
                "oldest": since,
                "include_all_metadata": True,
            }
            if cursor:
                asked["cursor"] = cursor
            if thread_ts:
                page = await self._client.conversations_replies(ts=thread_ts, **asked)
            else:
                page = await self._client.conversations_history(**asked)
            found += [m for m in page.get("messages") or [] if isinstance(m, Mapping)]
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
        return found

    # --- writing pieces -------------------------------------------------------------------

    def _where(self) -> dict[str, Any]:
        where: dict[str, Any] = {"channel": self._target.channel}
        if self._target.thread_ts:
            where["thread_ts"] = self._target.thread_ts
        return where

    async def _put(self, index: int, piece: str, *, done: bool) -> None:
        """Make message ``index`` show ``piece``: change it, or start it."""
        if index < len(self._messages):
            await self._change(self._messages[index], piece, done=done)
        elif not (self._stream and await self._start_stream(piece, done=done)):
            await self._post(piece)

    async def _post(self, piece: str) -> None:
        text = to_mrkdwn(piece)
        extra = self._text_blocks(text)
        response = await self._client.chat_postMessage(
            **self._where(), text=text, metadata=self._metadata, **extra
        )
        self._sent(extra)
        self._messages.append(_Message(str(response["ts"]), text, False, False))

    async def _change(self, message: _Message, piece: str, *, done: bool) -> None:
        if not message.markdown:
            await self._update(message, to_mrkdwn(piece))
            return
        text = to_markdown_text(piece)
        if message.streaming and text.startswith(message.shown):
            try:
                await self._append(message, text, done=done)
                return
            except SlackApiError as exc:
                # e.g. the stream expired: close it if it is still open, then edit the message.
                log.warning("chat stream failed (%s); editing the message instead", error_code(exc))
        if message.streaming:
            await self._stop(message)
        await self._update(message, text)

    async def _append(self, message: _Message, text: str, *, done: bool) -> None:
        """Add what ``text`` has beyond what the open stream shows; close it when ``done``."""
        delta = text[len(message.shown) :]
        channel = self._target.channel
        if done:
            extra = self._button_blocks()
            await self._client.chat_stopStream(
                channel=channel,
                ts=message.ts,
                markdown_text=delta or None,
                metadata=self._metadata,
                **extra,
            )
            self._sent(extra)
            message.streaming = False
        elif delta:
            await self._client.chat_appendStream(
                channel=channel, ts=message.ts, markdown_text=delta
            )
        message.shown = text

    async def _update(self, message: _Message, text: str) -> None:
        """Replace a message's text (``text`` already converted for its kind)."""
        if message.shown == text and (message.markdown or self._buttons is None):
            return
        channel = self._target.channel
        if message.markdown:
            # Markdown text takes no blocks: such a message goes without the buttons.
            await self._client.chat_update(
                channel=channel, ts=message.ts, markdown_text=text, metadata=self._metadata
            )
        else:
            extra = self._text_blocks(text)
            await self._client.chat_update(
                channel=channel, ts=message.ts, text=text, metadata=self._metadata, **extra
            )
            self._sent(extra)
        message.shown = text

    async def _start_stream(self, piece: str, *, done: bool) -> bool:
        """Open a stream showing ``piece``; False when streaming is not available here."""
        text = to_markdown_text(piece)
        try:
            response = await self._client.chat_startStream(
                channel=self._target.channel,
                thread_ts=str(self._target.thread_ts),
                markdown_text=text,
                recipient_team_id=self._target.team_id or None,
                recipient_user_id=self._target.user_id or None,
            )
        except SlackApiError as exc:
            code = error_code(exc)
            log.info("chat streaming unavailable (%s); answering with chat.update", code)
            self._stream = False
            if code in STREAMING_UNSUPPORTED and self._on_unsupported is not None:
                self._on_unsupported(code)
            return False
        message = _Message(str(response["ts"]), text, markdown=True, streaming=True)
        self._messages.append(message)
        if done:
            await self._stop(message)
        return True

    async def _repost(self, index: int, piece: str) -> bool:
        """Post piece ``index`` as a new message in place of one that could not be written."""
        count = len(self._messages)
        try:
            await self._post(piece)
        except Exception as exc:
            log.error("slack: posting the final answer failed too (%s)", describe(exc))
            return False
        if index < count:
            stale = self._messages[index]
            self._messages[index] = self._messages.pop()
            await self._retire(stale)
        return True

    async def _post_anew(self, pieces: list[str], first: int) -> None:
        """Post pieces ``first``.. as new messages, in order, then retire the messages they
        replace (later, when the adapter gave a way to: the answer is whole already)."""
        stale = self._messages[first:]
        del self._messages[first:]
        for index in range(first, len(pieces)):
            if self._feedback and index == len(pieces) - 1:
                self._buttons = feedback_buttons()
            try:
                await self._post(pieces[index])
            except Exception as exc:
                log.error("slack: posting the final answer failed too (%s)", describe(exc))
                # Keep the messages not replaced: no text is lost.
                self._messages.extend(stale[index - first :])
                stale = stale[: index - first]
                break
        if self._later is None:
            for message in stale:
                await self._retire(message)
            return
        self._stale += stale
        self._retired = asyncio.get_running_loop().create_future()
        self._later(self._retire_stale(self._retired))

    async def _retire_stale(self, done: asyncio.Future[None]) -> None:
        """Delete the messages a final write replaced (in the background: the answer is
        whole already); ``done`` once they are, or once it gave up."""
        try:
            while self._stale:
                await self._retire(self._stale[0])
                del self._stale[0]
        finally:
            if not done.done():
                done.set_result(None)

    async def _try_update(self, message: _Message, piece: str) -> bool:
        try:
            await self._update(message, to_mrkdwn(piece))
        except Exception as exc:
            log.warning("slack: replacing the placeholder failed (%s)", describe(exc))
            return False
        return True

    # --- feedback buttons -----------------------------------------------------------------

    def _button_blocks(self) -> dict[str, Any]:
        """The buttons for the write that closes the answer's last stream, if it is due."""
        return {"blocks": self._buttons} if self._buttons else {}

    def _text_blocks(self, text: str) -> dict[str, Any]:
        """For the answer's last message in mrkdwn: its text as sections, then the buttons."""
        if not self._buttons:
            return {}
        return {"blocks": [*text_sections(text), *self._buttons]}

    def _sent(self, extra: Mapping[str, Any]) -> None:
        """A write carrying the buttons went through: no later write carries them."""
        if "blocks" in extra:
            self._buttons = None

    # --- closing --------------------------------------------------------------------------

    async def _stop(self, message: _Message, *, buttons: bool = True) -> None:
        """Close a stream, best effort (carrying the buttons if they are due and ``buttons``)."""
        message.streaming = False
        extra = self._button_blocks() if buttons else {}
        try:
            await self._client.chat_stopStream(
                channel=self._target.channel, ts=message.ts, metadata=self._metadata, **extra
            )
            self._sent(extra)
        except Exception as exc:
            log.warning("chat.stopStream failed (%s)", describe(exc))

    async def _retire(self, message: _Message) -> None:
        """A message the answer no longer lives in: close its stream, delete it."""
        if message.streaming:
            await self._stop(message, buttons=False)
        await self._delete(message.ts)

    async def _delete(self, ts: str) -> None:
        """Delete a message, best effort."""
        try:
            await self._client.chat_delete(channel=self._target.channel, ts=ts)
        except Exception as exc:
            log.warning("slack: deleting a stale message failed (%s)", describe(exc))

    async def _end(self) -> None:
        self.finished = True
        if self._status_shown:
            self._status_shown = False
            await self._set_status("")

    async def _set_status(self, status: str) -> None:
        """The assistant thread's status line, best effort."""
        try:
            await self._client.assistant_threads_setStatus(
                channel_id=self._target.channel,
                thread_ts=str(self._target.thread_ts),
                status=status,
            )
        except Exception as exc:
            log.debug("slack: assistant.threads.setStatus failed (%s)", describe(exc))


def _ts_key(ts: Any) -> tuple[int, int]:
    """A Slack ts as a number that sorts (a malformed one sorts first)."""
    seconds, _, fraction = str(ts or "").partition(".")
    if not seconds.isdigit() or not (fraction.isdigit() or not fraction):
        return (0, 0)
    return (int(seconds), int(fraction.ljust(6, "0")[:6]))


def feedback_buttons() -> list[dict[str, Any]]:
    """The 👍/👎 buttons under an answer (block actions ``parley_feedback_up``/``_down``)."""
    return [
        {
            "type": "actions",
            "block_id": FEEDBACK_ACTION,
            "elements": [
                {
                    "type": "button",
                    "action_id": f"{FEEDBACK_ACTION}_{kind}",
                    "text": {"type": "plain_text", "text": label, "emoji": True},
                    "value": kind,
                }
                for kind, label in (("up", "👍 Helpful"), ("down", "👎 Not helpful"))
            ],
        }
    ]


def text_sections(text: str) -> list[dict[str, Any]]:
    """Mrkdwn ``text`` as section blocks (a message with blocks shows them, not its text),
    cut at line ends to fit a section."""
    sections: list[dict[str, Any]] = []
    rest = text
    while rest:
        cut = len(rest) if len(rest) <= SECTION_LIMIT else rest.rfind("\n", 0, SECTION_LIMIT)
        if cut <= 0:
            cut = SECTION_LIMIT
        sections.append({"type": "section", "text": {"type": "mrkdwn", "text": rest[:cut]}})
        rest = rest[cut:].lstrip("\n")
    return sections


__all__ = [
    "ANSWER_METADATA",
    "LIMIT",
    "REPLY_METADATA",
    "ReplyTarget",
    "SlackAnswer",
    "THINKING",
    "THINKING_STATUS",
    "describe",
    "feedback_buttons",
    "error_code",
]
