"""`parley run` with PARLEY_HEALTH_PORT and PARLEY_METRICS_PORT, as an operator probes it."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.e2e.test_run_workers import answered, free_port, mention, start_worker, stop_worker
from tests.fakes.slack_server import FakeSlack


async def healthz(session: aiohttp.ClientSession, url: str) -> int:
    """The status of /healthz once the worker listens (connection refused: wait)."""
    for _ in range(150):
        try:
            async with session.get(url) as response:
                return response.status
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)
    raise AssertionError("the worker never served /healthz")


@pytest.mark.asyncio
async def test_socket_mode_worker_serves_healthz_and_counts_answers(tmp_path):
    port = free_port()
    async with FakeSlack() as fake, aiohttp.ClientSession() as session:
        proc = await start_worker(
            tmp_path,
            fake,
            SLACK_APP_TOKEN=fake.app_token,
            PARLEY_HEALTH_PORT=str(port),
            PARLEY_METRICS_PORT=str(port),
            PARLEY_OPS_HOST="127.0.0.1",
        )
        try:
            base = f"http://127.0.0.1:{port}"
            status = await healthz(session, f"{base}/healthz")
            while status != 200:  # 503 until Slack is connected
                assert status == 503
                await asyncio.sleep(0.1)
                status = await healthz(session, f"{base}/healthz")
            event = mention(fake, "count me")
            await fake.wait_ack(await fake.push(fake.event_body(event)))
            assert "count me" in await answered(fake, event)
            async with session.get(f"{base}/metrics") as response:
                assert response.status == 200
                text = await response.text()
            assert 'parley_answers_total{platform="slack"} 1.0' in text
            assert (
                'parley_platform_writes_total{method="chat.startStream",platform="slack"}' in text
            )
        finally:
            out = await stop_worker(proc)
        assert proc.returncode == 0, out
        assert "Traceback" not in out
