"""The agent at run time: one supervised listener + forwarder per configured connection.

A :class:`ConnectionRunner` keeps its hybrid connection served for as long as the agent runs:
a failed first connect (Relay unreachable, a missing role, an unknown hybrid connection) does not
stop anything; it is reported (``state``, ``last_error``, logs, metrics) and retried with the
library's backoff (:func:`relay.listener.retry_delay`), and so is a listener that goes offline
later. :class:`Agent` owns the runners, applies a reloaded configuration (keeping the runners whose
configuration did not change), and drains on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .._transport import parse_address
from ..forward import Forwarder
from ..listener import HybridConnectionListener, ListenerState, retry_delay
from .config import AgentConfig, ConnectionConfig
from .credentials import CredentialPool
from .metrics import AgentMetrics

__all__ = ["Agent", "ConnectionRunner"]

_log = logging.getLogger("relay.agent")


def _error_text(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


class ConnectionRunner:
    """Serves one configured connection: listener, forwarder, reconnect supervision, metrics."""

    def __init__(self, config: ConnectionConfig, credentials: CredentialPool, metrics: AgentMetrics, drain_timeout: float):
        self.config = config
        self.name = config.name
        self._pool = credentials
        self._metrics = metrics
        self._drain_timeout = drain_timeout
        self.forwarder = Forwarder(config.target, parse_address(config.address).entity, connection=config.name,
                                   observer=metrics.observer(config.name))
        self.listener: HybridConnectionListener | None = None
        self.last_error: str | None = None
        self.state = "starting"
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._credential: Any = None
        self._cred_key: tuple | None = None
        self._kwargs: dict[str, Any] = {}
        self._was_online = False
        self._token_fetches_seen = 0

    def _fields(self, event: str, **extra: Any) -> dict[str, Any]:
        return {"fields": {"event": event, "connection": self.name, **extra}}

    @property
    def is_online(self) -> bool:
        return self.listener is not None and self.listener.is_online

    def status(self) -> dict[str, Any]:
        """``{"state": ..., "address": ..., "error": ...}`` for /readyz."""
        state = self.listener.state if self.listener is not None and self.state == "running" else self.state
        out: dict[str, Any] = {"state": state, "address": self.config.address}
        if self.last_error and state != ListenerState.ONLINE:
            out["error"] = self.last_error
        return out

    async def start(self) -> None:
        self._credential, self._kwargs, self._cred_key = self._pool.acquire(self.config)
        self._metrics.add_connection(self.name)
        await self.forwarder.start()
        self._task = asyncio.ensure_future(self._run())

    def _new_listener(self) -> HybridConnectionListener:
        target = self.config.target
        return HybridConnectionListener(
            self.config.address, self._credential, request_handler=self.forwarder.handle,
            accept_handler=self.forwarder.accept, on_online=self._on_online, on_offline=self._on_offline,
            on_connecting=self._on_connecting,
            # The forwarder answers 504 at target.timeout; the listener's own limit is only a backstop.
            handler_timeout=min(target.timeout + 3.0, 58.0), close_timeout=self._drain_timeout,
            user_agent="relay-agent", **self._kwargs,
        )

    def _on_online(self) -> None:
        if self._was_online:
            self._metrics.reconnects.labels(self.name).inc()
        self._was_online = True
        self.last_error = None
        self._metrics.online.labels(self.name).set(1)
        listener = self.listener
        _log.info("online", extra=self._fields("online", state="online", listener_id=listener.listener_id if listener else None))

    def _on_connecting(self) -> None:
        self._metrics.online.labels(self.name).set(0)
        listener = self.listener
        if listener is not None and listener.last_error is not None:
            self.last_error = _error_text(listener.last_error)
            self._metrics.connect_failures.labels(self.name).inc()
            _log.warning("reconnecting", extra=self._fields("reconnecting", state="connecting", reason=self.last_error))

    def _on_offline(self) -> None:
        self._metrics.online.labels(self.name).set(0)
        listener = self.listener
        if listener is not None and listener.last_error is not None:
            self.last_error = _error_text(listener.last_error)
        if not self._stopping:
            self._wake.set()

    async def _run(self) -> None:
        attempt = 0
        self.state = "running"
        while not self._stopping:
            listener = self.listener = self._new_listener()
            self._wake.clear()
            try:
                await listener.open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = _error_text(exc)
                self._metrics.connect_failures.labels(self.name).inc()
                delay = retry_delay(attempt + 1)
                _log.error("cannot listen; retrying in %g s", delay,
                           extra=self._fields("connect_failed", state="offline", reason=self.last_error, retry_in_s=delay))
                attempt += 1
                await self._sleep(delay)
                continue
            attempt = 0
            self._update_token_metrics_soon()
            acceptor = asyncio.ensure_future(self._accept_loop(listener))
            # The listener reconnects by itself; it goes offline for good only for a 404 (the hybrid
            # connection was deleted) or a bug. Then a new listener starts over with the backoff.
            await self._wake.wait()
            acceptor.cancel()
            if self._stopping:
                return
            await listener.close()
            delay = retry_delay(attempt + 1)
            _log.error("listener went offline; retrying in %g s", delay,
                       extra=self._fields("offline", state="offline", reason=self.last_error, retry_in_s=delay))
            attempt += 1
            await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except asyncio.TimeoutError:
            pass

    async def _accept_loop(self, listener: HybridConnectionListener) -> None:
        async for stream in listener:
            self.forwarder.spawn_pipe(stream)

    def _update_token_metrics_soon(self) -> None:
        asyncio.ensure_future(self.update_token_metrics())

    async def update_token_metrics(self) -> None:
        """Token refresh count and expiry from the listener's token cache (never the token itself)."""
        listener = self.listener
        if listener is None:
            return
        provider = listener.token_provider
        fetched = provider.fetch_count
        if fetched > self._token_fetches_seen:
            self._metrics.token_refreshes.labels(self.name).inc(fetched - self._token_fetches_seen)
            self._token_fetches_seen = fetched
        if not listener.is_online or provider.kind == "none":
            return
        try:
            token = await asyncio.wait_for(provider.get_token(listener.address), 5)  # the cached one while fresh
        except Exception:
            return
        if token is not None:
            self._metrics.token_expiry.labels(self.name).set(token.expires_on)
        fetched = provider.fetch_count
        if fetched > self._token_fetches_seen:
            self._metrics.token_refreshes.labels(self.name).inc(fetched - self._token_fetches_seen)
            self._token_fetches_seen = fetched

    async def stop(self, *, remove_metrics: bool = False) -> None:
        """Stop accepting, let in-flight requests and streams finish (up to the drain timeout), release everything."""
        self._stopping = True
        self.state = "stopping"
        self._wake.set()
        deadline = time.monotonic() + self._drain_timeout
        listener = self.listener
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # close() answers new requests 503 and waits for the ones in flight, up to close_timeout.
        if listener is not None:
            await listener.close()
        pipes = list(self.forwarder._ws_tasks)
        if pipes:
            await asyncio.wait(pipes, timeout=max(0.0, deadline - time.monotonic()))
        await self.forwarder.stop()
        await self._pool.release(self._credential, self._cred_key)
        self._metrics.online.labels(self.name).set(0)
        if remove_metrics:
            self._metrics.remove_connection(self.name)
        self.state = "stopped"
        _log.info("stopped", extra=self._fields("stopped", state="stopped"))


