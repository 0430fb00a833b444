"""SQLAlchemy tables for Parley's state. Schema changes go through Alembic migrations."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Model ids as servers list them (a llama.cpp server's id is a file path).
MODEL_ID_CHARS = 300

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
BigId = BigInteger().with_variant(Integer(), "sqlite")


# What no text column can hold: NUL (PostgreSQL refuses it in text) and lone surrogates
# (not encodable as UTF-8, e.g. from a "\ud800" escape in a platform's JSON).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


# Finds what ``storable`` changes in a text (None: the text is stored as it is).
unstorable = _UNSTORABLE.search


def storable(value: str) -> str:
    """``value`` as every database can store it: NUL dropped, lone surrogates replaced."""
    if not _UNSTORABLE.search(value):
        return value
    return _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", value)


class CleanString(TypeDecorator[str]):
    """A VARCHAR that stores any Python string (see ``storable``), the same on every database."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return storable(value) if isinstance(value, str) else value


class CleanText(CleanString):
    """A TEXT column that stores any Python string (see ``storable``)."""

    impl = Text
    cache_ok = True


class Base(DeclarativeBase):
    pass


class ChannelSettingsRow(Base):
    """Per-channel overrides of the configured defaults; NULL means "use the default"."""

    __tablename__ = "channel_settings"
    __table_args__ = (UniqueConstraint("platform", "workspace", "channel"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    platform: Mapped[str] = mapped_column(CleanString(32))
    workspace: Mapped[str] = mapped_column(CleanString(64))
    channel: Mapped[str] = mapped_column(CleanString(64))
    system_prompt: Mapped[str | None] = mapped_column(CleanText, nullable=True)
    model: Mapped[str | None] = mapped_column(CleanString(MODEL_ID_CHARS), nullable=True)
    temperature: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    json_mode: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class ConversationRow(Base):
    """A conversation (a channel, or a thread in it) and its rolling summary."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("platform", "workspace", "channel", "thread"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    platform: Mapped[str] = mapped_column(CleanString(32))
    workspace: Mapped[str] = mapped_column(CleanString(64))
    channel: Mapped[str] = mapped_column(CleanString(64))
    thread: Mapped[str] = mapped_column(CleanString(64), default="")
    summary: Mapped[str] = mapped_column(CleanText, default="")
    summary_tokens: Mapped[int] = mapped_column(Integer, default=0)
    # Messages with id <= context_start are folded into the summary or dropped.
    context_start: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class MessageRow(Base):
    """One turn of a conversation with its token count, counted once when stored."""

    __tablename__ = "messages"
    # Every read of a conversation's turns walks it in conversation order.
    __table_args__ = (Index("ix_messages_conversation_order", "conversation_id", "sent_at", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("conversations.id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(CleanString(16))
    author_id: Mapped[str] = mapped_column(CleanString(64), default="")
    author_name: Mapped[str] = mapped_column(CleanString(100), default="")
    content: Mapped[str] = mapped_column(CleanText)
    token_count: Mapped[int] = mapped_column(Integer)
    # "complete" turns form the context; "failed" answers are kept for the record only.
    status: Mapped[str] = mapped_column(CleanString(16), default="complete")
    model: Mapped[str | None] = mapped_column(CleanString(MODEL_ID_CHARS), nullable=True)
    # When the platform says the message was sent, in microseconds since 1970 (an answer takes
    # its question's): a conversation is ordered by (sent_at, id), not by arrival.
    sent_at: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class UsageRow(Base):
    """Tokens and cost of one model call, charged to a channel and a user."""

    __tablename__ = "usage_ledger"
    __table_args__ = (
        Index("ix_usage_channel", "platform", "workspace", "channel"),
        Index("ix_usage_user", "platform", "user_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    platform: Mapped[str] = mapped_column(CleanString(32))
    workspace: Mapped[str] = mapped_column(CleanString(64))
    channel: Mapped[str] = mapped_column(CleanString(64))
    user_id: Mapped[str] = mapped_column(CleanString(64))
    model: Mapped[str] = mapped_column(CleanString(MODEL_ID_CHARS))
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    # NULL: no price known for the model; ``estimated``: Parley counted the tokens itself
    cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    estimated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ProcessedEventRow(Base):
    """Platform delivery ids already handled, so a redelivery is dropped even after a restart."""

    __tablename__ = "processed_events"
    __table_args__ = (
        UniqueConstraint("platform", "event_id"),
        Index("ix_processed_events_created_at", "created_at"),
        Index("ix_processed_events_waiting", "conversation", "state"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    platform: Mapped[str] = mapped_column(CleanString(32))
    event_id: Mapped[str] = mapped_column(CleanString(128))
    # received → answering → answered | failed; a claim left unfinished by a worker that died
    # (its ``holder`` no longer holds a live worker lease) may be taken over by a redelivery.
    state: Mapped[str] = mapped_column(
        CleanString(16), default="answered", server_default="answered"
    )
    holder: Mapped[str] = mapped_column(CleanString(64), default="", server_default="")
    # What finishing it after its worker died takes: the question as the core got it and
    # where it is answered (JSON), what the answer has shown so far (the adapter's record,
    # JSON), the stored question and, once stored, the answer.
    request: Mapped[str | None] = mapped_column(CleanText, nullable=True)
    delivery: Mapped[str | None] = mapped_column(CleanText, nullable=True)
    question_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    answer_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The conversation it asks in and when the platform says it was sent: questions waiting
    # for the same conversation take their turns in that order, whichever worker has them.
    conversation: Mapped[str | None] = mapped_column(CleanString(300), nullable=True)
    sent_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LeaseRow(Base):
    """Who holds a name (a conversation, or a worker's own liveness) until when.

    A conversation's turns run one at a time across workers by holding its lease; nothing
    holds a database connection meanwhile. ``until`` is microseconds since 1970 and is
    renewed by the holder's heartbeat, so a lease of a worker that died expires on its own.
    """

    __tablename__ = "leases"
    __table_args__ = (Index("ix_leases_holder", "holder"),)

    name: Mapped[str] = mapped_column(CleanString(300), primary_key=True)
    holder: Mapped[str] = mapped_column(CleanString(64))
    until: Mapped[int] = mapped_column(BigInteger)


class ChannelMemoryRow(Base):
    """A fact a channel remembers (``remember``): included in every prompt of that channel."""

    __tablename__ = "channel_memory"
    __table_args__ = (Index("ix_channel_memory_channel", "platform", "workspace", "channel", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    platform: Mapped[str] = mapped_column(CleanString(32))
    workspace: Mapped[str] = mapped_column(CleanString(64))
    channel: Mapped[str] = mapped_column(CleanString(64))
    text: Mapped[str] = mapped_column(CleanText)
    author_id: Mapped[str] = mapped_column(CleanString(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class FeedbackRow(Base):
    """A person's rating of one answer (a platform's feedback buttons): one per person and
    answer, the latest click wins. ``message_id`` is the platform's id of the answer."""

    __tablename__ = "answer_feedback"
    __table_args__ = (
        UniqueConstraint("platform", "workspace", "channel", "message_id", "user_id"),
        Index("ix_answer_feedback_channel", "platform", "workspace", "channel"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    platform: Mapped[str] = mapped_column(CleanString(32))
    workspace: Mapped[str] = mapped_column(CleanString(64))
    channel: Mapped[str] = mapped_column(CleanString(64))
    message_id: Mapped[str] = mapped_column(CleanString(64))
    user_id: Mapped[str] = mapped_column(CleanString(64))
    helpful: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class InstallationRow(Base):
    """A platform app installed into a workspace through OAuth (Slack): the platform's own
    record of it, as JSON, one row per workspace (the latest installation)."""

    __tablename__ = "platform_installations"
    __table_args__ = (UniqueConstraint("platform", "enterprise_id", "team_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    platform: Mapped[str] = mapped_column(CleanString(32))
    enterprise_id: Mapped[str] = mapped_column(CleanString(64), default="")
    team_id: Mapped[str] = mapped_column(CleanString(64), default="")
    data: Mapped[str] = mapped_column(CleanText)
    installed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class OAuthStateRow(Base):
    """A state handed to a browser starting an OAuth install, usable once until ``expires``
    (seconds since 1970)."""

    __tablename__ = "oauth_states"

    state: Mapped[str] = mapped_column(CleanString(128), primary_key=True)
    platform: Mapped[str] = mapped_column(CleanString(32))
    expires: Mapped[int] = mapped_column(BigInteger, index=True)
