"""The agent's Prometheus metrics (one registry per agent, so tests and embedders never collide).

=============================================  ======================================================
``relay_agent_requests_total``                 relayed HTTP requests by ``connection`` and
                                               ``status_class`` (``2xx`` ... ``5xx``) sent back
``relay_agent_websockets_total``               relayed WebSocket streams by ``connection`` and
                                               ``status_class`` (``1xx`` = piped, else refused/failed)
``relay_agent_websockets_open``                streams being piped now
``relay_agent_bytes_received_total``           body / message bytes from senders
``relay_agent_bytes_sent_total``               body / message bytes back to senders
``relay_agent_local_request_seconds``          histogram: time the local service took to answer
``relay_agent_listener_online``                1 while the connection's control channel is up
``relay_agent_reconnects_total``               times the control channel came back after a drop
``relay_agent_connect_failures_total``         failed attempts to (re)connect
``relay_agent_token_refreshes_total``          tokens obtained for the connection's credential
``relay_agent_token_expiry_timestamp_seconds`` when the current token expires (Unix time)
=============================================  ======================================================
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..forward import ForwardObserver

__all__ = ["AgentMetrics", "status_class"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 55)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class AgentMetrics:
    """All metric families of one agent in their own :class:`CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("relay_agent_requests", "Relayed HTTP requests answered", ["connection", "status_class"], registry=r)
        self.websockets = Counter("relay_agent_websockets", "Relayed WebSocket streams (1xx: piped; else refused or failed)",
                                  ["connection", "status_class"], registry=r)
        self.websockets_open = Gauge("relay_agent_websockets_open", "WebSocket streams being piped now", ["connection"], registry=r)
        self.bytes_in = Counter("relay_agent_bytes_received", "Body and message bytes received from senders", ["connection"], registry=r)
        self.bytes_out = Counter("relay_agent_bytes_sent", "Body and message bytes sent back to senders", ["connection"], registry=r)
        self.latency = Histogram("relay_agent_local_request_seconds", "Time the local service took to answer a request",
                                 ["connection"], buckets=_LATENCY_BUCKETS, registry=r)
        self.online = Gauge("relay_agent_listener_online", "1 while the connection's control channel is up", ["connection"], registry=r)
        self.reconnects = Counter("relay_agent_reconnects", "Times the control channel came back after a drop", ["connection"], registry=r)
        self.connect_failures = Counter("relay_agent_connect_failures", "Failed attempts to connect the control channel",
                                        ["connection"], registry=r)
        self.token_refreshes = Counter("relay_agent_token_refreshes", "Tokens obtained for the connection's credential",
                                       ["connection"], registry=r)
        self.token_expiry = Gauge("relay_agent_token_expiry_timestamp_seconds", "When the current token expires (Unix time)",
                                  ["connection"], registry=r)

    def add_connection(self, name: str) -> None:
        """Create a connection's series at zero, so dashboards see them before the first event."""
        for family in (self.websockets_open, self.online, self.token_expiry):
            family.labels(name).set(0)
        for family in (self.bytes_in, self.bytes_out, self.reconnects, self.connect_failures, self.token_refreshes):
            family.labels(name)

    def remove_connection(self, name: str) -> None:
        """Drop a connection's series (it was removed from the configuration)."""
        for family in (self.websockets_open, self.online, self.token_expiry, self.bytes_in, self.bytes_out, self.latency,
                       self.reconnects, self.connect_failures, self.token_refreshes):
            try:
                family.remove(name)
            except KeyError:
                pass
        for family in (self.requests, self.websockets):
            for labels in list(family._metrics):  # prometheus_client has no public "labels of a family"
                if labels[0] == name:
                    family.remove(*labels)

    def observer(self, name: str) -> ForwardObserver:
        """The hooks a connection's :class:`~relay.forward.Forwarder` calls."""
        return _Observer(self, name)


class _Observer(ForwardObserver):
    def __init__(self, metrics: AgentMetrics, name: str):
        self.m = metrics
        self.name = name

    def request_done(self, request_id: str, method: str, status: int, bytes_in: int, bytes_out: int,
                     seconds: float | None) -> None:
        m, name = self.m, self.name
        m.requests.labels(name, status_class(status)).inc()
        m.bytes_in.labels(name).inc(bytes_in)
        m.bytes_out.labels(name).inc(bytes_out)
        if seconds is not None:
            m.latency.labels(name).observe(seconds)

    def websocket_opened(self, stream_id: str) -> None:
        self.m.websockets_open.labels(self.name).inc()

    def websocket_closed(self, stream_id: str, status: int, bytes_in: int, bytes_out: int) -> None:
        m, name = self.m, self.name
        m.websockets_open.labels(name).dec()
        m.websockets.labels(name, status_class(status)).inc()
        m.bytes_in.labels(name).inc(bytes_in)
        m.bytes_out.labels(name).inc(bytes_out)

    def websocket_refused(self, stream_id: str, status: int) -> None:
        self.m.websockets.labels(self.name, status_class(status)).inc()