class Agent:
    """All connections of one configuration, reloadable, drained on :meth:`stop`."""

    def __init__(self, config: AgentConfig, metrics: AgentMetrics | None = None):
        self.config = config
        self.metrics = metrics or AgentMetrics()
        self.credentials = CredentialPool()
        self.runners: dict[str, ConnectionRunner] = {}

    async def start(self) -> None:
        for conn in self.config.connections:
            await self._start(conn)

    async def _start(self, conn: ConnectionConfig) -> None:
        runner = ConnectionRunner(conn, self.credentials, self.metrics, self.config.drain_timeout)
        self.runners[conn.name] = runner
        _log.info("serving %s -> %s", conn.address, conn.target.base,
                  extra={"fields": {"event": "connection_configured", "connection": conn.name, "address": conn.address,
                                    "target": str(conn.target.base), "websockets": conn.target.websockets,
                                    "credential": conn.credential.type}})
        await runner.start()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """``(every connection online, status per connection)``."""
        statuses = {name: runner.status() for name, runner in self.runners.items()}
        ready = bool(self.runners) and all(r.is_online for r in self.runners.values())
        return ready, statuses

    async def update_token_metrics(self) -> None:
        await asyncio.gather(*(r.update_token_metrics() for r in self.runners.values()), return_exceptions=True)

    async def reload(self, new: AgentConfig) -> dict[str, list[str]]:
        """Apply ``new``: keep unchanged connections, restart changed ones, start added, drain removed."""
        old = {c.name: c for c in self.config.connections}
        fresh = {c.name: c for c in new.connections}
        kept = [n for n in fresh if n in old and old[n] == fresh[n] and new.drain_timeout == self.config.drain_timeout]
        removed = [n for n in old if n not in fresh]
        changed = [n for n in fresh if n in old and n not in kept]
        added = [n for n in fresh if n not in old]
        self.config = new
        await asyncio.gather(*(self.runners.pop(n).stop(remove_metrics=n in removed) for n in removed + changed))
        for name in changed + added:
            await self._start(fresh[name])
        summary = {"kept": kept, "changed": changed, "added": added, "removed": removed}
        _log.info("configuration reloaded", extra={"fields": {"event": "reloaded", **{k: ",".join(v) for k, v in summary.items()}}})
        return summary

    async def stop(self) -> None:
        """Drain every connection at once (each up to ``drain_timeout``)."""
        runners, self.runners = list(self.runners.values()), {}
        await asyncio.gather(*(r.stop() for r in runners), return_exceptions=True)
