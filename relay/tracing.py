"""OpenTelemetry for the relay library and the agent: spans and W3C trace context, a no-op until configured.

Only ``opentelemetry-api`` is used here. Without an SDK (or with one but no exporter), every
span is a non-recording no-op and costs next to nothing; a ``traceparent`` that arrived still
passes on unchanged. A program that wants traces installs a
``TracerProvider`` (the agent does, with ``[tracing] exporter = ...``; the Functions app with
the Azure Monitor distro).

Trace context travels as W3C ``traceparent`` / ``tracestate`` HTTP headers, through Relay
(which passes request headers to the listener) and on to the local service:

    caller ── relay request (CLIENT) ──► Relay ──► agent forward (SERVER) ──► local service
                  traceparent: A                     parent A; sends traceparent: B

Span names (one vocabulary for the library, the agent and the app): :data:`RELAY_REQUEST`,
:data:`RELAY_CONNECT`, :data:`AGENT_FORWARD`, :data:`TOKEN_ACQUISITION`, :data:`FUNCTION_INVOCATION`,
:data:`QUEUE_STORE`, :data:`CLAIM_CHECK_UPLOAD`, :data:`LISTENER_WINDOW`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, MutableMapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .paths import CanonicalPath

__all__ = [
    "AGENT_FORWARD",
    "CLAIM_CHECK_UPLOAD",
    "FUNCTION_INVOCATION",
    "LISTENER_WINDOW",
    "QUEUE_STORE",
    "RELAY_CONNECT",
    "RELAY_REQUEST",
    "TOKEN_ACQUISITION",
    "TRACE_HEADERS",
    "carry",
    "extract",
    "inject",
    "relay_request",
    "set_http_status",
    "span",
    "tracer",
]

RELAY_REQUEST = "relay request"
"""A sender's HTTP request through Relay (CLIENT)."""
RELAY_CONNECT = "relay connect"
"""A sender's WebSocket through Relay (CLIENT)."""
AGENT_FORWARD = "agent forward"
"""The agent (or ``relay listen --forward``) handing one relayed request or WebSocket to its local service (SERVER)."""
TOKEN_ACQUISITION = "token acquisition"
"""Getting a token for Relay (INTERNAL); attribute ``relay.token.cache_hit``."""
FUNCTION_INVOCATION = "function invocation"
"""The Functions app handling one trigger (SERVER for HTTP)."""
QUEUE_STORE = "queue store"
"""The bridge storing one inbound message in a queue (PRODUCER); the message's ``traceparent`` field continues it."""

CLAIM_CHECK_UPLOAD = "claim-check upload"
"""The bridge putting a large inbound body in a blob (child of its :data:`QUEUE_STORE`)."""
LISTENER_WINDOW = "listener window"
"""One durable listener activity window (INTERNAL, a root span); its counts are attributes at the end."""

TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
"""The W3C trace-context headers (lower case); a forwarder replaces them with its own span's."""

_INSTRUMENTATION = "relay"


def tracer() -> trace.Tracer:
    """The library's tracer from the current global provider (looked up per call, so a provider set later is used)."""
    return trace.get_tracer(_INSTRUMENTATION)


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context carried by ``headers`` (``traceparent``/``tracestate``, any case); empty when none."""
    if not headers:
        return Context()
    carrier = {k.lower(): v for k, v in headers.items() if k.lower() in TRACE_HEADERS}
    return propagate.extract(carrier) if carrier else Context()


def inject(headers: MutableMapping[str, str] | None = None, context: Context | None = None) -> dict[str, str]:
    """Put the current (or ``context``'s) trace headers into ``headers``, replacing any there; returns just those.

    Without an SDK, spans are non-recording and carry their parent's context: a ``traceparent``
    that arrived (and was extracted into the current context) is passed on unchanged, and with no
    context at all nothing is added and ``headers`` keeps what it had. Either way an unconfigured
    process never breaks a trace that goes through it.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    if headers is not None and carrier:
        for key in [k for k in headers if k.lower() in TRACE_HEADERS]:
            del headers[key]  # whatever case the caller used: one traceparent, ours
        headers.update(carrier)
    return carrier


def carry(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """The trace headers to store with a message: the current span's, or (nothing recording here)
    the W3C headers found in ``headers``, so a trace continues through a process that does not record.
    """
    current = inject()
    if current or not headers:
        return current
    return {k.lower(): v for k, v in headers.items() if k.lower() in TRACE_HEADERS}


@contextlib.contextmanager
def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, context: Context | None = None,
         attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
    """Start ``name`` as the current span (child of ``context`` when given); exceptions are recorded and mark it failed.

    A relay error's TrackingId (``RelayError.tracking_id``, what Azure support asks for) becomes ``relay.tracking_id``.
    Without a configured provider and without ``context``, this yields the current (non-recording) span and does
    nothing else: the same propagated context as a new no-op span, at a tenth of the cost on hot paths (token cache hits).
    """
    if context is None and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        yield trace.get_current_span()
        return
    with tracer().start_as_current_span(name, context=context, kind=kind, attributes=dict(attributes or {}),
                                        record_exception=True, set_status_on_exception=True) as current:
        try:
            yield current
        except BaseException as exc:
            tracking_id = getattr(exc, "tracking_id", None)
            if tracking_id and current.is_recording():
                current.set_attribute("relay.tracking_id", str(tracking_id))
            raise


def set_http_status(current: Span, status: int) -> None:
    """Record an HTTP status on ``current``; 5xx marks the span as failed (4xx is the caller's problem, as in OTel's HTTP rules)."""
    current.set_attribute("http.response.status_code", status)
    if status >= 500:
        current.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))


@contextlib.contextmanager
def relay_request(method: str, address: str, path: str | CanonicalPath = "/") -> Iterator[dict[str, str]]:
    """A CLIENT span for one request through Relay; yields the trace headers to send with it.

    For callers (and the client library) that send through Relay::

        with tracing.relay_request("POST", client.address, "/orders") as trace_headers:
            resp = await client.request("POST", "/orders", headers={**headers, **trace_headers})
    """
    bare = path.path if isinstance(path, CanonicalPath) else str(path).partition("?")[0]  # queries may hold secrets
    attributes = {"http.request.method": method, "url.full": address.rstrip("/") + bare}
    with span(RELAY_REQUEST, kind=SpanKind.CLIENT, attributes=attributes):
        yield inject()
