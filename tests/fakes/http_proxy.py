"""A plain-HTTP forward proxy a test points ``HTTP_PROXY`` at: it takes requests in absolute
form (``POST http://127.0.0.1:8000/v1/chat/completions HTTP/1.1``), sends each on to its server
in origin form on a connection of its own (one request per connection: ``Connection: close``
both ways), and notes every request's URL and headers."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization"}


class ForwardProxy:
    def __init__(self) -> None:
        self.port = 0
        self.urls: list[str] = []  # the absolute URL of every request, in order of arrival
        self.authorizations: list[str | None] = []  # each one's Proxy-Authorization
        self.headers: list[dict[str, str]] = []  # each one's headers, by lower-case name
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, url, version = request_line.split(" ", 2)
        headers = []
        received = {}
        for line in filter(None, header_lines):
            name, _, value = line.partition(":")
            received[name.strip().lower()] = value.strip()
            if name.strip().lower() not in _HOP_BY_HOP:
                headers.append(line)
        self.urls.append(url)
        self.authorizations.append(received.get("proxy-authorization"))
        self.headers.append(received)
        target = urlsplit(url)
        path = target.path + (f"?{target.query}" if target.query else "")
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port or 80)
        head_out = "\r\n".join([f"{method} {path} {version}", *headers, "Connection: close"])
        up_writer.write(f"{head_out}\r\n\r\n".encode("latin-1"))
        sending = asyncio.create_task(_pipe(reader, up_writer))
        await _pipe(up_reader, writer)  # the answer, until the server closes the connection
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy what ``reader`` receives to ``writer`` until it ends, then close ``writer``."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
