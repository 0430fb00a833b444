"""The HTTP client Parley's model client (``core.llm.OpenAIChat``) sends its requests with.

An ``httpx2`` client, as the official ``openai`` client expects, on one aiohttp session: its
connection pool serves 1,000 requests at once without the per-request checks of every pooled
connection that ``httpx2``'s own pool makes. The transport hands each request to aiohttp and
its answer back as it streams, and does as little per request as that takes: the session keeps
no cookies (``httpx2`` keeps them, as with any transport), timeouts are built once per value,
the environment's proxy is looked up once per server, and headers are handed over once
decoded. aiohttp's errors become ``httpx2``'s, which the
openai client retries and reports: a refused connection is a connect error, a timeout a
timeout, a cut stream a read error.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import aiohttp
import httpx2
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

# As many connections as the openai client's own default (its aiohttp transport's too).
CONNECTION_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)

# A server the transport sends to (scheme, host, port), the route to which is kept.
_Server = tuple[str, str, int | None]
_ROUTES_KEPT = 64


class _Route(NamedTuple):
    """How requests reach a server: straight, or through a proxy. The proxy's credentials go
    on the tunnel's CONNECT to an HTTPS server (``connect_headers``), and on each request
    itself to a plain-HTTP one (``request_headers``), which the proxy forwards."""

    proxy: URL | None = None
    connect_headers: dict[str, str] | None = None
    request_headers: tuple[tuple[str, str], ...] = ()


_DIRECT = _Route()


def model_http_client(timeout: float) -> httpx2.AsyncClient:
    """An ``httpx2`` client on ``AiohttpTransport``, set up as the openai client sets up its
    own (redirects followed, its connection limits). A proxy set in the environment
    (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``) is used, as the openai client's own
    transport uses it."""
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
        self._routes: dict[_Server, _Route] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            keepalive_timeout=self._limits.keepalive_expiry,
            ssl=self._ssl,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            # No per-request look-up of the environment (a thread each for the proxy and for
            # ~/.netrc): the transport gives each request the proxy it looked up once.
            trust_env=False,
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

    async def _look_up_route(self, url: httpx2.URL, server: _Server) -> _Route:
        """The route to ``url``'s server: through the proxy the environment names for it
        (``HTTPS_PROXY``, or ``HTTP_PROXY`` for plain HTTP, with the credentials in its URL or
        in ``~/.netrc``), straight if ``NO_PROXY`` excludes the server or none is set. Looked
        up as aiohttp's ``trust_env`` does (in a thread: it reads files), once per server."""
        route = _DIRECT
        with contextlib.suppress(LookupError):
            proxy, auth = await asyncio.to_thread(get_env_proxy_for_url, URL(str(url)))
            route = _Route(proxy)
            if auth is not None:
                credentials = ("Proxy-Authorization", auth.encode())
                if url.scheme == "https":
                    route = _Route(proxy, connect_headers=dict([credentials]))
                else:
                    route = _Route(proxy, request_headers=(credentials,))
        if len(self._routes) >= _ROUTES_KEPT:
            self._routes.clear()
        self._routes[server] = route
        return route

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        session = self._session or self._open()
        url = request.url
        server = (url.scheme, url.host, url.port)
        route = self._routes.get(server) or await self._look_up_route(url, server)
        data: Any
        try:
            data = request.content or None
        except httpx2.RequestNotRead:
            data = request.stream  # a streamed upload: aiohttp sends it chunked
            request.headers.pop("transfer-encoding", None)
        encoding = request.headers.encoding
        headers = [(k.decode(encoding), v.decode(encoding)) for k, v in request.headers.raw]
        if route.request_headers:
            headers += route.request_headers
        try:
            response = await session.request(
                request.method,
                str(url),
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=self._timeout(request),
                server_hostname=request.extensions.get("sni_hostname"),
                proxy=route.proxy,
                proxy_headers=route.connect_headers,
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
