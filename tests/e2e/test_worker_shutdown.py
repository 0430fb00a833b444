"""`parley run` in HTTP mode keeps its shutdown promise whatever clients do: SIGTERM exits
within 10 s (a supervisor's grace period) with a request half sent and idle clients connected."""

from __future__ import annotations

import asyncio
import signal
import socket

import pytest

from tests.e2e.test_run_workers import free_port, start_worker
from tests.fakes.slack_server import FakeSlack

PROMISE = 10.0  # seconds from SIGTERM to exit


async def _listening(port: int) -> None:
    for _ in range(150):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError("the worker never listened")


@pytest.mark.asyncio
async def test_sigterm_exits_in_time_with_slow_and_idle_clients(tmp_path):
    port = free_port()
    async with FakeSlack() as fake:
        proc = await start_worker(
            tmp_path,
            fake,
            SLACK_MODE="http",
            SLACK_PORT=str(port),
            SLACK_SIGNING_SECRET=fake.signing_secret,
            SLACK_HTTP_READ_TIMEOUT="60",  # the body must not time out before shutdown
        )
        writers = []
        try:
            await _listening(port)
            # A request whose body never finishes, one whose headers never do, an idle one.
            for head in (
                b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"type":',
                b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Le",
                b"",
            ):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head)
                await writer.drain()
                writers.append(writer)
            await asyncio.sleep(0.5)  # let the worker start reading them
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(proc.communicate(), PROMISE)
        finally:
            for writer in writers:
                writer.close()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        text = out.decode()
        assert proc.returncode == 0, text
        assert "Traceback" not in text
