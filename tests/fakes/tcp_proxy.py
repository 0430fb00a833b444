"""A TCP proxy a test controls: forwards 127.0.0.1 connections to a server, and can make that
server look down (every open connection cut, new ones closed at once) and back up, or hold
back one reply (the statement done, its client still waiting for the answer)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class Proxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.down = False
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._knock = asyncio.Condition()
        # A reply carrying ``_marker`` is held (``hold_reply``) until ``_let_through``.
        self._marker: bytes | None = None
        self.holding = asyncio.Event()
        self._let_through = asyncio.Event()
        self._serving: set[asyncio.Task[None]] = set()

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        """The server goes away: open connections drop, new ones are closed on arrival."""
        self.down = True
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def knocked(self, times: int) -> None:
        """Return once ``times`` connections were refused while down."""
        async with self._knock:
            await self._knock.wait_for(lambda: self.refused >= times)

    def restore(self) -> None:
        self.down = False

    def hold_reply(self, marker: bytes) -> None:
        """Hold back the next reply from the server that carries ``marker``, and all that
        follows on its connection (other connections go on); ``holding`` is set once it is."""
        self._marker = marker
        self.holding.clear()
        self._let_through.clear()

    def let_through(self) -> None:
        self._let_through.set()

    async def _held(self, data: bytes) -> None:
        if self._marker is not None and self._marker in data:
            self._marker = None
            self.holding.set()
            await self._let_through.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            self._serving.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            async with self._knock:
                self.refused += 1
                self._knock.notify_all()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer, self._held))
        self._open.difference_update((writer, up_writer))

    async def close(self) -> None:
        self.let_through()
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._serving:  # each connection's pipes end once cut
            await asyncio.wait(self._serving, timeout=5)


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    hold: Callable[[bytes], Awaitable[None]] | None = None,
) -> None:
    try:
        while data := await reader.read(65536):
            if hold is not None:
                await hold(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.transport.abort()
