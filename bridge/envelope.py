"""The outbound queue envelope (``relay-outbound``): parse and validate.

A message is an *envelope* when it is a JSON object with a ``"connection"`` or
``"bodyBase64"`` key, or with a ``"body"`` key and nothing but envelope keys::

    {"id": "order-42",            # optional; default: the queue message id. Sent as Idempotency-Key
     "connection": "orders",      # optional; default RELAY_DEFAULT_CONNECTION; must be outbound
     "path": "/api/orders",       # optional; default "/"; relative to the hybrid connection, may carry ?query
     "method": "POST",            # optional; default POST
     "headers": {"Content-Type": "application/json"},   # optional; same allow-list as HTTP send
     "body": "text"  |  "bodyBase64": "AAEC..."}        # at most one of the two

Anything else (other JSON, plain text, bytes) is a *plain* message: its bytes are POSTed to
``/`` on ``RELAY_DEFAULT_CONNECTION`` with a Content-Type guessed from the bytes.
A malformed envelope raises :class:`EnvelopeError` (a permanent failure: poison).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

from relay.paths import ROOT, CanonicalPath, PathError, canonical_name, canonical_path

from .headers import IDEMPOTENCY_HEADER, HeaderError, check_header, request_headers, strip_credentials_from_query

ENVELOPE_KEYS = frozenset({"id", "connection", "path", "method", "headers", "body", "bodyBase64"})
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class EnvelopeError(ValueError):
    """The message looks like an envelope but is malformed (the message says which field). Always permanent."""


@dataclass(frozen=True)
class OutboundMessage:
    """What to send: resolved connection, method, path, filtered headers and body bytes."""

    id: str
    connection: str
    method: str
    path: CanonicalPath
    headers: dict[str, str]
    body: bytes = field(repr=False)
    is_envelope: bool


def _guess_content_type(body: bytes) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    try:
        json.loads(text)
        return "application/json"
    except ValueError:
        return "text/plain; charset=utf-8"


def is_envelope(data: object) -> bool:
    """True when ``data`` (parsed JSON) is meant as an envelope (see the module docs)."""
    if not isinstance(data, dict):
        return False
    if "connection" in data or "bodyBase64" in data:
        return True
    return "body" in data and set(data) <= ENVELOPE_KEYS


def parse_message(raw: bytes, *, message_id: str, default_connection: str) -> OutboundMessage:
    """Turn a queue message body into an :class:`OutboundMessage`; raises :class:`EnvelopeError`.

    Every parse or validation failure is an :class:`EnvelopeError` (never a RecursionError or a
    header error surfacing later as a transient send failure), so the message is poisoned at
    its first attempt with the reason.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    try:
        data = json.loads(text) if text is not None else None
    except ValueError:
        data = None
    except RecursionError:
        raise EnvelopeError("the message's JSON nests arrays or objects too deeply to parse") from None
    if not is_envelope(data):
        _check_id(message_id)
        return OutboundMessage(
            id=message_id, connection=default_connection, method="POST", path=ROOT,
            headers={"Content-Type": _guess_content_type(raw), IDEMPOTENCY_HEADER: message_id}, body=raw, is_envelope=False,
        )
    assert isinstance(data, dict)
    unknown = sorted(set(data) - ENVELOPE_KEYS)
    if unknown:
        raise EnvelopeError(f"unknown envelope key {unknown[0]!r} (allowed: {', '.join(sorted(ENVELOPE_KEYS))})")
    env_id = data.get("id", message_id)
    if not isinstance(env_id, str) or not env_id or len(env_id) > 256:
        raise EnvelopeError("\"id\" must be a non-empty string of at most 256 characters")
    _check_id(env_id)
    connection = data.get("connection", default_connection)
    if not isinstance(connection, str):
        raise EnvelopeError("\"connection\" must be a hybrid connection name")
    try:
        canonical_name(connection, what="\"connection\"")
    except PathError as exc:
        raise EnvelopeError(str(exc)) from None
    raw_path = data.get("path", "/")
    if not isinstance(raw_path, str) or not raw_path.startswith("/"):
        raise EnvelopeError("\"path\" must be a string starting with '/'")
    try:
        path = canonical_path(raw_path, what="\"path\"")
    except PathError as exc:
        raise EnvelopeError(str(exc)) from None
    path = CanonicalPath(path.segments, path.trailing_slash, strip_credentials_from_query(path.query))
    method = data.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise EnvelopeError(f"\"method\" must be one of {', '.join(sorted(METHODS))}")
    headers = data.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise EnvelopeError("\"headers\" must be an object of string values")
    if "body" in data and "bodyBase64" in data:
        raise EnvelopeError("give either \"body\" or \"bodyBase64\", not both")
    if "bodyBase64" in data:
        try:
            body = base64.b64decode(data["bodyBase64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise EnvelopeError("\"bodyBase64\" is not valid base64") from None
    else:
        value = data.get("body", "")
        if isinstance(value, str):
            body = value.encode("utf-8")
        elif value is None:
            body = b""
        else:  # a JSON value: send it as JSON
            try:
                body = json.dumps(value, separators=(",", ":")).encode("utf-8")
            except RecursionError:
                raise EnvelopeError("\"body\" nests arrays or objects too deeply to send as JSON") from None
            headers = {"Content-Type": "application/json", **headers}
    for name, value in headers.items():
        try:
            check_header(name, value)
        except HeaderError as exc:
            raise EnvelopeError(f"\"headers\": {exc}") from None
    forwarded = request_headers(headers)
    forwarded[IDEMPOTENCY_HEADER] = env_id
    return OutboundMessage(
        id=env_id, connection=connection, method=method.upper(), path=path, headers=forwarded, body=body, is_envelope=True,
    )


def _check_id(value: str) -> None:
    """The id travels as the ``Idempotency-Key`` header: it must be a valid header value."""
    try:
        check_header(IDEMPOTENCY_HEADER, value)
    except HeaderError as exc:
        raise EnvelopeError(f"\"id\" (sent as {IDEMPOTENCY_HEADER}): {exc}") from None
