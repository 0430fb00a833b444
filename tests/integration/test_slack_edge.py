"""The HTTP edge of Slack's HTTP mode against strangers: malformed, unsigned, oversized and
slow requests get a 4xx and no traceback; answers in flight are capped per worker.

Real slack_bolt/slack_sdk, the real core on SQLite, the fake Slack; requests are posted with
aiohttp, as anyone on the network could.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import pytest

from adapters.slack.edge import well_formed
from tests.fakes.concurrency import AnswersAtOnce
from tests.fakes.junk import Junk
from tests.fakes.slack_server import FakeSlack
from tests.integration.test_slack_http import CHANNEL, Stack, make_stack

SEED = 20240611
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def stack(tmp_path: Any, slack: FakeSlack) -> AsyncIterator[Stack]:
    async with make_stack(tmp_path, slack, http_max_body=4096, http_read_timeout=0.5) as s:
        yield s


def _mangled(rng: random.Random, valid: dict[str, Any]) -> tuple[bytes, str]:
    """One malformed body (and the content type it claims), from a valid Events API body."""
    text = json.dumps(valid)
    pick = rng.randrange(12)
    junk: list[Callable[[], Any]] = [
        lambda: None,
        lambda: [],
        lambda: "x",
        lambda: rng.randint(-5, 5),
        lambda: {"": []},
        lambda: [{}],
    ]
    if pick == 0:
        return text[: rng.randrange(len(text))].encode(), JSON
    if pick == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))), JSON
    if pick == 2:
        return json.dumps(rng.choice(junk)()).encode(), JSON
    if pick == 3:  # a field of the event replaced by something of the wrong type
        broken = json.loads(text)
        broken["event"][rng.choice(list(broken["event"]))] = rng.choice(junk)()
        return json.dumps(broken).encode(), JSON
    if pick == 4:  # a field of the envelope replaced
        broken = json.loads(text)
        broken[rng.choice(list(broken))] = rng.choice(junk)()
        return json.dumps(broken).encode(), JSON
    if pick == 5:
        payload = rng.choice(["{bad", "[]", "null", '{"type": "block_actions", "actions": []}'])
        return urlencode({"payload": payload}).encode(), FORM
    if pick == 6:
        return b"%%%&&&==" + bytes(rng.randrange(256) for _ in range(20)), FORM
    if pick == 7:  # a slash command with fields missing or mistyped
        form = {"command": "/parley", "text": rng.choice(["", "model", "reset", "\x00"])}
        if rng.random() < 0.5:
            form["channel_id"] = rng.choice(["", "C0GENERAL", "D0X", "%"])
        return urlencode(form).encode(), FORM
    if pick == 8:
        return json.dumps(
            {"type": rng.choice(["url_verification", "event_callback", "x"])}
        ).encode(), JSON
    if pick == 9:
        return b"\xff\xfe" + text.encode("utf-16-le"), JSON
    if pick == 10:
        return text.encode(), rng.choice(["text/plain", FORM, "multipart/form-data"])
    return b"", rng.choice([JSON, FORM])


async def test_malformed_bodies_signed_or_not_get_no_5xx_and_no_traceback(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    rng = random.Random(SEED)
    event = stack.mention("hello")
    valid = stack.slack.event_body(event)
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession() as session:
        for i in range(1000):
            raw, kind = _mangled(rng, valid)
            headers = {"Content-Type": kind}
            if i % 2:
                headers.update(_sign(stack.slack, raw))
            elif i % 4 == 0:
                headers.update({"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=0"})
            async with session.post(stack.url, data=raw, headers=headers) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
    await stack.adapter.drain()
    assert all(status < 500 for status in statuses), statuses
    assert statuses.get(401, 0) >= 500  # every unsigned one
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.INFO]
    assert "Traceback" not in caplog.text


def _sign(slack: FakeSlack, raw: bytes) -> dict[str, str]:
    """Headers signing ``raw`` as sent, bytes and all, the way Slack signs."""
    stamp = str(int(time.time()))
    digest = hmac.new(
        slack.signing_secret.encode(), b"v0:" + stamp.encode() + b":" + raw, hashlib.sha256
    ).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}


async def test_the_signature_is_checked_before_the_body_is_read_as_json(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.url, data=b"{not json", headers={"Content-Type": JSON}) as r:
            assert r.status == 401
        raw = b"{not json"
        headers = {"Content-Type": JSON, **_sign(stack.slack, raw)}
        async with session.post(stack.url, data=raw, headers=headers) as r:
            assert r.status == 400


async def test_oversized_bodies_are_refused(stack: Stack) -> None:
    raw = json.dumps({"type": "event_callback", "pad": "x" * 5000}).encode()
    async with aiohttp.ClientSession() as session:
        headers = {"Content-Type": JSON, **_sign(stack.slack, raw)}
        async with session.post(stack.url, data=raw, headers=headers) as r:
            assert r.status == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            for _ in range(10):
                yield b"x" * 1000

        async with session.post(stack.url, data=chunks(), headers=headers) as r:
            assert r.status == 413


async def test_a_slow_body_is_refused(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.adapter.port)
    writer.write(
        b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"type":'
    )
    await writer.drain()
    status_line = await reader.readline()  # the body never comes
    assert b" 408 " in status_line
    writer.close()


def test_well_formed_payloads() -> None:
    assert well_formed('{"type": "event_callback"}', JSON)
    assert well_formed("command=%2Fparley&text=help", FORM)
    assert well_formed("payload=%7B%7D", FORM)
    assert not well_formed("[]", JSON)
    assert not well_formed("payload=%5B%5D", FORM)
    assert not well_formed("{", FORM)
    # shaped as Slack shapes them, or bolt's middleware raises
    assert not well_formed('{"type": "event_callback", "event": []}', JSON)
    assert not well_formed('{"event": {"type": {}}}', JSON)
    assert not well_formed('{"authorizations": [1]}', JSON)
    assert not well_formed("payload=" + quote('{"type": "block_actions", "actions": []}'), FORM)
    assert not well_formed("payload=" + quote('{"type": "view_submission", "view": {}}'), FORM)
    assert not well_formed('{"event": {"type": "assistant_thread_started"}}', JSON)
    assert well_formed('{"event": {"type": "message", "user": "U1", "team": "T1"}}', JSON)


async def test_answers_beyond_the_cap_wait_their_turn(tmp_path: Any, slack: FakeSlack) -> None:
    async with make_stack(tmp_path, slack, max_concurrent_answers=1) as stack:
        at_once = AnswersAtOnce(stack.parley.service)
        events = [stack.mention(f"question {n}") for n in range(4)]
        for event in events:
            assert await stack.post(event) == 200
        await stack.adapter.drain()
        assert at_once.most == 1
        for n, event in enumerate(events):
            assert f"question {n}" in stack.slack.thread(CHANNEL, event["ts"])[-1].text


# --- fuzzing: many malformed requests, every one correctly signed ------------------------------

FUZZ_REQUESTS = 10_000
FUZZ_AT_ONCE = 48
FUZZ_BATCH = 500
ANSWERABLE = 3  # the first templates: mentions and a DM


def _templates(slack: FakeSlack) -> list[dict[str, Any]]:
    """Valid Events API bodies of every kind Parley listens to (and some it does not)."""
    bot, ts = slack.bot_user_id, "1700000000.000100"
    file = slack.add_file("notes.txt", b"some notes", "text/plain")
    events: list[dict[str, Any]] = [
        {
            "type": "app_mention",
            "user": "UALICE",
            "text": f"<@{bot}> hi",
            "ts": ts,
            "channel": CHANNEL,
            "event_ts": ts,
        },
        {
            "type": "app_mention",
            "user": "UALICE",
            "text": f"<@{bot}> reset",
            "ts": ts,
            "thread_ts": ts,
            "channel": CHANNEL,
            "files": [file],
            "event_ts": ts,
        },
        {
            "type": "message",
            "channel_type": "im",
            "user": "UALICE",
            "text": "hi",
            "ts": ts,
            "channel": "D0ALICE",
            "event_ts": ts,
        },
        {
            "type": "message",
            "channel_type": "channel",
            "user": "UALICE",
            "text": "hi",
            "ts": ts,
            "thread_ts": ts,
            "channel": CHANNEL,
            "event_ts": ts,
        },
        {
            "type": "message",
            "subtype": "message_changed",
            "channel": CHANNEL,
            "ts": ts,
            "message": {"type": "message", "user": "UALICE", "text": "edited", "ts": ts},
        },
        {
            "type": "assistant_thread_started",
            "assistant_thread": {
                "user_id": "UALICE",
                "context": {},
                "channel_id": "D0ALICE",
                "thread_ts": ts,
            },
            "event_ts": ts,
        },
        {"type": "assistant_thread_context_changed", "assistant_thread": {}, "event_ts": ts},
        {"type": "reaction_added", "user": "UALICE", "reaction": "+1", "event_ts": ts},
        {"type": "parley_no_such_event", "event_ts": ts},
    ]
    bodies = [slack.event_body(event) for event in events]
    # Events Parley answers are few: answers are paced by Slack's write limits
    bodies = bodies[:ANSWERABLE] * 2 + bodies[ANSWERABLE:] * 25
    bodies.append({"type": "url_verification", "token": "t", "challenge": "abc"})
    bodies.append({"type": "app_rate_limited", "team_id": slack.team_id, "minute_rate_limited": 1})
    return bodies


def _command(slack: FakeSlack) -> dict[str, str]:
    return {
        "token": "legacy-verification-token",
        "team_id": slack.team_id,
        "channel_id": CHANNEL,
        "user_id": "UALICE",
        "command": "/parley",
        "text": "help",
        "api_app_id": "A0PARLEY",
        "response_url": f"{slack.url}/response/fuzz",
        "trigger_id": "1.trigger",
    }


def _interaction(slack: FakeSlack) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "team": {"id": slack.team_id},
        "user": {"id": "UALICE"},
        "channel": {"id": CHANNEL},
        "actions": [{"action_id": "a", "block_id": "b", "type": "button", "value": "v"}],
        "trigger_id": "1.trigger",
        "response_url": f"{slack.url}/response/fuzz",
        "view": {"type": "modal", "callback_id": "c", "state": {"values": {}}},
    }


def _fuzzed(junk: Junk, slack: FakeSlack, templates: list[dict[str, Any]]) -> tuple[bytes, str]:
    """One malformed request body (and its content type): Events API, slash command or
    interactivity, broken in a few places or not an object at all."""
    rng = junk.rng
    pick = rng.random()
    if pick < 0.55:
        text = json.dumps(junk.broken(rng.choice(templates)))
        return text.encode("utf-8", "surrogatepass"), JSON
    if pick < 0.65:
        return json.dumps(junk.value()).encode("utf-8", "surrogatepass"), JSON
    if pick < 0.85:
        form = _command(slack)
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(sorted(form))
            if rng.random() < 0.3:
                del form[key]
            else:
                form[key] = junk.string()
        raw = urlencode(form, encoding="utf-8", errors="surrogatepass").encode()
        return raw, FORM
    kind = rng.choice(["block_actions", "view_submission", "shortcut", "message_action"])
    payload = junk.broken({**_interaction(slack), "type": kind})
    form = {"payload": json.dumps(payload)}
    return urlencode(form, encoding="utf-8", errors="surrogatepass").encode(), FORM


@pytest.mark.timeout(300)  # a loaded machine; speed is not what this test measures
async def test_fuzzed_signed_requests_get_no_5xx_no_traceback_and_the_worker_still_answers(
    tmp_path: Any, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    # what is checked is logged at WARNING or above (10,000 requests' INFO lines cost time)
    caplog.set_level(logging.WARNING)
    junk = Junk(random.Random(SEED), nan=True)
    statuses: dict[int, int] = {}
    async with make_stack(tmp_path, slack) as stack:
        templates = _templates(slack)
        at_once = asyncio.Semaphore(FUZZ_AT_ONCE)

        async def send(session: aiohttp.ClientSession, raw: bytes, kind: str) -> None:
            headers = {"Content-Type": kind, **_sign(slack, raw)}
            async with at_once, session.post(stack.url, data=raw, headers=headers) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1

        connector = aiohttp.TCPConnector(limit=FUZZ_AT_ONCE)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(FUZZ_REQUESTS // FUZZ_BATCH):
                batch = [_fuzzed(junk, slack, templates) for _ in range(FUZZ_BATCH)]
                await asyncio.gather(*(send(session, raw, kind) for raw, kind in batch))
                # bolt acks first and handles after: a batch's handlers finish before the next
                # (one SQLite connection serves them all; Slack itself sends a few a second)
                await stack.adapter.drain()
        event = stack.mention("still there after the fuzz?")
        assert await stack.deliver(event) == 200
        assert "still there after the fuzz?" in stack.slack.thread(CHANNEL, event["ts"])[-1].text
    assert sum(statuses.values()) == FUZZ_REQUESTS
    assert all(status < 500 for status in statuses), statuses
    problems = [
        r
        for r in caplog.records
        if (r.exc_info and r.levelno >= logging.WARNING) or "Traceback" in r.getMessage()
    ]
    assert not problems, [
        f"{r.name}: {r.getMessage()[:300]} {r.exc_info[1]!r}" for r in problems[:5]
    ]
    # nothing raised inside bolt or Parley's listeners either (bolt turns that into one line)
    raised = [r.getMessage() for r in caplog.records if "bolt" in r.getMessage()]
    assert not [m for m in raised if "failed on" in m or "could not read" in m], raised[:5]
