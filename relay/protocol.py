"""The Hybrid Connections wire protocol, without I/O.

This module owns everything both ends agree on: the control-channel commands
(``accept``, ``request``, ``response``, ``renewToken``), the rule that a binary
body message directly follows the JSON command it belongs to, the URLs and
query parameters of every flow, and the Azure-style error texts. The client
library (:mod:`relay.listener`, :mod:`relay.client`) and the emulator
(:mod:`emulator`) both build on it, so the two can never disagree about the
wire format. Nothing here touches a socket; tests feed strings and bytes in.

Reference: ``relay-protocol.md`` §1-§2 (addresses, commands) and §4 (errors).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping, Union
from urllib.parse import quote, unquote_plus

# Limits (relay-protocol.md §5).
INLINE_LIMIT = 65536
"""Largest request (headers + body) or response body sent inline on the control channel."""
MAX_LISTENERS = 25
"""Concurrent listeners the service allows per hybrid connection."""
RESPONSE_TIMEOUT = 60.0
"""Seconds a listener has to answer an HTTP request before the sender gets 504."""

HC_PREFIX = "/$hc/"

# Query parameters (§1).
QUERY_ACTION = "sb-hc-action"
QUERY_ID = "sb-hc-id"
QUERY_TOKEN = "sb-hc-token"
QUERY_STATUS_CODE = "sb-hc-statusCode"
QUERY_STATUS_DESCRIPTION = "sb-hc-statusDescription"
SB_HC_PREFIX = "sb-hc-"

ACTION_LISTEN = "listen"
ACTION_CONNECT = "connect"
ACTION_ACCEPT = "accept"
ACTION_REQUEST = "request"

# Headers.
HEADER_TOKEN = "ServiceBusAuthorization"
HEADER_ALLOWED_LISTENERS = "Microsoft-Relay-AllowedListeners"
HEADER_DISALLOWED_LISTENERS = "Microsoft-Relay-DisallowedListeners"

# Hop-by-hop headers the service never forwards in HTTP mode (§1.6). ``Via`` and ``Host`` pass.
HOP_BY_HOP_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Content-Length",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Close",
        "Keep-Alive",
        "Proxy-Connection",
    )
)


class ProtocolError(ValueError):
    """A control-channel message broke the protocol (malformed JSON, wrong types, body out of place)."""


@dataclass(slots=True)
class RemoteEndpoint:
    """Address of the party on the other side of the service."""

    address: str
    port: int

    def to_json(self) -> dict:
        return {"address": self.address, "port": self.port}

    @classmethod
    def from_json(cls, data: object) -> RemoteEndpoint | None:
        if type(data) is not dict:
            if not isinstance(data, dict):
                return None
        address, port = data.get("address", ""), data.get("port", 0)
        if type(address) is str and type(port) is int:
            return cls(address, port)  # what every peer sends: nothing to convert
        try:
            return cls(str(address), int(port))
        except (TypeError, ValueError):
            return None


@dataclass(slots=True)
class AcceptCommand:
    """A WebSocket sender is waiting: open a rendezvous to ``address`` (or reject it)."""

    address: str
    id: str
    connect_headers: dict[str, str] = field(default_factory=dict)
    remote_endpoint: RemoteEndpoint | None = None

    has_body = False

    def to_json(self) -> dict:
        inner: dict = {"address": self.address, "id": self.id, "connectHeaders": self.connect_headers}
        if self.remote_endpoint is not None:
            inner["remoteEndpoint"] = self.remote_endpoint.to_json()
        return {"accept": inner}


@dataclass(slots=True)
class RequestCommand:
    """An HTTP request for the listener.

    Inline requests carry ``method``, ``request_target``, ``request_headers`` and ``body``.
    The address-only form (``method`` and ``body`` both ``None``) tells the listener to
    open a rendezvous to ``address`` and read the full request there. The copy of the request
    the service sends over a rendezvous may lack ``address`` (and ``id``): both are then
    ``None`` here, and the listener falls back to the control-channel request's values
    (.NET ``ListenerCommand`` and Java ``optString`` treat both as optional too).
    """

    address: str | None
    id: str | None
    request_target: str | None = None
    method: str | None = None
    request_headers: dict[str, str] | None = None
    remote_endpoint: RemoteEndpoint | None = None
    body: bool | None = None

    @property
    def is_address_only(self) -> bool:
        return self.method is None and self.body is None

    @property
    def has_body(self) -> bool:
        return bool(self.body)

    def to_json(self) -> dict:
        inner: dict = {}
        if self.address is not None:
            inner["address"] = self.address
        if self.id is not None:
            inner["id"] = self.id
        if not self.is_address_only:
            inner["requestTarget"] = self.request_target or "/"
            inner["method"] = self.method
            inner["requestHeaders"] = self.request_headers or {}
            if self.remote_endpoint is not None:
                inner["remoteEndpoint"] = self.remote_endpoint.to_json()
            inner["body"] = bool(self.body)
        return {"request": inner}


@dataclass(slots=True)
class ResponseCommand:
    """The listener's answer to a request, matched by ``request_id``."""

    request_id: str
    status_code: int
    status_description: str | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    body: bool = False

    @property
    def has_body(self) -> bool:
        return self.body

    def to_json(self) -> dict:
        inner: dict = {
            "requestId": self.request_id,
            "statusCode": self.status_code,
            "responseHeaders": self.response_headers,
            "body": self.body,
        }
        if self.status_description is not None:
            inner["statusDescription"] = self.status_description
        return {"response": inner}


