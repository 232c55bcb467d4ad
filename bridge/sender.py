"""Sending to on-premises listeners: the core shared by the HTTP and the queue functions.

One :class:`relay.client.HybridConnectionClient` per hybrid connection per worker process
(its HTTP connection pool and, through the shared credential, one token cache). Failures are
turned into :class:`SendFailure`, which says what the caller can do: the HTTP status to
answer, a stable error code, a message naming the cause, and whether retrying can help.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Mapping

from azure.core.exceptions import ClientAuthenticationError

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from relay import tracing
from relay.client import HybridConnectionClient
from relay.paths import CanonicalPath, PathError, canonical_path, split_connection
from relay.errors import (
    AuthorizationFailedError,
    ConnectionLostError,
    EndpointNotFoundError,
    ForbiddenError,
    NoListenerError,
    PayloadTooLargeError,
    RejectedError,
    RelayError,
    RelayTimeoutError,
)

from .credentials import get_credential
from .settings import RELAY_OUTBOUND_CONNECTIONS, Settings

MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest request body the bridge relays (4 MiB); larger bodies answer 413."""
REQUEST_TIMEOUT = 70.0
"""Seconds to wait for the listener's response headers (Relay itself gives up after 60 s with 504)."""
RETRY_AFTER_SECONDS = 5
MIN_STATUS, MAX_STATUS = 200, 599
"""The listener statuses passed on; anything else (1xx, 600-999) answers 502 ``bad_listener_status``."""
"""Retry-After sent with 503 when no listener is connected or the connection dropped."""

_clients: dict[tuple, HybridConnectionClient] = {}
_MAX_TARGETS = 256
_targets: dict[tuple[str, tuple[str, ...]], tuple[str, CanonicalPath]] = {}
"""Accepted raw targets (text, allow-list) -> their :func:`resolve_target` answer, so a path repeated by callers
is checked once (bounded: cleared when full)."""


@dataclass
class SendFailure(Exception):
    """Why a send failed, in terms a caller can act on."""

    status: int
    code: str
    message: str
    transient: bool
    retry_after: int | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_json(self) -> dict:
        return {"error": self.code, "message": self.message, "transient": self.transient}


