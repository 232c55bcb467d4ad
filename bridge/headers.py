"""Which HTTP headers (and query parameters) cross the bridge: the one credential deny-list.

**Credentials never cross**, in either direction (outbound: relay_send, queue envelopes and the
answers coming back; inbound: the messages the listener window stores). Compared
case-insensitively:

* headers (:func:`is_credential_header`): ``Authorization``, ``Proxy-Authorization``, ``Cookie``,
  ``Set-Cookie``, ``ServiceBusAuthorization``, ``X-Api-Key``, ``Ocp-Apim-Subscription-Key``,
  ``X-Functions-Key`` and every name containing ``authorization``, ``cookie``, ``token``,
  ``secret``, ``password`` or ``key`` (``Idempotency-Key`` excepted: the bridge sets it);
* query parameters (:func:`strip_credentials_from_query`, names percent-decoded first):
  ``code`` (function key), ``sig``, ``sb-hc-token``, the SAS parts ``sv``, ``se``, ``sp``,
  ``skn``, the API-key names ``key``, ``apikey``, ``api-key``, ``api_key``,
  ``subscription-key``, and every name containing ``token``, ``secret`` or ``password``.

Outbound (caller → on-premises listener) and back (listener → caller) also use allow-lists, so
platform headers never leak either: the App Service / Functions ``X-MS-*``, ``X-ARR-*``,
``X-Forwarded-*`` headers are always dropped.

Forwarded to the listener: ``Content-Type``, ``Content-Language``, ``Accept``,
``Accept-Language``, ``If-Match``, ``If-None-Match``, ``Idempotency-Key``, ``traceparent``,
``tracestate`` and any ``X-*`` header not on the deny list.
Returned to the caller: ``Content-Type``, ``Content-Language``, ``Content-Disposition``,
``Cache-Control``, ``ETag``, ``Last-Modified``, ``Retry-After`` and ``X-*`` (same deny list).
"""

from __future__ import annotations

from typing import Iterable, Mapping
from urllib.parse import unquote_plus

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
CREDENTIAL_HEADERS = frozenset(
    h.lower()
    for h in ("Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie", "ServiceBusAuthorization", "X-Api-Key",
              "Ocp-Apim-Subscription-Key", "X-Functions-Key")
)
CREDENTIAL_HEADER_FRAGMENTS = ("authorization", "cookie", "token", "secret", "password", "key")
NOT_CREDENTIAL_HEADERS = frozenset({"idempotency-key"})
CREDENTIAL_QUERY_PARAMS = frozenset(
    {"code", "sig", "sb-hc-token", "sv", "se", "sp", "skn", "key", "apikey", "api-key", "api_key", "subscription-key"}
)
CREDENTIAL_QUERY_FRAGMENTS = ("token", "secret", "password")
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


def is_credential_header(name: str) -> bool:
    """True when the header ``name`` (any case) may carry a credential (see the module docs)."""
    lowered = name.strip().lower()
    if lowered in NOT_CREDENTIAL_HEADERS:
        return False
    return lowered in CREDENTIAL_HEADERS or any(fragment in lowered for fragment in CREDENTIAL_HEADER_FRAGMENTS)


def is_credential_param(name: str) -> bool:
    """True when the query parameter ``name`` (decoded, any case) may carry a credential."""
    lowered = name.strip().lower()
    return lowered in CREDENTIAL_QUERY_PARAMS or any(fragment in lowered for fragment in CREDENTIAL_QUERY_FRAGMENTS)


def query_pairs(query: str) -> list[tuple[str, str]]:
    """``(decoded lower-case name, raw pair)`` for each ``&``-separated pair of a raw query string."""
    return [(unquote_plus(pair.partition("=")[0]).strip().lower(), pair) for pair in query.split("&") if pair]


def strip_credentials_from_query(query: str, *, also: frozenset[str] = frozenset()) -> str:
    """``query`` without credential parameters (and names in ``also``, lower-case); the rest byte for byte."""
    return "&".join(pair for name, pair in query_pairs(query) if not is_credential_param(name) and name not in also)


def _denied(name: str) -> bool:
    lowered = name.lower()
    return lowered.startswith(_DENIED_PREFIXES) or is_credential_header(lowered) or lowered == MODE_HEADER.lower()


_MAX_REMEMBERED = 512
"""Header names whose verdict a filter remembers (cleared when full, so odd names cannot grow it)."""
_request_verdicts: dict[str, bool] = {}
_response_verdicts: dict[str, bool] = {}


def _filter(headers: Mapping[str, str] | Iterable[tuple[str, str]], allowed: frozenset[str], verdicts: dict[str, bool]) -> dict[str, str]:
    # The same few header names arrive on every request: the verdict for a name (the deny list,
    # then the allow-list) is computed once and remembered per exact spelling.
    items = headers.items() if hasattr(headers, "items") else headers
    out: dict[str, str] = {}
    for name, value in items:
        keep = verdicts.get(name)
        if keep is None:
            lowered = name.lower()
            keep = not _denied(lowered) and (lowered in allowed or lowered.startswith("x-"))
            if len(verdicts) >= _MAX_REMEMBERED:
                verdicts.clear()
            verdicts[name] = keep
        if keep:
            out[name] = value
    return out


def request_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """The caller's headers that may go to the on-premises listener."""
    return _filter(headers, REQUEST_HEADERS, _request_verdicts)


def response_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """The listener's response headers that may go back to the caller."""
    return _filter(headers, RESPONSE_HEADERS, _response_verdicts)


def inbound_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers of a request received from Relay, as stored in the inbound message (credentials dropped)."""
    items = headers.items() if hasattr(headers, "items") else headers
    return {name: value for name, value in items if not is_credential_header(name)}
