"""Translate in: Slack event payloads to the core's types.

Where a Slack message lives in the core:

- channel mention: ``ConversationKey("slack", team, channel, thread_ts or ts)``; the answer
  goes in the thread under the message, so the thread is the conversation;
- direct message at the top level: ``thread=""``, the whole DM is one conversation and the
  answer is posted in the DM itself;
- direct message inside a thread (including assistant threads): ``thread=thread_ts``.

Everything here is pure: a payload in, a core message (or a reason to ignore it) out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from adapters.slack.mrkdwn import to_plain
from core.messages import Attachment, Author, ConversationKey, Inbound

PLATFORM = "slack"
# Message subtypes that are still a person talking; every other subtype is ignored.
ANSWERABLE_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
DIRECT = "im"


Route = Literal["answer", "ignore", "if followed"]
SummarySource = Literal["thread", "channel", "stored"]


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where an answer goes. ``thread_ts`` None means the top level of a DM."""

    channel: str
    thread_ts: str | None
    team_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class SlackMessage:
    """A message event in the shape the adapter works with."""

    team: str
    channel: str
    channel_type: str
    user: str
    user_name: str
    ts: str
    thread_ts: str | None
    text: str
    files: tuple[Mapping[str, Any], ...]

    @property
    def direct(self) -> bool:
        return self.channel_type == DIRECT

    @property
    def thread_reply(self) -> bool:
        """A reply inside a thread (not the thread's parent)."""
        return self.thread_ts is not None and self.thread_ts != self.ts

    @property
    def key(self) -> ConversationKey:
        if self.direct:
            return ConversationKey(PLATFORM, self.team, self.channel, self.thread_ts or "")
        return ConversationKey(PLATFORM, self.team, self.channel, self.thread_ts or self.ts)

    @property
    def reply_thread(self) -> str | None:
        """Where the answer goes: a thread ts, or None for the top level of a DM."""
        if self.direct:
            return self.thread_ts
        return self.thread_ts or self.ts

    @property
    def author(self) -> Author:
        return Author(self.user, self.user_name)

    @property
    def sent_at(self) -> datetime | None:
        """When Slack says the message was sent (its ``ts``), which orders the turns."""
        return time_of(self.ts)

    @property
    def dedupe_id(self) -> str:
        """One id per Slack message, shared by its retries and by its app_mention/message pair."""
        return f"msg:{self.team}:{self.channel}:{self.ts}"

    @property
    def target(self) -> ReplyTarget:
        return ReplyTarget(self.channel, self.reply_thread, self.team, self.user)

    @property
    def status(self) -> bool:
        """Whether the answer shows a thinking status: in a DM thread (assistant threads)."""
        return self.direct and self.thread_ts is not None

    @property
    def summary_source(self) -> SummarySource:
        """What ``summarize`` typed here covers: the thread, the channel, or (at the top level
        of a DM) the stored conversation."""
        if self.thread_ts is not None and (self.thread_reply or self.direct):
            return "thread"
        return "stored" if self.direct else "channel"

    def mentions(self, user_id: str | None) -> bool:
        return bool(user_id) and f"<@{user_id}" in self.text

    def text_for(self, bot_user_id: str | None) -> str:
        """The message as the model reads it: plain text, without the mention of the bot."""
        return to_plain(self.text, bot_user_id)

    def inbound(
        self, text: str, attachments: tuple[Attachment, ...] = (), notes: tuple[str, ...] = ()
    ) -> Inbound:
        """The core message; its ``event_id`` lets the core answer it once, however often
        Slack delivers it."""
        return Inbound(
            self.key,
            self.author,
            text,
            attachments=attachments,
            event_id=self.dedupe_id,
            notes=notes,
            sent_at=self.sent_at,
            reply_to=reply_place(self.target, status=self.status),
        )


def reply_place(target: ReplyTarget, *, status: bool) -> tuple[tuple[str, str], ...]:
    """Where an answer goes, as the core keeps it with the claim (``Inbound.reply_to``)."""
    return (
        ("channel", target.channel),
        ("thread_ts", target.thread_ts or ""),
        ("team_id", target.team_id),
        ("user_id", target.user_id),
        ("status", "1" if status else ""),
    )


