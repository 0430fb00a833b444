"""Slack events to core types: where a message's conversation lives, and what is ignored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.slack.files import FileFetcher, offer
from adapters.slack.translate import (
    ignore_reason,
    parse_message,
    parse_slash,
    route,
    time_of,
    transcript,
)
from core.attachments import AttachmentPolicy, FileOffer, kind_of
from core.messages import Author, ConversationKey

BODY = {"team_id": "T1"}


def event(**fields: Any) -> dict[str, Any]:
    return {
        "type": "message",
        "user": "UALICE",
        "text": "hi",
        "ts": "10.0",
        "channel": "C1",
        **fields,
    }


def test_channel_mention_is_a_thread_conversation_answered_under_the_message() -> None:
    m = parse_message(BODY, event(type="app_mention"))
    assert m.key == ConversationKey("slack", "T1", "C1", "10.0")
    assert m.reply_thread == "10.0"


def test_mention_inside_a_thread_joins_that_thread() -> None:
    m = parse_message(BODY, event(type="app_mention", thread_ts="5.0"))
    assert m.key == ConversationKey("slack", "T1", "C1", "5.0")
    assert m.reply_thread == "5.0" and m.thread_reply


def test_direct_messages_share_one_conversation_at_the_top_level() -> None:
    m = parse_message(BODY, event(channel="D1", channel_type="im"))
    assert m.key == ConversationKey("slack", "T1", "D1", "")
    assert m.reply_thread is None and m.direct


def test_direct_message_threads_are_their_own_conversation() -> None:
    m = parse_message(BODY, event(channel="D1", channel_type="im", thread_ts="7.0", ts="8.0"))
    assert m.key == ConversationKey("slack", "T1", "D1", "7.0")
    assert m.reply_thread == "7.0"


def test_a_mention_and_its_message_event_share_one_dedupe_id() -> None:
    mention = parse_message(BODY, event(type="app_mention"))
    message = parse_message(BODY, event(channel_type="channel"))
    assert mention.dedupe_id == message.dedupe_id
    assert parse_message(BODY, event(ts="11.0")).dedupe_id != message.dedupe_id


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, None),
        ({"subtype": "file_share"}, None),
        ({"subtype": "thread_broadcast"}, None),
        ({"subtype": "message_changed"}, "subtype"),
        ({"subtype": "message_deleted"}, "subtype"),
        ({"subtype": "channel_join"}, "subtype"),
        ({"subtype": "bot_message", "bot_id": "BX"}, "subtype"),
        ({"bot_id": "BBOT"}, "own message"),
        ({"bot_id": "BOTHER"}, "bot message"),
        ({"user": "UBOT"}, "own message"),
        ({"user": None}, "no user"),
    ],
)
def test_what_is_ignored(fields: dict[str, Any], reason: str | None) -> None:
    assert ignore_reason(event(**fields), "UBOT", "BBOT") == reason


def test_transcript_for_summaries() -> None:
    messages = [
        {"ts": "1", "user": "U1", "text": "hello <@U2|bob>"},
        {"ts": "2", "user": "UBOT", "bot_id": "B", "text": "an answer"},
        {"ts": "3", "user": "U2", "subtype": "channel_join", "text": "joined"},
        {"ts": "4", "user": "U1", "text": "@parley summarize"},
    ]
    assert transcript(messages, "UBOT", skip_ts="4") == "U1: hello @bob\nParley: an answer"


def test_the_token_only_goes_to_slack_hosts() -> None:
    fetcher = FileFetcher("xoxb-t", "https://slack.com/api/", AttachmentPolicy(1, 1))
    assert fetcher.trusted("https://files.slack.com/files-pri/T1-F1/a.png")
    assert fetcher.trusted("https://slack.com/x")
    assert not fetcher.trusted("http://files.slack.com/files-pri/a.png")
    assert not fetcher.trusted("https://files.slack.com.evil.example/a.png")
    assert not fetcher.trusted("https://example.com/a.png")
    assert not fetcher.trusted("file:///etc/passwd")
    gov = FileFetcher("xoxb-t", "https://slack-gov.com/api/", AttachmentPolicy(1, 1))
    assert gov.trusted("https://files.slack-gov.com/files-pri/a.png")
    local = FileFetcher("xoxb-t", "http://127.0.0.1:9/api/", AttachmentPolicy(1, 1))
    assert local.trusted("http://127.0.0.1:9/files/F1/a.png")


@pytest.mark.parametrize(
    ("file", "kind"),
    [
        ({"mimetype": "image/png"}, "image"),
        ({"mimetype": "image/heic"}, "other"),
        ({"mimetype": "text/plain"}, "text"),
        ({"mimetype": "application/json"}, "text"),
        ({"mimetype": "application/octet-stream", "filetype": "python"}, "text"),
        ({"mimetype": "application/pdf", "filetype": "pdf"}, "other"),
    ],
)
def test_file_kinds(file: dict[str, str], kind: str) -> None:
    assert kind_of(offer(file)) == kind


def test_a_slack_file_is_offered_with_its_filetype() -> None:
    file = {"name": "a.py", "mimetype": "text/x-python", "filetype": "python", "size": 12}
    assert offer(file) == FileOffer("a.py", "text/x-python", 12, "python")
    assert offer({"title": "untitled"}) == FileOffer("untitled", "", None, "")


def test_the_core_message_carries_the_dedupe_id() -> None:
    m = parse_message(BODY, event(type="app_mention"))
    inbound = m.inbound("hi")
    assert inbound.event_id == m.dedupe_id and inbound.key == m.key


def test_the_core_message_is_placed_at_the_messages_ts_not_the_events() -> None:
    m = parse_message(
        BODY, event(type="app_mention", ts="1700000000.000123", event_ts="1700000009.000999")
    )
    sent_at = m.inbound("hi").sent_at
    assert sent_at == datetime(2023, 11, 14, 22, 13, 20, 123, tzinfo=UTC)
    assert sent_at is not None and sent_at.utcoffset() is not None


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        # Exact to the microsecond, with no float in between.
        ("1700000000.999999", datetime(2023, 11, 14, 22, 13, 20, 999999, tzinfo=UTC)),
        ("1700000001.000001", datetime(2023, 11, 14, 22, 13, 21, 1, tzinfo=UTC)),
        ("10.5", datetime(1970, 1, 1, 0, 0, 10, 500000, tzinfo=UTC)),
        ("10", datetime(1970, 1, 1, 0, 0, 10, tzinfo=UTC)),
        ("", None),
        ("abc.000001", None),
        ("-1.000001", None),
        ("1700000000.1234567", None),
    ],
)
def test_a_slack_ts_is_read_exactly(ts: str, expected: datetime | None) -> None:
    assert time_of(ts) == expected


def test_consecutive_ts_keep_their_order() -> None:
    stamps = ["1700000000.000009", "1700000000.000010", "1700000000.100000", "1700000001.000000"]
    times = [time_of(ts) for ts in stamps]
    assert times == sorted(times, key=lambda t: t or datetime.min.replace(tzinfo=UTC))
    assert len(set(times)) == len(stamps)


@pytest.mark.parametrize(
    ("fields", "mention", "follow", "expected"),
    [
        ({}, True, False, "answer"),
        ({"channel": "D1", "channel_type": "im"}, False, False, "answer"),
        ({}, False, True, "ignore"),  # top-level channel chatter
        ({"thread_ts": "5.0"}, False, False, "ignore"),  # following is off
        ({"thread_ts": "5.0"}, False, True, "if followed"),
        ({"thread_ts": "5.0", "text": "<@UBOT> hi"}, False, True, "ignore"),  # app_mention does
    ],
)
def test_what_is_answered(
    fields: dict[str, Any], mention: bool, follow: bool, expected: str
) -> None:
    m = parse_message(BODY, event(**fields))
    assert route(m, mention=mention, bot_user_id="UBOT", follow_threads=follow) == expected


@pytest.mark.parametrize(
    ("fields", "source"),
    [
        ({}, "channel"),
        ({"thread_ts": "5.0"}, "thread"),
        ({"channel": "D1", "channel_type": "im"}, "stored"),
        ({"channel": "D1", "channel_type": "im", "thread_ts": "5.0"}, "thread"),
    ],
)
def test_what_summarize_covers_where_it_is_typed(fields: dict[str, Any], source: str) -> None:
    assert parse_message(BODY, event(**fields)).summary_source == source


def test_slash_commands_go_to_the_core_as_typed() -> None:
    body = {
        "team_id": "T1",
        "channel_id": "C1",
        "user_id": "U1",
        "user_name": "ann",
        "text": "  summarise  20 ",
        "response_url": "https://hooks.slack.com/x",
    }
    command = parse_slash(body, None)
    assert (command.name, command.args) == ("summarise", " 20")
    assert command.key == ConversationKey("slack", "T1", "C1")
    assert command.author == Author("U1", "ann")
    assert command.summary_source == "channel"
    assert parse_slash({**body, "text": "", "channel_id": "D1"}, None).name == "help"
    assert parse_slash({**body, "channel_id": "D1"}, None).summary_source == "stored"


@pytest.mark.parametrize(
    "fields",
    [
        {"subtype": {}},
        {"user": ["UALICE"]},
        {"channel": 7},
        {"ts": True},
        {"thread_ts": "soon"},
        {"text": {"a": 1}},
        {"files": True},
        {"user": "alice smith"},
        {"channel": ""},
    ],
)
def test_a_malformed_event_is_skipped_not_half_read(fields: dict[str, Any]) -> None:
    assert ignore_reason(event(**fields), "UBOT", "BBOT") == "malformed event"