@dataclass(slots=True)
class RenewTokenCommand:
    """The listener hands the service a fresh token for its control channel."""

    token: str

    has_body = False

    def to_json(self) -> dict:
        return {"renewToken": {"token": self.token}}

    def __repr__(self) -> str:  # never print the token
        return "RenewTokenCommand(token=<redacted>)"


@dataclass(slots=True)
class UnknownCommand:
    """A command this side does not know; .NET logs and ignores these, and so do we."""

    name: str

    has_body = False

    def to_json(self) -> dict:
        return {self.name: {}}


Command = Union[AcceptCommand, RequestCommand, ResponseCommand, RenewTokenCommand, UnknownCommand]


# One encoder for every command: json.dumps with non-default options builds a new encoder per call.
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_command(command: Command) -> str:
    """Serialize a command to the text of one WebSocket message."""
    return _encode_json(command.to_json())


def _str_dict(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if type(value) is not dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"{what} must be a JSON object of strings")
        value = dict(value)
    # Decoded JSON has string keys; the values usually are strings too, and then the dict is
    # taken as it is (checked, not copied). Anything else is converted in a copy.
    for v in value.values():
        if type(v) is not str:
            return {str(k): v if isinstance(v, str) else str(v) for k, v in value.items()}
    return value  # type: ignore[return-value]


def _required_str(inner: dict, key: str, command: str) -> str:
    value = inner.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"'{command}' command needs a string '{key}'")
    return value


def _optional_str(inner: dict, key: str, command: str) -> str | None:
    value = inner.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"'{command}' command: '{key}' must be a non-empty string when present")
    return value


def _status_code(value: object) -> int:
    # .NET and Node send numbers, the protocol article shows a string: accept both.
    try:
        code = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ProtocolError(f"statusCode must be a number, got {value!r}") from None
    if not 100 <= code <= 999:
        raise ProtocolError(f"statusCode {code} is outside 100-999")
    return code


_decoder = json.JSONDecoder()
_decode_json = _decoder.decode
_scan_once = _decoder.scan_once  # the C scanner behind decode(), without its two regex passes


def _loads(text: str) -> object:
    """``json.loads(text)`` for a ``str``: the scanner straight from position 0 when the text is one
    JSON value with no whitespace around it (what every peer sends), else the full decoder (which
    also gives the error)."""
    try:
        data, end = _scan_once(text, 0)
    except (StopIteration, ValueError):
        return _decode_json(text)
    if end != len(text):
        return _decode_json(text)  # trailing whitespace, or extra data (an error)
    return data


