"""The HTTP client Parley's model client (``core.llm.OpenAIChat``) sends its requests with.

An ``httpx2`` client, as the official ``openai`` client expects, on one aiohttp session: its
connection pool serves 1,000 requests at once without the per-request checks of every pooled
connection that ``httpx2``'s own pool makes. The transport hands each request to aiohttp and
its answer back as it streams, and does as little per request as that takes: the session keeps
no cookies (``httpx2`` keeps them, as with any transport), timeouts are built once per value,
and headers are handed over once decoded. aiohttp's errors become ``httpx2``'s, which the
openai client retries and reports: a refused connection is a connect error, a timeout a
timeout, a cut stream a read error.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2

# As many connections as the openai client's own default (its aiohttp transport's too).
CONNECTION_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)


def model_http_client(timeout: float) -> httpx2.AsyncClient:
    """An ``httpx2`` client on ``AiohttpTransport``, set up as the openai client sets up its
    own (redirects followed, its connection limits). A proxy set in the environment
    (``HTTPS_PROXY``, ``NO_PROXY``) is used by the aiohttp session."""
    return httpx2.AsyncClient(
        timeout=timeout,
        limits=CONNECTION_LIMITS,
        follow_redirects=True,
        transport=AiohttpTransport(CONNECTION_LIMITS),
    )


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """``httpx2`` requests sent on an aiohttp session, opened on first use (it needs the
    running event loop) and closed with the transport."""

    def __init__(self, limits: httpx2.Limits, verify: ssl.SSLContext | bool = True) -> None:
        self._limits = limits
        self._ssl = httpx2.create_ssl_context(verify=verify)
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[Any, Any, Any], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            keepalive_timeout=self._limits.keepalive_expiry,
            ssl=self._ssl,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=True,  # proxies from the environment, as the openai client's own
            auto_decompress=False,  # httpx2 decodes the body, as Content-Encoding says
        )
        return self._session

    def _timeout(self, request: httpx2.Request) -> aiohttp.ClientTimeout:
        """The request's timeouts for aiohttp: connect, read, and the wait for a connection."""
        given = request.extensions.get("timeout") or {}
        key = (given.get("connect"), given.get("read"), given.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            if len(self._timeouts) > 16:
                self._timeouts.clear()
            timeout = aiohttp.ClientTimeout(sock_connect=key[0], sock_read=key[1], connect=key[2])
            self._timeouts[key] = timeout
        return timeout

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        session = self._session or self._open()
        data: Any
        try:
            data = request.content or None
        except httpx2.RequestNotRead:
            data = request.stream  # a streamed upload: aiohttp sends it chunked
            request.headers.pop("transfer-encoding", None)
        encoding = request.headers.encoding
        headers = [(k.decode(encoding), v.decode(encoding)) for k, v in request.headers.raw]
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=self._timeout(request),
                server_hostname=request.extensions.get("sni_hostname"),
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _httpx_error(exc) from exc
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx2.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Body(httpx2.AsyncByteStream):
    """An answer's body as it arrives."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _httpx_error(exc) from exc

    async def aclose(self) -> None:
        """Give the connection back (or close it, if the body was not read to its end)."""
        try:
            await self._response.__aexit__(None, None, None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _httpx_error(exc) from exc


def _httpx_error(exc: BaseException) -> httpx2.TransportError:
    """The ``httpx2`` error for an aiohttp one (the openai client retries and reports those)."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx2.ConnectTimeout(message)
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return httpx2.ReadTimeout(message)
    if isinstance(exc, TimeoutError):
        return httpx2.PoolTimeout(message)
    if isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return httpx2.ProxyError(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx2.ConnectError(message)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return httpx2.UnsupportedProtocol(message)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx2.ReadError(message)
    return httpx2.RemoteProtocolError(message)
