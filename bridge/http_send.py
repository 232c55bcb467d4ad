"""HTTP send: ``/api/relay/{connection}/{*path}`` → the on-premises listener, and its answer back.

HTTP mode (default): the request's method, body, the allow-listed headers (:mod:`bridge.headers`)
and query string (minus the function key ``code`` and ``mode``) go to the hybrid connection; the
listener's status, allow-listed headers and body come back. WebSocket mode (``?mode=ws`` or header
``X-Relay-Mode: ws``): the body is sent as one WebSocket message (text for ``text/*`` and JSON
bodies that are valid UTF-8, binary otherwise) and the function answers ``202``.
Failures answer JSON ``{"error", "message", "transient"}`` with the status of
:class:`bridge.sender.SendFailure` (404 unknown connection, 413 too large, 500 identity/role
problems, 503 + Retry-After no listener, 504 listener timeout).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from urllib.parse import quote, urlsplit

import azure.functions as func
from opentelemetry.trace import SpanKind

from relay import tracing

from .headers import MODE_HEADER, request_headers, response_headers, strip_credentials_from_query
from .sender import MAX_BODY_BYTES, SendFailure, resolve_target, send_http, send_ws, tracing_idle
from .settings import SettingsError, get_settings

log = logging.getLogger("bridge.http_send")

bp = func.Blueprint()

ROUTE = "relay"
"""The literal first segment of this function's route (``relay/{connection}/{*path}``)."""
_CONTROL_PARAMS = frozenset({"code", "mode"})
"""Query parameters meant for the host and the bridge (the function key, the send mode); never forwarded."""


@functools.cache
def route_prefix() -> str:
    """host.json ``extensions.http.routePrefix`` (``api`` when unset), as the host applies it."""
    try:
        config = json.loads((Path(__file__).resolve().parent.parent / "host.json").read_text())
        prefix = config.get("extensions", {}).get("http", {}).get("routePrefix", "api")
    except (OSError, ValueError, AttributeError):
        prefix = "api"
    return str(prefix).strip("/")


def raw_target(req: func.HttpRequest) -> tuple[str, str]:
    """``/{connection}/{path}`` exactly as it arrived (percent-encoded, dot segments unresolved) and the raw query.

    Taken from the request URL the host hands over, never from the decoded route params: a
    decoded ``%2F`` or ``%2e%2e`` would already have changed the segmentation. (Azure's front
    end removes dot segments and decodes everything but ``%2F`` before routing; devhost passes
    the raw path, which is stricter: such paths are refused with 400 instead of resolved.) When
    the URL does not carry the route (a rewriting proxy), the route params are re-encoded, so
    what they decoded to is checked by the same canonical rules.
    """
    parts = urlsplit(req.url or "")
    lead = "/" + "/".join(p for p in (route_prefix(), ROUTE) if p) + "/"
    if parts.path.lower().startswith(lead.lower()):
        path = parts.path[len(lead) - 1:]
    else:
        connection = req.route_params.get("connection", "")
        rest = req.route_params.get("path") or ""
        path = "/" + quote(connection, safe="/") + ("/" + quote(rest, safe="/") if rest else "")
    return path, parts.query


def error_response(failure: SendFailure) -> func.HttpResponse:
    headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after else None
    return func.HttpResponse(json.dumps(failure.to_json()), status_code=failure.status, mimetype="application/json", headers=headers)


def settings_error_response(exc: SettingsError) -> func.HttpResponse:
    body = {"error": "configuration", "message": str(exc), "transient": False}
    return func.HttpResponse(json.dumps(body), status_code=500, mimetype="application/json")


def _is_text(content_type: str) -> bool:
    lowered = content_type.lower()
    return lowered.startswith("text/") or "json" in lowered or "xml" in lowered


@bp.route(route="relay/{connection}/{*path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def relay_send(req: func.HttpRequest) -> func.HttpResponse:
    """Forward the request to an on-premises listener over Relay (HTTP or WebSocket mode)."""
    headers = req.headers
    if tracing_idle() and "traceparent" not in headers and "tracestate" not in headers:
        # Nothing would record and there is no trace to continue: the span would be a no-op
        # whose context is empty, so skip building it (it cost more than the rest of the app's work).
        return await _relay_send(req)
    with tracing.span(tracing.FUNCTION_INVOCATION, kind=SpanKind.SERVER, context=tracing.extract(dict(headers.items())),
                      attributes={"faas.trigger": "http", "faas.name": "relay_send"}):  # continues the caller's traceparent
        return await _relay_send(req)


async def _relay_send(req: func.HttpRequest) -> func.HttpResponse:
    try:
        settings = get_settings()
    except SettingsError as exc:
        log.error("%s", exc)
        return settings_error_response(exc)
    try:
        path, raw_query = raw_target(req)
        query = strip_credentials_from_query(raw_query, also=_CONTROL_PARAMS)
        connection, target = resolve_target(settings, path + (f"?{query}" if query else ""))
        body = req.get_body() or b""
        if len(body) > MAX_BODY_BYTES:
            raise SendFailure(413, "payload_too_large", f"the body has {len(body)} bytes; the bridge relays at most {MAX_BODY_BYTES}", False)
        headers = request_headers(req.headers.items())
        modes = [v for k, v in req.params.items() if k.lower() == "mode"]
        mode = (modes[0] if modes else req.headers.get(MODE_HEADER) or "http").strip().lower()
        if mode in ("ws", "websocket"):
            content_type = req.headers.get("Content-Type", "")
            message: bytes | str = body
            if _is_text(content_type):
                try:
                    message = body.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            await send_ws(settings, connection, message=message, path=target, headers=headers)
            result = {"status": "sent", "mode": "websocket", "connection": connection, "bytes": len(body)}
            return func.HttpResponse(json.dumps(result), status_code=202, mimetype="application/json")
        if mode != "http":
            raise SendFailure(400, "bad_mode", f"mode {mode!r} is not supported; use 'http' (default) or 'ws'", False)
        reply = await send_http(settings, connection, method=req.method, path=target, body=body, headers=headers)
    except SendFailure as failure:
        log.warning("relay send to %s failed: %s %s", req.route_params.get("connection"), failure.status, failure.message)
        return error_response(failure)
    out_headers = response_headers(reply.headers.items())
    # The listener's Content-Type travels as a header (it wins over mimetype in the worker).
    return func.HttpResponse(reply.body, status_code=reply.status, headers=out_headers, mimetype="application/octet-stream")