def decode_command(text: str | bytes) -> Command:
    """Parse one control-channel text message into a command.

    Raises :class:`ProtocolError` for anything that is not a JSON object with one
    known command key of the right shape. Unknown command keys give
    :class:`UnknownCommand` so that callers can ignore them, as .NET does.
    """
    try:
        data = _loads(text) if type(text) is str else json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"control message is not valid JSON: {exc}") from None
    except RecursionError:  # absurdly deep nesting: not a command either
        raise ProtocolError("control message is nested too deeply") from None
    if not isinstance(data, dict) or len(data) != 1:
        raise ProtocolError("control message must be a JSON object with exactly one command key")
    (name, inner), = data.items()
    if not isinstance(inner, dict):
        raise ProtocolError(f"'{name}' command must hold a JSON object")
    # Most frequent first: a listener gets a request per HTTP call.
    if name == "request":
        body = inner.get("body")
        if body is not None and not isinstance(body, bool):
            raise ProtocolError("request 'body' must be a boolean")
        method = inner.get("method")
        if method is not None and not isinstance(method, str):
            raise ProtocolError("request 'method' must be a string")
        target = inner.get("requestTarget")
        if target is not None and not isinstance(target, str):
            raise ProtocolError("request 'requestTarget' must be a string")
        headers = inner.get("requestHeaders")
        address = inner.get("address")
        if address is not None and (type(address) is not str or not address):
            address = _optional_str(inner, "address", name)  # anything but a non-empty str: its check
        if address is None and method is None and body is None:
            raise ProtocolError("an address-only 'request' command needs a string 'address'")
        request_id = inner.get("id")
        if request_id is not None and (type(request_id) is not str or not request_id):
            request_id = _optional_str(inner, "id", name)
        endpoint = inner.get("remoteEndpoint")
        return RequestCommand(
            address,
            request_id,
            target,
            method,
            _str_dict(headers, "requestHeaders") if headers is not None else None,
            RemoteEndpoint.from_json(endpoint) if endpoint is not None else None,
            body,
        )
    if name == "accept":
        return AcceptCommand(
            address=_required_str(inner, "address", name),
            id=_required_str(inner, "id", name),
            connect_headers=_str_dict(inner.get("connectHeaders"), "connectHeaders"),
            remote_endpoint=RemoteEndpoint.from_json(inner.get("remoteEndpoint")),
        )
    if name == "response":
        body = inner.get("body", False)
        if not isinstance(body, bool):
            raise ProtocolError("response 'body' must be a boolean")
        description = inner.get("statusDescription")
        return ResponseCommand(
            request_id=_required_str(inner, "requestId", name),
            status_code=_status_code(inner.get("statusCode")),
            status_description=None if description is None else str(description),
            response_headers=_str_dict(inner.get("responseHeaders"), "responseHeaders"),
            body=body,
        )
    if name == "renewToken":
        return RenewTokenCommand(token=_required_str(inner, "token", name))
    return UnknownCommand(name)


class CommandReader:
    """Pairs control-channel commands with the binary body message that follows them.

    Feed every message received on a control channel or rendezvous socket, in
    order. :meth:`feed` returns ``(command, body)`` once a command is complete
    (``body`` is ``None`` for commands without one) and ``None`` while the body is
    still to come. A binary message out of place, or a text message where a body
    was promised, raises :class:`ProtocolError`.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: Command | None = None

    @property
    def awaiting_body(self) -> bool:
        return self._pending is not None

    def feed(self, message: str | bytes | bytearray | memoryview) -> tuple[Command, bytes | None] | None:
        if isinstance(message, str):
            if self._pending is not None:
                raise ProtocolError("a text message arrived where the body of the previous command was expected")
            command = decode_command(message)
            if command.has_body:
                self._pending = command
                return None
            return command, None
        if self._pending is None:
            raise ProtocolError("a binary message arrived without a command announcing a body")
        command, self._pending = self._pending, None
        return command, message if type(message) is bytes else bytes(message)


# ---------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------


def quote_component(value: str) -> str:
    """Percent-encode a query value the way the service expects (everything reserved is encoded)."""
    return quote(value, safe="")


def entity_url(base: str, entity: str, *, suffix: str = "") -> str:
    """``{base}/{entity}{suffix}`` for HTTP-mode requests (no ``$hc``); ``base`` like ``https://host:port``."""
    return f"{base.rstrip('/')}/{quote(entity, safe='/')}{suffix}"


def hc_url(
    base: str,
    entity: str,
    action: str,
    *,
    id: str | None = None,
    token: str | None = None,
    suffix: str = "",
    app_query: str = "",
) -> str:
    """A WebSocket URL under ``/$hc/``: ``{base}/$hc/{entity}{suffix}?{app_query}&sb-hc-action=...``.

    ``base`` is ``wss://host[:port]`` (or ``ws://`` for a plain emulator). ``app_query``
    is kept ahead of the ``sb-hc-*`` parameters, as .NET does.
    """
    parts = [app_query] if app_query else []
    parts.append(f"{QUERY_ACTION}={action}")
    if id:
        parts.append(f"{QUERY_ID}={quote_component(id)}")
    if token:
        parts.append(f"{QUERY_TOKEN}={quote_component(token)}")
    return f"{base.rstrip('/')}{HC_PREFIX}{quote(entity, safe='/')}{suffix}?{'&'.join(parts)}"


def filter_sb_hc_query(query: str) -> str:
    """Drop every ``sb-hc-*=value`` pair from a raw query string and keep the rest byte for byte.

    Follows the service's rules (§1.6): only ``key=value`` pairs whose key starts with
    ``sb-hc-`` (any case) are removed; a bare ``sb-hc-x`` without ``=`` survives; empty
    pairs and duplicates are kept. Returns ``""`` when nothing is left.
    """
    if not query:
        return ""
    kept = [
        pair
        for pair in query.split("&")
        if not ("=" in pair and pair.split("=", 1)[0].lower().startswith(SB_HC_PREFIX))
    ]
    return "&".join(kept)


def query_params(query: str) -> dict[str, str]:
    """Decode a raw query into a dict (first value wins, form decoding so ``+`` is a space)."""
    params: dict[str, str] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        params.setdefault(unquote_plus(key), unquote_plus(value))
    return params


