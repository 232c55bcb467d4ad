"""Which HTTP headers cross the bridge.

Outbound (caller → on-premises listener) and back (listener → caller) use allow-lists, so
credentials and platform headers never leak: ``Authorization``, ``x-functions-key``,
``Cookie``/``Set-Cookie``, ``ServiceBusAuthorization`` and the App Service / Functions
``X-MS-*``, ``X-ARR-*``, ``X-Forwarded-*`` headers are always dropped.

Forwarded to the listener: ``Content-Type``, ``Content-Language``, ``Accept``,
``Accept-Language``, ``If-Match``, ``If-None-Match``, ``Idempotency-Key``, ``traceparent``,
``tracestate`` and any ``X-*`` header not on the deny list.
Returned to the caller: ``Content-Type``, ``Content-Language``, ``Content-Disposition``,
``Cache-Control``, ``ETag``, ``Last-Modified``, ``Retry-After`` and ``X-*`` (same deny list).
"""

from __future__ import annotations

from typing import Iterable, Mapping

REQUEST_HEADERS = frozenset(
    h.lower()
    for h in (
        "Content-Type", "Content-Language", "Accept", "Accept-Language", "If-Match", "If-None-Match",
        "Idempotency-Key", "traceparent", "tracestate",
    )
)
RESPONSE_HEADERS = frozenset(
    h.lower()
    for h in ("Content-Type", "Content-Language", "Content-Disposition", "Cache-Control", "ETag", "Last-Modified", "Retry-After")
)
_DENIED_PREFIXES = ("x-ms-", "x-arr-", "x-forwarded-", "x-original-", "x-waws-", "x-site-", "x-appservice-", "x-functions-")
_DENIED_FRAGMENTS = ("authorization", "cookie", "functions-key", "token", "secret", "password")
MODE_HEADER = "X-Relay-Mode"
"""The bridge's own control header (``ws`` selects WebSocket mode); never forwarded."""
IDEMPOTENCY_HEADER = "Idempotency-Key"
MESSAGE_ID_HEADER = "X-Relay-Message-Id"


_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class HeaderError(ValueError):
    """A header name or value that no HTTP layer may carry (CR, LF, NUL or another control character)."""


def check_header(name: str, value: str) -> None:
    """Raise :class:`HeaderError` unless ``name`` is an RFC 9110 token and ``value`` has no control characters (tab allowed)."""
    if not name or not set(name) <= _TOKEN_CHARS:
        raise HeaderError(f"header name {name!r} is not a valid token (letters, digits and !#$%&'*+-.^_`|~ only)")
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        raise HeaderError(f"the value of header {name!r} contains a control character (CR, LF, NUL or similar)")


def _denied(name: str) -> bool:
    lowered = name.lower()
    return (
        lowered.startswith(_DENIED_PREFIXES)
        or any(fragment in lowered for fragment in _DENIED_FRAGMENTS)
        or lowered == MODE_HEADER.lower()
    )


def _filter(headers: Mapping[str, str] | Iterable[tuple[str, str]], allowed: frozenset[str]) -> dict[str, str]:
    items = headers.items() if hasattr(headers, "items") else headers
    out: dict[str, str] = {}
    for name, value in items:
        lowered = name.lower()
        if _denied(lowered):
            continue
        if lowered in allowed or lowered.startswith("x-"):
            out[name] = value
    return out


def request_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """The caller's headers that may go to the on-premises listener."""
    return _filter(headers, REQUEST_HEADERS)


def response_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """The listener's response headers that may go back to the caller."""
    return _filter(headers, RESPONSE_HEADERS)


def inbound_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers of a request received from Relay, as stored in the inbound message (credentials dropped)."""
    items = headers.items() if hasattr(headers, "items") else headers
    return {name: value for name, value in items if not any(f in name.lower() for f in _DENIED_FRAGMENTS)}