@dataclass
class RelayReply:
    """The on-premises listener's answer (headers not yet filtered)."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes = field(repr=False)


def unknown_connection(settings: Settings, connection: str) -> SendFailure:
    return SendFailure(
        404, "unknown_connection",
        f"hybrid connection {connection!r} is not in {RELAY_OUTBOUND_CONNECTIONS}; the app only sends to: "
        + ", ".join(settings.outbound_connections),
        transient=False,
    )


def bad_path(exc: PathError) -> SendFailure:
    return SendFailure(400, "bad_path", f"{exc}; send the path without dot segments or encoded separators", False)


def resolve_target(settings: Settings, raw: str | CanonicalPath) -> tuple[str, CanonicalPath]:
    """Split ``{connection}/{path}?{query}`` as it arrived (raw, percent-encoded) into an allowed connection and the rest.

    The one place where the outbound allow-list is checked: ``raw`` goes through
    :func:`relay.paths.canonical_path` once (dot segments, encoded ``/``, control characters:
    400 ``bad_path``), then the longest name in ``RELAY_OUTBOUND_CONNECTIONS`` matching at a
    segment boundary wins (case-insensitive, as in Azure), so names with '/' (``orders/eu``)
    work. No match: 404 ``unknown_connection``. The returned :class:`CanonicalPath` is what is
    sent; no later layer changes it.
    """
    key = (raw, settings.outbound_connections) if isinstance(raw, str) else None
    if key is not None:
        known = _targets.get(key)
        if known is not None:
            return known
    try:
        path = raw if isinstance(raw, CanonicalPath) else canonical_path(raw, what="request path")
    except PathError as exc:
        raise bad_path(exc) from None
    match = split_connection(path, settings.outbound_connections)
    if match is None:
        raise unknown_connection(settings, path.segments[0] if path.segments else "")
    if key is not None:  # the same text against the same allow-list always gives this answer (refusals are not kept)
        if len(_targets) >= _MAX_TARGETS:
            _targets.clear()
        _targets[key] = match
    return match


def resolve_connection(settings: Settings, connection: str, path: str = "") -> tuple[str, str]:
    """``(connection, "/rest")`` for a ``{connection}`` and a ``{path}`` below it (see :func:`resolve_target`)."""
    name, rest = resolve_target(settings, f"/{connection}/{path}" if path else f"/{connection}")
    return name, rest.target


def client_for(settings: Settings, connection: str) -> HybridConnectionClient:
    """The process-wide client for ``connection`` (created on first use)."""
    key = (settings.relay_address(connection), settings.relay_client_id, settings.relay_ca_file)
    client = _clients.get(key)
    if client is None:
        client = HybridConnectionClient(
            settings.relay_address(connection), get_credential(settings.relay_client_id), connection_verify=settings.connection_verify
        )
        _clients[key] = client
    return client


async def close_clients() -> None:
    """Close and forget every cached Relay client."""
    clients = list(_clients.values())
    _clients.clear()
    for client in clients:
        await client.close()


def classify(exc: BaseException, settings: Settings, connection: str) -> SendFailure:
    """Map a relay, identity or network error to a :class:`SendFailure`."""
    where = f"hybrid connection {connection!r} in namespace {settings.relay_namespace}"
    identity = f"user-assigned identity {settings.relay_client_id}" if settings.relay_client_id else "system-assigned identity"
    detail = str(exc)
    if isinstance(exc, SendFailure):
        return exc
    if isinstance(exc, PathError):
        return bad_path(exc)
    if isinstance(exc, NoListenerError):
        return SendFailure(503, "no_listener", f"no on-premises listener is connected to {where}; retry later", True, RETRY_AFTER_SECONDS)
    if isinstance(exc, RelayTimeoutError):
        return SendFailure(504, "listener_timeout", f"the listener on {where} did not answer in time", True)
    if isinstance(exc, ForbiddenError):
        return SendFailure(
            500, "relay_forbidden",
            f"the app's identity ({identity}) lacks the Azure Relay Sender role on {where}; assign the role "
            f"(it takes up to five minutes to apply). Relay said: {detail}",
            False,
        )
    if isinstance(exc, AuthorizationFailedError):
        return SendFailure(
            500, "relay_token_refused",
            f"Relay refused the app's token for {where} ({identity}); check RELAY_CLIENT_ID and that the identity "
            f"belongs to the namespace's tenant. Relay said: {detail}",
            False,
        )
    if isinstance(exc, EndpointNotFoundError):
        return SendFailure(404, "unknown_connection", f"{where} does not exist; check RELAY_NAMESPACE and the connection name", False)
    if isinstance(exc, PayloadTooLargeError):
        return SendFailure(413, "payload_too_large", f"the payload is too large for {where}: {detail}", False)
    if isinstance(exc, RejectedError):
        return SendFailure(502, "rejected", f"the listener on {where} refused the WebSocket: {detail}", False)
    if isinstance(exc, ConnectionLostError):
        return SendFailure(503, "connection_lost", f"the connection to {where} failed: {detail}", True, RETRY_AFTER_SECONDS)
    if isinstance(exc, RelayError):
        return SendFailure(502, "relay_error", f"Relay failed for {where}: {detail}", exc.is_transient,
                           RETRY_AFTER_SECONDS if exc.is_transient else None)
    if isinstance(exc, ClientAuthenticationError):
        return SendFailure(
            500, "identity_unavailable",
            f"could not get a managed identity token for Relay ({identity}): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}",
            True,
        )
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return SendFailure(503, "network", f"network error reaching {where}: {type(exc).__name__}: {detail}", True, RETRY_AFTER_SECONDS)
    return SendFailure(500, "internal", f"unexpected {type(exc).__name__} sending to {where}: {detail}", True)


def tracing_idle() -> bool:
    """True when spans would be no-ops that carry nothing: no tracer provider is installed and no span is current.

    Then a span costs its set-up for nothing and :func:`relay.tracing.inject` adds no header, so
    the hot paths skip both. With a provider, or inside a continued trace (a caller's
    ``traceparent`` extracted into the current context), this is False and every span and
    header is made as before.
    """
    return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider) and not trace.get_current_span().get_span_context().is_valid


async def send_http(
    settings: Settings,
    connection: str,
    *,
    method: str,
    path: str | CanonicalPath,
    body: bytes,
    headers: Mapping[str, str],
    timeout: float | None = None,
) -> RelayReply:
    """Relay one HTTP request; returns the listener's reply (any status) or raises :class:`SendFailure`."""
    if len(body) > MAX_BODY_BYTES:
        raise SendFailure(413, "payload_too_large", f"the body has {len(body)} bytes; the bridge relays at most {MAX_BODY_BYTES}", False)
    client = client_for(settings, connection)
    try:
        if tracing_idle():
            return await _exchange(client, connection, method, path or "/", body, headers, timeout)
        with tracing.relay_request(method, client.address, path or "/"):
            headers = dict(headers)
            tracing.inject(headers)  # this span's W3C trace context goes to the listener
            return await _exchange(client, connection, method, path or "/", body, headers, timeout)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a SendFailure
        raise classify(exc, settings, connection) from exc


async def _exchange(client: HybridConnectionClient, connection: str, method: str, path: str | CanonicalPath, body: bytes,
                    headers: Mapping[str, str], timeout: float | None) -> RelayReply:
    response = await client.request(method, path, body=body or None, headers=headers, timeout=timeout or REQUEST_TIMEOUT)
    async with response:
        if not MIN_STATUS <= response.status <= MAX_STATUS:
            raise SendFailure(
                502, "bad_listener_status",
                f"the listener on hybrid connection {connection!r} answered status {response.status}, which is not a "
                f"final HTTP status ({MIN_STATUS}-{MAX_STATUS}); fix the on-premises service",
                False,
            )
        data = await response.read()
        return RelayReply(response.status, response.reason, response.headers, data)


async def send_ws(
    settings: Settings, connection: str, *, message: bytes | str, path: str | CanonicalPath = "", headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> None:
    """Open a relayed WebSocket, send ``message`` as one message, close. Raises :class:`SendFailure`."""
    size = len(message.encode("utf-8") if isinstance(message, str) else message)
    if size > MAX_BODY_BYTES:
        raise SendFailure(413, "payload_too_large", f"the message has {size} bytes; the bridge relays at most {MAX_BODY_BYTES}", False)
    client = client_for(settings, connection)
    try:
        with tracing.span(tracing.RELAY_CONNECT, kind=SpanKind.CLIENT):
            headers = dict(headers or {})
            tracing.inject(headers)
            stream = await client.connect(path=path, headers=headers, timeout=timeout or REQUEST_TIMEOUT)
            async with stream:
                await stream.send(message)
    except Exception as exc:  # noqa: BLE001
        raise classify(exc, settings, connection) from exc