def reject_url(address: str, status_code: int, description: str) -> str:
    """The accept address with the reject parameters appended (§2.3)."""
    sep = "&" if "?" in address else "?"
    return (
        f"{address}{sep}{QUERY_STATUS_CODE}={status_code}"
        f"&{QUERY_STATUS_DESCRIPTION}={quote_component(description)}"
    )


def reject_params(params: Mapping[str, str]) -> tuple[int, str] | None:
    """Read a rejection from rendezvous query params, with or without the ``sb-hc-`` prefix (Node spells it bare)."""
    code = params.get(QUERY_STATUS_CODE, params.get("statusCode"))
    if code is None:
        return None
    description = params.get(QUERY_STATUS_DESCRIPTION, params.get("statusDescription", ""))
    try:
        status = int(code)
    except ValueError:
        raise ProtocolError(f"reject statusCode {code!r} is not a number") from None
    return status, description


def split_entity_path(path: str, entities: Mapping[str, object] | set[str] | frozenset[str]) -> tuple[str, str] | None:
    """Match a URL path (after ``/$hc/`` or ``/``) to a registered entity by longest path prefix.

    Entity names may contain ``/``, so ``orders/eu/x`` matches ``orders/eu`` before ``orders``.
    Returns ``(entity, suffix)`` with ``suffix`` starting with ``/`` or empty, or ``None``.
    Matching is case-insensitive, as entity names are in Azure.
    """
    path = path.strip("/")
    lowered = {name.lower(): name for name in entities}
    segments = path.split("/")
    for end in range(len(segments), 0, -1):
        candidate = "/".join(segments[:end]).lower()
        if candidate in lowered:
            rest = "/".join(segments[end:])
            return lowered[candidate], ("/" + rest if rest else "")
    return None


def fold_headers(pairs) -> dict[str, str]:
    """Fold repeated header names into one comma-joined value, as the service does (§1.6)."""
    folded: dict[str, str] = {}
    index: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        if key in index:
            original = index[key]
            folded[original] = f"{folded[original]}, {value}"
        else:
            index[key] = name
            folded[name] = value
    return folded


def listener_ids(header_value: str | None) -> frozenset[str]:
    """Parse an AllowedListeners/DisallowedListeners header into a set of listener ids."""
    if not header_value:
        return frozenset()
    return frozenset(part.strip().lower() for part in header_value.split(",") if part.strip())


def new_tracking_id() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------------------
# Azure-style error texts (§4): one line, carried in the HTTP reason phrase.
# ---------------------------------------------------------------------------

MSG_INVALID_SIGNATURE = "InvalidSignature: The token has an invalid signature."
MSG_INVALID_AUDIENCE = "InvalidAudience: The authorization header contains a token with a wrong audience."
MSG_EXPIRED_TOKEN = "ExpiredToken: The token is expired."
MSG_MISSING_TOKEN = "MissingToken: The request has no authorization token."
MSG_MALFORMED_TOKEN = "MalformedToken: The credentials contained in the authorization header are not well-formed."
MSG_ENDPOINT_NOT_FOUND = "Endpoint does not exist."
MSG_NO_LISTENERS = "There are no listeners connected for the endpoint."
MSG_LISTENER_FILTER = "None of the connected listeners meet the AllowedListeners/DisallowedListeners criteria."
MSG_ACCEPT_TIMEOUT = "None of the connected listeners accepted the connection within the allowed timeout."
MSG_RESPONSE_TIMEOUT = (
    "The request was routed to the listener but the listener did not respond in the required time."
)
MSG_TOO_MANY_LISTENERS = "QuotaExceeded: The maximum number of listeners (25) for this endpoint has been reached."


def forbidden_message(claim: str) -> str:
    """403 text for a valid token that lacks a right (``Listen`` or ``Send``)."""
    return f"Unauthorized access. '{claim}' claim(s) are required to perform this operation."


def service_reason(message: str, system_tracker: str, tracking_id: str | None = None, *, now: datetime | None = None) -> str:
    """``{message} TrackingId:{id}, SystemTracker:{sb://ns/path}, Timestamp:{utc}`` on one line."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S")
    text = f"{message} TrackingId:{tracking_id or new_tracking_id()}, SystemTracker:{system_tracker}, Timestamp:{stamp}"
    return text.replace("\r", " ").replace("\n", " ")


def tracking_id_from_reason(reason: str) -> str | None:
    """Pull the ``TrackingId`` out of a service reason phrase, if there is one."""
    marker = "TrackingId:"
    start = reason.find(marker)
    if start < 0:
        return None
    value = reason[start + len(marker):].split(",", 1)[0].strip()
    return value or None
