"""The HTTP edge of HTTP mode: what a request must be before slack-bolt sees it.

Strangers can reach this port, so a request is checked in the cheapest order and refused with
a 4xx and at most one short log line, never a traceback: the body is read within a size cap
(``SLACK_HTTP_MAX_BODY``) and a time cap (``SLACK_HTTP_READ_TIMEOUT``), the Slack signature is
checked on the raw bytes before anything parses them, and only then is the body read as Slack's
JSON or form payload. Whatever bolt still fails on is a 400, not a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import http_exceptions, web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.error import BoltUnhandledRequestError
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.signature import SignatureVerifier

log = logging.getLogger("parley.slack")

Dispatch = Callable[[AsyncBoltRequest], Awaitable[BoltResponse]]


def refuse(status: int, reason: str) -> web.Response:
    """A short plain-text refusal (the reason is a fixed phrase, never request content)."""
    return web.Response(status=status, text=reason)


# Where bolt looks inside a payload, and what it expects there. Slack always sends these so,
# but a signed body can still carry anything, and bolt's middleware would raise on it.
_OBJECTS = (
    "event",
    "view",
    "message",
    "previous_message",
    "item",
    "assistant_thread",
    "workflow_step",
    "container",
)
_STRINGS = ("type", "subtype", "callback_id", "command")
_IDS = ("team", "user", "channel", "enterprise")  # an id, or an object holding one
_OBJECT_LISTS = ("authorizations", "actions")  # lists of objects


def slack_shaped(payload: dict[str, Any], depth: int = 2) -> bool:
    """Whether the parts of ``payload`` bolt reads have the types Slack gives them (checked
    ``depth`` objects deep: an event's message, a view's state)."""
    for name in _STRINGS:
        if not isinstance(payload.get(name), (str, type(None))):
            return False
    for name in _IDS:
        if not isinstance(payload.get(name), (str, dict, type(None))):
            return False
    for name in _OBJECT_LISTS:
        items = payload.get(name, [{}])
        if not (isinstance(items, list) and all(isinstance(i, dict) for i in items)):
            return False
    if payload.get("actions") == []:  # bolt reads the first action
        return False
    inner = [payload[name] for name in _OBJECTS if name in payload]
    if not all(isinstance(part, dict) for part in inner):
        return False
    if "view" in payload and "type" not in payload["view"]:  # bolt reads a view's type
        return False
    inner += [item for name in _OBJECT_LISTS for item in payload.get(name, [])]
    return depth == 0 or all(slack_shaped(part, depth - 1) for part in inner)


def bolt_readable(payload: dict[str, Any]) -> bool:
    """Whether bolt can read ``payload``: shaped as Slack shapes it, and an assistant thread
    event names its thread (bolt builds its assistant helpers from it)."""
    if not slack_shaped(payload):
        return False
    event = payload.get("event")
    if isinstance(event, dict) and str(event.get("type")).startswith("assistant_thread_"):
        thread = event.get("assistant_thread")
        named = isinstance(thread, dict) and None not in (
            thread.get("channel_id"),
            thread.get("thread_ts"),
        )
        return named or None not in (event.get("channel"), event.get("thread_ts"))
    return True


def well_formed(body: str, content_type: str) -> bool:
    """Whether ``body`` is a payload bolt can read: a JSON object, or a form whose ``payload``
    (interactivity), when present, is a JSON object, each shaped as Slack shapes them."""
    try:
        if content_type == "application/json" or body.startswith("{"):
            data = json.loads(body)
            return isinstance(data, dict) and bolt_readable(data)
        form = dict(parse_qsl(body, keep_blank_values=True, strict_parsing=bool(body)))
        payload = form.get("payload")
        if payload is None:
            return True
        data = json.loads(payload)
        return isinstance(data, dict) and bolt_readable(data)
    except (ValueError, RecursionError):
        return False


class HttpEdge:
    """Checks each request to the events URL, then hands it to bolt's ``dispatch``."""

    def __init__(
        self,
        signing_secret: str,
        dispatch: Dispatch,
        *,
        max_body: int,
        read_timeout: float,
    ) -> None:
        # Without a secret nothing can be checked, so nothing is accepted.
        self.verifier = SignatureVerifier(signing_secret) if signing_secret else None
        self.dispatch = dispatch
        self.max_body = max_body
        self.read_timeout = read_timeout

    async def handle(self, request: web.Request) -> web.Response:
        raw = await self._read(request)
        if isinstance(raw, web.Response):
            return raw
        if not self._signed(raw, request):
            log.info("slack: refused an HTTP request without a valid signature")
            return refuse(401, "invalid signature")
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError:
            log.info("slack: refused a signed HTTP request whose body is not UTF-8")
            return refuse(400, "malformed body")
        if not well_formed(body, request.content_type):
            log.info("slack: refused a signed HTTP request with a malformed body")
            return refuse(400, "malformed body")
        try:
            bolt_request = AsyncBoltRequest(
                body=body, query=request.query_string, headers=dict(request.headers)
            )
            response = await self.dispatch(bolt_request)
        except Exception as exc:
            log.warning("slack: bolt could not read a signed request (%s)", type(exc).__name__)
            return refuse(400, "unreadable request")
        if response.status == 500:  # bolt failed on the payload (503 while stopping stays)
            return refuse(400, "unreadable request")
        return await to_aiohttp_response(response)

    async def _read(self, request: web.Request) -> bytes | web.Response:
        """The body, or the refusal: too large, too slow, cut off."""
        if (request.content_length or 0) > self.max_body:
            log.info("slack: refused an HTTP request of %s bytes", request.content_length)
            return refuse(413, "body too large")
        try:
            async with asyncio.timeout(self.read_timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            log.info("slack: refused an HTTP request over %s bytes", self.max_body)
            return refuse(413, "body too large")
        except TimeoutError:
            log.info("slack: refused an HTTP request whose body took over %ss", self.read_timeout)
            return refuse(408, "request timeout")
        except (ConnectionError, aiohttp.ClientError, http_exceptions.HttpProcessingError) as exc:
            log.info("slack: an HTTP request was cut off (%s)", type(exc).__name__)
            return refuse(400, "incomplete body")

    def _signed(self, body: bytes, request: web.Request) -> bool:
        if self.verifier is None:
            return False
        try:
            return self.verifier.is_valid_request(body, dict(request.headers))
        except ValueError:  # a timestamp that is not a number
            return False


async def quiet_bolt_error(error: Exception, logger: logging.Logger) -> BoltResponse | None:
    """bolt's error handler: one line; the traceback only at DEBUG (the wire log). A request
    no listener takes is not an error (bolt would log its body)."""
    if isinstance(error, BoltUnhandledRequestError):
        log.info("slack: no listener for a request; answered 404")
        return None
    log.error("slack: bolt failed on a request (%s)", type(error).__name__)
    logger.debug("bolt error", exc_info=error)
    return None


__all__ = ["HttpEdge", "quiet_bolt_error", "refuse", "well_formed"]
