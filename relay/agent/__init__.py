"""``python -m relay agent --config FILE``: the on-premises agent for production.

Many hybrid connections in one process, each forwarded to its own local service
(:mod:`relay.forward`), configured by one TOML file (:mod:`relay.agent.config`) with environment
overrides; supervised listeners that start and stay up (:mod:`relay.agent.runner`); health and
Prometheus metrics on a local port (:mod:`relay.agent.health`, :mod:`relay.agent.metrics`);
one log line per event (:mod:`relay.agent.logs`).

Signals: SIGTERM / SIGINT drain (stop accepting, let in-flight requests and streams finish for up
to ``agent.drain_timeout`` seconds) and exit 0; SIGHUP re-reads the file and applies it, keeping the
connections whose settings did not change (a file with errors is logged and ignored).

See docs/agent.md for installing, configuring and running it as a service.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Mapping

from .config import AgentConfig, ConfigError, load_config
from .health import HealthServer
from .logs import setup_logging
from .metrics import AgentMetrics
from .runner import Agent, ConnectionRunner
from .telemetry import setup_tracing

__all__ = ["Agent", "AgentConfig", "AgentMetrics", "ConfigError", "ConnectionRunner", "HealthServer", "load_config",
           "check_targets", "serve"]

_log = logging.getLogger("relay.agent")


async def probe(host: str, port: int, timeout: float = 3.0) -> str | None:
    """``None`` when a TCP connection to ``host:port`` opens, else why not (one line)."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except asyncio.TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


async def check_targets(config: AgentConfig) -> dict[str, str]:
    """Problems reaching each connection's local service: ``{"connections[NAME].target": reason}``."""
    results = await asyncio.gather(*(probe(c.target.base.host or "", c.target.base.port or 80) for c in config.connections))
    return {f"connections[{c.name}].target": f"{c.target.base} is not reachable: {r}"
            for c, r in zip(config.connections, results) if r is not None}


async def serve(path: str, *, log_format: str | None = None, check_only: bool = False,
                environ: Mapping[str, str] | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; return the exit code. Raises :class:`ConfigError` for a bad file."""
    config = load_config(path, environ)
    unreachable = await check_targets(config)
    if check_only:
        for key, problem in unreachable.items():
            print(f"{key}: {problem}", file=sys.stderr)
        print(f"{path}: {len(config.connections)} connection(s), "
              + ("all targets reachable" if not unreachable else f"{len(unreachable)} target(s) unreachable"), file=sys.stderr)
        return 1 if unreachable else 0
    setup_logging(log_format or config.log_format, config.log_level)
    provider = setup_tracing(config.tracing_exporter, config.tracing_service_name)
    for key, problem in unreachable.items():
        # The local service may start after the agent (service ordering); requests get 502 until it does.
        _log.warning("%s: %s", key, problem, extra={"fields": {"event": "target_unreachable", "key": key}})

    agent = Agent(config)
    health = HealthServer(agent, config.health_host, config.health_port) if config.health_enabled else None
    health_cfg = (config.health_host, config.health_port) if config.health_enabled else None
    stop = asyncio.Event()
    reloads: list[asyncio.Task] = []

    async def reload() -> None:
        nonlocal health, health_cfg
        try:
            new = load_config(path, environ)
        except ConfigError as exc:
            _log.error("reload refused, the running configuration stays: %s", "; ".join(exc.problems),
                       extra={"fields": {"event": "reload_failed"}})
            return
        setup_logging(log_format or new.log_format, new.log_level)
        await agent.reload(new)
        wanted = (new.health_host, new.health_port) if new.health_enabled else None
        if wanted != health_cfg:
            if health is not None:
                await health.stop()
                health = None
            if wanted is not None:
                health = HealthServer(agent, *wanted)
                await health.start()
            health_cfg = wanted

    def on_hup() -> None:
        _log.info("SIGHUP: reloading %s", path, extra={"fields": {"event": "reload"}})
        if reloads and not reloads[-1].done():
            reloads.append(asyncio.ensure_future(_after(reloads[-1], reload)))
        else:
            reloads.append(asyncio.ensure_future(reload()))

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        if health is not None:
            await health.start()
        await agent.start()
        _log.info("agent started with %d connection(s)", len(config.connections),
                  extra={"fields": {"event": "started", "connections": ",".join(c.name for c in config.connections)}})
        await stop.wait()
        _log.info("draining for up to %g s", agent.config.drain_timeout,
                  extra={"fields": {"event": "draining", "drain_timeout_s": agent.config.drain_timeout}})
        if health is not None:
            health.draining = True
        for task in reloads:
            task.cancel()
        await agent.stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if health is not None:
            await health.stop()
        if provider is not None:
            provider.shutdown()  # flush the spans still in the batch
    _log.info("stopped", extra={"fields": {"event": "exit", "status": 0}})
    return 0


async def _after(previous: asyncio.Task, then) -> None:
    await asyncio.gather(previous, return_exceptions=True)
    await then()
