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

import json
import logging
from urllib.parse import urlencode

import azure.functions as func
from opentelemetry.trace import SpanKind

from relay import tracing

from .headers import MODE_HEADER, request_headers, response_headers
from .sender import MAX_BODY_BYTES, SendFailure, resolve_connection, send_http, send_ws
from .settings import SettingsError, get_settings

log = logging.getLogger("bridge.http_send")

bp = func.Blueprint()

_CONTROL_PARAMS = {"code", "mode"}


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
    with tracing.span(tracing.FUNCTION_INVOCATION, kind=SpanKind.SERVER, context=tracing.extract(dict(req.headers.items())),
                      attributes={"faas.trigger": "http", "faas.name": "relay_send"}):  # continues the caller's traceparent
        return await _relay_send(req)


async def _relay_send(req: func.HttpRequest) -> func.HttpResponse:
    try:
        settings = get_settings()
    except SettingsError as exc:
        log.error("%s", exc)
        return settings_error_response(exc)
    try:
        connection, path = resolve_connection(settings, req.route_params.get("connection", ""), req.route_params.get("path") or "")
        body = req.get_body() or b""
        if len(body) > MAX_BODY_BYTES:
            raise SendFailure(413, "payload_too_large", f"the body has {len(body)} bytes; the bridge relays at most {MAX_BODY_BYTES}", False)
        query = urlencode([(k, v) for k, v in req.params.items() if k not in _CONTROL_PARAMS])
        target = path + (f"?{query}" if query else "")
        headers = request_headers(req.headers.items())
        mode = (req.params.get("mode") or req.headers.get(MODE_HEADER) or "http").lower()
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
