"""Render out: one answer from the core becomes one or more Slack messages in a thread.

Two ways to show an answer growing:

- streaming (primary): ``chat.startStream`` / ``chat.appendStream`` / ``chat.stopStream`` with
  Markdown, which Slack renders itself;
- editing (fallback, and top-level DM answers, which streaming cannot address): a
  "Thinking…" placeholder from ``chat.postMessage``, then ``chat.update`` with mrkdwn.

Either way the answer is cut into pieces of at most ``LIMIT`` characters with
``core.splitting.split_message``; each piece is its own message, so a long answer continues in
further thread replies. Pieces before the last never change once a later one exists.

Writes while the answer grows are best effort: a failed one is logged and skipped, and the next
snapshot (or the final write) shows the text. A failed final write is posted as a new message
instead, so an answer never stays "Thinking…" or half written while Slack still accepts posts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.mrkdwn import to_mrkdwn
from core.splitting import split_message

log = logging.getLogger("parley.slack")

LIMIT = 3900
THINKING = "_Thinking…_"
EMPTY_ANSWER = "_(empty answer)_"
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


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where an answer goes. ``thread_ts`` None means the top level of a DM."""

    channel: str
    thread_ts: str | None
    team_id: str
    user_id: str


@dataclass(slots=True)
class _Posted:
    """One Slack message showing one piece of the answer."""

    ts: str
    shown: str
    markdown: bool  # posted as Markdown (a stream) rather than mrkdwn text
    streaming: bool  # the stream is still open


