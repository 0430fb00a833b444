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


def well_formed(body: str, content_type: str) -> bool:
    """Whether ``body`` is a payload bolt can read: a JSON object, or a form whose ``payload``
    (interactivity), when present, is a JSON object."""
    try:
        if content_type == "application/json" or body.startswith("{"):
            return isinstance(json.loads(body), dict)
        form = dict(parse_qsl(body, keep_blank_values=True, strict_parsing=bool(body)))
        payload = form.get("payload")
        return payload is None or isinstance(json.loads(payload), dict)
    except ValueError:
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
