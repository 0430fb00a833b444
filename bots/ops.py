"""What operators see of a worker: ``/healthz`` (``PARLEY_HEALTH_PORT``) and Prometheus
``/metrics`` (``PARLEY_METRICS_PORT``), each off unless its port is set, on one small aiohttp
server when the ports are the same.

In Slack's HTTP mode the Slack server's own ``/healthz`` (on ``SLACK_PORT``) answers the same
check, so no extra port is needed there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bots.health import Health, database_ping
from core.recovery import Sweeper
from core.settings import ENV_CONFIG

if TYPE_CHECKING:
    from bots.bootstrap import Parley
    from bots.metrics import Metrics
    from bots.platforms import Platforms
    from bots.runtime import PlatformAdapter

log = logging.getLogger("parley")


class OpsSettings(BaseSettings):
    """``PARLEY_HEALTH_PORT``, ``PARLEY_METRICS_PORT`` (empty: off) and the address both
    listen on (``PARLEY_OPS_HOST``)."""

    model_config = SettingsConfigDict(**ENV_CONFIG, env_prefix="PARLEY_")

    health_port: int | None = Field(None, ge=0, le=65535)
    metrics_port: int | None = Field(None, ge=0, le=65535)
    ops_host: str = "0.0.0.0"


class OpsServer:
    """Serves ``/healthz`` and ``/metrics`` on the ports ``settings`` names (0: any free
    port; ``ports`` says which after ``start()``)."""

    def __init__(self, settings: OpsSettings, health: Health, metrics: Metrics | None) -> None:
        self.settings = settings
        self.health = health
        self.metrics = metrics
        self.ports: dict[str, int] = {}
        self._runners: list[web.AppRunner] = []

    def _apps(self) -> dict[int, web.Application]:
        apps: dict[int, web.Application] = {}
        health_port, metrics_port = self.settings.health_port, self.settings.metrics_port
        if health_port is not None:
            apps.setdefault(health_port, web.Application()).router.add_get("/healthz", self.healthz)
        if metrics_port is not None and self.metrics is not None:
            apps.setdefault(metrics_port, web.Application()).router.add_get("/metrics", self.scrape)
        return apps

    async def start(self) -> None:
        for port, app in self._apps().items():
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            self._runners.append(runner)
            await web.TCPSite(runner, self.settings.ops_host, port).start()
            bound = int(runner.addresses[0][1])
            for route in app.router.routes():
                self.ports[route.resource.canonical if route.resource else ""] = bound
            log.info("serving %s on port %d", ", ".join(sorted(self.ports)), bound)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def healthz(self, request: web.Request) -> web.Response:
        healthy, body = await self.health.check()
        return web.json_response(body, status=200 if healthy else 503)

    async def scrape(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        assert self.metrics is not None
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_for(settings: OpsSettings) -> Metrics | None:
    """The worker's metrics when ``PARLEY_METRICS_PORT`` is set (prometheus-client is imported
    only then)."""
    if settings.metrics_port is None:
        return None
    from bots.metrics import Metrics

    return Metrics()


def worker_health(parley: Parley, adapters: Sequence[PlatformAdapter]) -> Health:
    """The worker's health check; Slack in HTTP mode answers it on its own ``/healthz``."""
    health = Health(adapters, database_ping(parley.store))
    for adapter in adapters:
        if hasattr(adapter, "health"):
            adapter.health = health.check
    return health


async def run_worker(parley: Parley, platforms: Platforms, settings: OpsSettings) -> int:
    """Run the configured platforms with ``/healthz`` and ``/metrics`` served alongside."""
    from bots.platforms import platform_adapters
    from bots.runtime import run_adapters

    adapters = platform_adapters(parley, platforms)
    server = OpsServer(settings, worker_health(parley, adapters), parley.metrics)
    sweeper = answer_sweeper(parley, adapters)
    await server.start()
    sweeping = asyncio.get_running_loop().create_task(sweeper.run())
    try:
        return await run_adapters(adapters)
    finally:
        sweeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeping
        await sweeper.close()
        await server.stop()


def answer_sweeper(parley: Parley, adapters: Sequence[PlatformAdapter]) -> Sweeper:
    """Finishes, through the adapters that can (``resume``), answers left by dead workers;
    it looks twice per lease time, the longest a dead worker's claims stay held."""
    resumers = {
        adapter.platform: adapter.resume
        for adapter in adapters
        if hasattr(adapter, "resume") and hasattr(adapter, "platform")
    }
    every = parley.settings.database_lease_seconds / 2
    return Sweeper(parley.store, resumers, every=every)