class SlackReply:
    """Shows one answer in Slack and always leaves it in a final state (answer or message)."""

    def __init__(
        self,
        client: AsyncWebClient,
        target: ReplyTarget,
        *,
        stream: bool,
        limit: int = LIMIT,
        on_streaming_unsupported: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        self._target = target
        self._stream = stream and target.thread_ts is not None
        self._limit = limit
        self._on_unsupported = on_streaming_unsupported
        self._posted: list[_Posted] = []
        self._placeholder: str | None = None
        self._notes: list[str] = []
        self.finished = False

    # --- what the adapter calls -----------------------------------------------------------

    async def begin(self) -> None:
        """Post the placeholder when the answer will be shown by editing."""
        if not self._stream:
            response = await self._client.chat_postMessage(**self._where(), text=THINKING)
            self._placeholder = str(response["ts"])

    def note(self, text: str) -> None:
        """Remember a remark to show above the answer (e.g. a file that was not read)."""
        self._notes.append(text)

    async def show(self, text: str) -> None:
        """Show the answer so far (a snapshot); ignored once the answer is final.

        Best effort: a failed write is logged and skipped (the next snapshot or the final write
        shows the text), so one failed ``chat.update`` or ``appendStream`` never ends the answer.
        """
        if self.finished:
            return
        try:
            await self._render(self._compose(text))
        except Exception as exc:
            log.warning("slack: showing part of an answer failed (%s); skipped", describe(exc))

    async def finish(self, text: str) -> None:
        """Show the complete answer and close every stream.

        A piece whose message cannot be written is posted as a new message instead (and the
        stale one deleted); when even that fails it is logged.
        """
        answer = text if text.strip() else EMPTY_ANSWER
        pieces = split_message(self._compose(answer), self._limit)
        for index, piece in enumerate(pieces):
            try:
                await self._put(index, piece, done=True)
            except Exception as exc:
                log.warning(
                    "slack: writing the final answer failed (%s); posting it anew", describe(exc)
                )
                if not await self._repost(index, piece):
                    break
        for posted in self._posted[len(pieces) :]:
            if posted.streaming:
                await self._stop(posted)
        self.finished = True

    async def fail(self, sentence: str) -> None:
        """End with ``sentence`` (a core ``UserError`` or a generic apology).

        A placeholder still showing "Thinking…" is replaced by the message; partial text that
        was already shown stays, and the message follows it.
        """
        warning = self._compose(f":warning: {sentence}")
        for posted in self._posted:
            if posted.streaming:
                await self._stop(posted)
        stale: str | None = None
        if self._placeholder is not None and (not self._posted or not self._posted[0].shown):
            try:
                await self._client.chat_update(
                    channel=self._target.channel, ts=self._placeholder, text=to_mrkdwn(warning)
                )
            except Exception as exc:
                log.warning("slack: replacing the placeholder failed (%s)", describe(exc))
                stale = self._placeholder
            else:
                self._posted[:1] = [_Posted(self._placeholder, warning, False, False)]
                self.finished = True
                return
        for piece in split_message(warning, self._limit):
            await self._client.chat_postMessage(**self._where(), text=to_mrkdwn(piece))
        if stale is not None:
            await self._delete(stale)
        self.finished = True

    async def close(self, fallback_sentence: str) -> None:
        """Make sure nothing is left open or "Thinking…" when the answer stream ended early."""
        if not self.finished:
            await self.fail(fallback_sentence)

    # --- rendering ------------------------------------------------------------------------

    def _compose(self, answer: str) -> str:
        if not self._notes:
            return answer
        notes = "\n".join(f"_{note}_" for note in self._notes)
        return f"{notes}\n\n{answer}"

    def _where(self) -> dict[str, Any]:
        where: dict[str, Any] = {"channel": self._target.channel}
        if self._target.thread_ts:
            where["thread_ts"] = self._target.thread_ts
        return where

    async def _render(self, text: str) -> None:
        """Show a snapshot; stops at the first failed write so pieces stay in order."""
        pieces = split_message(text, self._limit) if text.strip() else []
        for index, piece in enumerate(pieces):
            await self._put(index, piece, done=index < len(pieces) - 1)

    async def _put(self, index: int, piece: str, *, done: bool) -> None:
        if index < len(self._posted):
            await self._change(self._posted[index], piece, done=done)
            return
        if index == 0 and self._placeholder is not None:
            posted = _Posted(self._placeholder, "", markdown=False, streaming=False)
            self._posted.append(posted)
            await self._update(posted, piece)
            return
        if self._stream and await self._start_stream(piece, done=done):
            return
        response = await self._client.chat_postMessage(**self._where(), text=to_mrkdwn(piece))
        self._posted.append(_Posted(str(response["ts"]), piece, markdown=False, streaming=False))

    async def _change(self, posted: _Posted, piece: str, *, done: bool) -> None:
        if posted.streaming and piece.startswith(posted.shown):
            delta = piece[len(posted.shown) :]
            try:
                if done:
                    await self._client.chat_stopStream(
                        channel=self._target.channel, ts=posted.ts, markdown_text=delta or None
                    )
                    posted.streaming = False
                elif delta:
                    await self._client.chat_appendStream(
                        channel=self._target.channel, ts=posted.ts, markdown_text=delta
                    )
                posted.shown = piece
                return
            except SlackApiError as exc:
                # e.g. the stream expired: close it if it is still open, then edit the message.
                log.warning("chat stream failed (%s); editing the message instead", error_code(exc))
                await self._stop(posted)
        elif posted.streaming:
            await self._stop(posted)
        if posted.shown != piece:
            await self._update(posted, piece)

    async def _start_stream(self, piece: str, *, done: bool) -> bool:
        """Open a stream showing ``piece``; False when streaming is not available here."""
        try:
            response = await self._client.chat_startStream(
                channel=self._target.channel,
                thread_ts=str(self._target.thread_ts),
                markdown_text=piece,
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
        posted = _Posted(str(response["ts"]), piece, markdown=True, streaming=True)
        self._posted.append(posted)
        if done:
            await self._stop(posted)
        return True

    async def _stop(self, posted: _Posted) -> None:
        """Close a stream, best effort."""
        posted.streaming = False
        try:
            await self._client.chat_stopStream(channel=self._target.channel, ts=posted.ts)
        except Exception as exc:
            log.warning("chat.stopStream failed (%s)", describe(exc))

    async def _delete(self, ts: str) -> None:
        """Delete a message the answer no longer lives in, best effort."""
        try:
            await self._client.chat_delete(channel=self._target.channel, ts=ts)
        except Exception as exc:
            log.warning("slack: deleting a stale message failed (%s)", describe(exc))

    async def _repost(self, index: int, piece: str) -> bool:
        """Post piece ``index`` as a new message in place of one that could not be written."""
        try:
            response = await self._client.chat_postMessage(**self._where(), text=to_mrkdwn(piece))
        except Exception as exc:
            log.error("slack: posting the final answer failed too (%s)", describe(exc))
            return False
        posted = _Posted(str(response["ts"]), piece, markdown=False, streaming=False)
        if index < len(self._posted):
            stale, self._posted[index] = self._posted[index], posted
            if stale.streaming:
                await self._stop(stale)
            await self._delete(stale.ts)
        else:
            self._posted.append(posted)
        return True

    async def _update(self, posted: _Posted, piece: str) -> None:
        if posted.markdown:
            await self._client.chat_update(
                channel=self._target.channel, ts=posted.ts, markdown_text=piece
            )
        else:
            await self._client.chat_update(
                channel=self._target.channel, ts=posted.ts, text=to_mrkdwn(piece)
            )
        posted.shown = piece


__all__ = [
    "EMPTY_ANSWER",
    "LIMIT",
    "ReplyTarget",
    "SlackReply",
    "THINKING",
    "describe",
    "error_code",
]
