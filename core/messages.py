"""Platform-neutral messages: who said what, where, and the reply events the core emits.

Adapters translate platform events into these types and render the reply events back; nothing
here knows about Slack, Discord or the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal


@dataclass(frozen=True, slots=True)
class ChannelKey:
    """A channel on a platform: settings and the usage ledger are kept per channel."""

    platform: str
    workspace: str
    channel: str


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """Where a conversation lives: a channel, and optionally a thread inside it.

    A thread inherits its channel's settings; its history is its own.
    """

    platform: str
    workspace: str
    channel: str
    thread: str = ""

    @property
    def channel_key(self) -> ChannelKey:
        return ChannelKey(self.platform, self.workspace, self.channel)

    def __str__(self) -> str:
        base = f"{self.platform}:{self.workspace}:{self.channel}"
        return f"{base}:{self.thread}" if self.thread else base


@dataclass(frozen=True, slots=True)
class Author:
    """The person who sent a message, as the platform identifies them."""

    id: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file that came with a message, already downloaded by the adapter.

    ``kind`` is "image" (sent to the model as an image input), "text" (inlined into the prompt)
    or "other" (not read; the core tells the user so).
    """

    name: str
    mime_type: str
    data: bytes
    kind: Literal["image", "text", "other"] = "other"


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message addressed to the bot.

    ``event_id`` is the platform's id for the delivery; when given, the core answers it once
    even if the platform delivers it again (also across restarts). ``sent_at`` is when the
    platform says the message was sent (Slack's ``ts``, a Discord snowflake's time, timezone
    aware): a conversation's turns are kept in that order, whichever worker got them first;
    without it the time the core receives the message counts.
    """

    key: ConversationKey
    author: Author
    text: str
    attachments: tuple[Attachment, ...] = ()
    event_id: str | None = None
    notes: tuple[str, ...] = field(default=())
    sent_at: datetime | None = None
    # Where the adapter shows the answer (its own words: channel, thread...), kept with the
    # claim so another worker can finish the answer in the same place if this one dies.
    reply_to: tuple[tuple[str, str], ...] = ()


# --- reply events -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """The core took the message on (it is new and within limits); an answer or a sentence
    follows. Adapters show that an answer is coming (a placeholder, a status) on this event,
    so a redelivered message, which yields no events at all, writes nothing."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer as the model writes it."""

    text: str


@dataclass(frozen=True, slots=True)
class FinalText:
    """The whole answer, once complete. Adapters render this as the final message."""

    text: str
    model: str


@dataclass(frozen=True, slots=True)
class UsageReport:
    """Tokens and cost of one answer: ``cost_usd`` is None when the model has no known price,
    ``estimated`` when some tokens were counted by Parley because the server did not say."""

    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class Notice:
    """A short remark for the user that is not part of the answer (e.g. a file was not read)."""

    text: str


@dataclass(frozen=True, slots=True)
class UserError:
    """The request ended without an answer; ``text`` is the sentence to show the user."""

    text: str
    code: str = "error"


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """The answer was taken over by another worker (``ClaimLost``), which shows it: what this
    one showed comes down, and nothing more is written."""


ReplyEvent = Accepted | TextDelta | FinalText | UsageReport | Notice | UserError | Withdrawn


@dataclass(frozen=True, slots=True)
class AudioFile:
    """A sound file a command made (``speak``), for the adapter to upload where it was asked:
    ``name`` ends with the extension that matches ``mime_type``."""

    name: str
    mime_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class CommandReply:
    """What a command answers. ``private`` replies are shown only to the person who asked,
    where the platform can do that. ``redelivered`` replies (a command the platform delivered
    again) are not shown at all. ``audio``, when given, goes with the text (an upload)."""

    text: str
    private: bool = False
    ok: bool = True
    redelivered: bool = False
    audio: AudioFile | None = None
