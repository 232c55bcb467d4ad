"""``/healthz``, ``/readyz`` and ``/metrics`` on a local port (off unless ``[health] enabled = true``).

* ``GET /healthz`` → 200 ``{"status": "ok"}`` while the process runs its event loop.
* ``GET /readyz`` → 200 ``{"ready": true, "connections": {...}}`` when every configured connection is
  online; otherwise 503 with ``"not_ready": {"NAME": {"state": ..., "address": ..., "error": ...}}``
  naming each connection that is not (and ``"draining": true`` during shutdown).
* ``GET /metrics`` → Prometheus text format (see :mod:`relay.agent.metrics`).

Binds to ``127.0.0.1`` by default: nothing here is meant for the network. Port 0 picks a free
port; the chosen URL is logged (event ``health_listening``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from .runner import Agent

__all__ = ["HealthServer"]

_log = logging.getLogger("relay.agent")


class HealthServer:
    """A small aiohttp server over an :class:`~relay.agent.runner.Agent`."""

    def __init__(self, agent: Agent, host: str, port: int):
        self.agent = agent
        self.host = host
        self.port = port
        self.draining = False
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # aiohttp has no public accessor for the bound port
        _log.info("health endpoint on %s", self.url, extra={"fields": {"event": "health_listening", "url": self.url}})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, statuses = self.agent.readiness()
        if self.draining:
            return web.json_response({"ready": False, "draining": True, "not_ready": statuses}, status=503)
        if ready:
            return web.json_response({"ready": True, "connections": statuses})
        not_ready = {name: s for name, s in statuses.items() if s["state"] != "online"}
        return web.json_response({"ready": False, "not_ready": not_ready}, status=503)

    async def _metrics(self, request: web.Request) -> web.Response:
        await self.agent.update_token_metrics()
        return web.Response(body=generate_latest(self.agent.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