def reply_target(place: Mapping[str, str]) -> tuple[ReplyTarget, bool]:
    """The target (and whether it shows a status) ``reply_place`` kept."""
    target = ReplyTarget(
        place.get("channel", ""),
        place.get("thread_ts") or None,
        place.get("team_id", ""),
        place.get("user_id", ""),
    )
    return target, bool(place.get("status"))


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ts_of(moment: datetime) -> str:
    """The Slack ts of ``moment`` (``time_of`` backwards)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    since = moment - EPOCH
    micros = since.days * 86_400_000_000 + since.seconds * 1_000_000 + since.microseconds
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def time_of(ts: str) -> datetime | None:
    """A Slack ``ts`` ("1700000000.000123": seconds, then microseconds) as an exact UTC time,
    without going through a float; None when it is not one."""
    seconds, _, fraction = ts.partition(".")
    if not seconds.isdigit() or not (fraction.isdigit() or fraction == "") or len(fraction) > 6:
        return None
    micros = int(fraction.ljust(6, "0"))
    return datetime.fromtimestamp(int(seconds), UTC) + timedelta(microseconds=micros)


def route(
    message: SlackMessage, *, mention: bool, bot_user_id: str | None, follow_threads: bool
) -> Route:
    """Whether to answer a checked message: mentions and DMs always; in channels a plain reply
    only in a thread Parley answered in (``"if followed"``), when following is on."""
    if mention or message.direct:
        return "answer"
    # A channel message mentioning the bot also comes as app_mention, which answers it.
    if message.mentions(bot_user_id) or not message.thread_reply or not follow_threads:
        return "ignore"
    return "if followed"


def ignore_reason(
    event: Mapping[str, Any], bot_user_id: str | None, bot_id: str | None
) -> str | None:
    """Why a message-like event must not be answered, or None when it should be."""
    if not well_typed(event):
        return "malformed event"
    if event.get("subtype") not in ANSWERABLE_SUBTYPES:
        return "subtype"
    if event.get("hidden"):
        return "hidden"
    if bot_id and event.get("bot_id") == bot_id:
        return "own message"
    if event.get("bot_id") or event.get("bot_profile"):
        return "bot message"
    user = event.get("user")
    if not user:
        return "no user"
    if bot_user_id and user == bot_user_id:
        return "own message"
    if not event.get("channel") or not event.get("ts"):
        return "incomplete event"
    return None


# The fields a message is read from and the types Slack sends them as (None: absent).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "subtype": (str, type(None)),
    "user": (str, type(None)),
    "bot_id": (str, type(None)),
    "channel": (str, type(None)),
    "channel_type": (str, type(None)),
    "ts": (str, type(None)),
    "thread_ts": (str, type(None)),
    "text": (str, type(None)),
    "files": (list, type(None)),
    "user_profile": (dict, type(None)),
}


_SLACK_ID = re.compile(r"[A-Z][A-Z0-9]{1,40}")


def well_typed(event: Mapping[str, Any]) -> bool:
    """Whether the fields a message is read from have the types Slack sends, its ids look like
    Slack ids and its timestamps like Slack timestamps (a signed event can still carry
    anything: it is then skipped, not half read)."""
    if not all(isinstance(event.get(name), kinds) for name, kinds in _FIELD_TYPES.items()):
        return False
    ids = [event.get("user"), event.get("channel")]
    stamps = [event.get("ts"), event.get("thread_ts")]
    return all(v is None or _SLACK_ID.fullmatch(v) for v in ids) and all(
        v is None or time_of(v) is not None for v in stamps
    )


def display_name(user: Mapping[str, Any]) -> str:
    """The name people see for a ``users.info`` user: their display name, else their full
    name, else their handle ("" when Slack gives none)."""
    profile = user.get("profile")
    places = [profile] if isinstance(profile, Mapping) else []
    for place, field in [
        *((p, f) for p in places for f in ("display_name", "real_name")),
        (user, "real_name"),
        (user, "name"),
    ]:
        value = str(place.get(field) or "").strip()
        if value:
            return value
    return ""


def _user_name(event: Mapping[str, Any]) -> str:
    profile = event.get("user_profile")
    if isinstance(profile, Mapping):
        for field in ("display_name", "real_name", "name"):
            if profile.get(field):
                return str(profile[field])
    return ""


def channel_type(event: Mapping[str, Any]) -> str:
    """``channel_type`` of the event; app_mention events lack it, so it is guessed from the id."""
    kind = event.get("channel_type")
    if kind:
        return str(kind)
    channel = str(event.get("channel") or "")
    if channel.startswith("D"):
        return DIRECT
    return "group" if channel.startswith("G") else "channel"


def parse_message(body: Mapping[str, Any], event: Mapping[str, Any]) -> SlackMessage:
    """Read a (checked) message or app_mention event."""
    team = str(body.get("team_id") or event.get("team") or "")
    files = event.get("files") or ()
    return SlackMessage(
        team=team,
        channel=str(event["channel"]),
        channel_type=channel_type(event),
        user=str(event["user"]),
        user_name=_user_name(event),
        ts=str(event["ts"]),
        thread_ts=str(event["thread_ts"]) if event.get("thread_ts") else None,
        text=str(event.get("text") or ""),
        files=tuple(f for f in files if isinstance(f, Mapping)),
    )


@dataclass(frozen=True, slots=True)
class SlashCommand:
    """``/parley <name> <args>`` as the core runs it. Slack does not say in which thread a
    slash command was typed, so it acts on the channel's top-level conversation."""

    key: ConversationKey
    author: Author
    name: str
    args: str
    response_url: str

    @property
    def direct(self) -> bool:
        return self.key.channel.startswith("D")

    @property
    def summary_source(self) -> SummarySource:
        return "stored" if self.direct else "channel"


def parse_slash(body: Mapping[str, Any], team_id: str | None) -> SlashCommand:
    """Read a slash command payload; the command word and its arguments go to the core as typed
    (the core resolves aliases and reads the arguments)."""
    name, _, args = str(body.get("text") or "").strip().partition(" ")
    team = str(body.get("team_id") or team_id or "")
    channel = str(body.get("channel_id") or "")
    return SlashCommand(
        key=ConversationKey(PLATFORM, team, channel),
        author=Author(str(body.get("user_id") or ""), str(body.get("user_name") or "")),
        name=name or "help",
        args=args,
        response_url=str(body.get("response_url") or ""),
    )


def transcript(messages: list[Mapping[str, Any]], bot_user_id: str | None, skip_ts: str) -> str:
    """Slack messages (oldest first) as "name: text" lines for a summary."""
    lines = []
    for message in messages:
        if message.get("ts") == skip_ts or message.get("subtype") not in ANSWERABLE_SUBTYPES | {
            "bot_message"
        }:
            continue
        text = to_plain(str(message.get("text") or ""))
        if not text:
            continue
        if bot_user_id and message.get("user") == bot_user_id:
            name = "Parley"
        else:
            name = _user_name(message) or str(
                message.get("user") or message.get("username") or "bot"
            )
        lines.append(f"{name}: {text}")
    return "\n".join(lines)
