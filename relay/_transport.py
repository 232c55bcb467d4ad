"""Sockets for the client and the listener: addresses, TLS, aiohttp sessions, WebSocket handshakes.

aiohttp carries every flow (control channel, rendezvous, sender WebSockets and HTTP requests):
measured on this machine its WebSocket client costs less CPU per 1 KB round trip than
``websockets`` 17 (about 105-125 against 175-210 µs, loopback, client side, a loaded 2-core
machine), and one library means one connection pool and one TLS setup. Request rendezvous, which
need fragment-by-fragment bodies, use raw frames over an aiohttp connection (:mod:`relay._rendezvous`). aiohttp drops the HTTP reason phrase of a failed WebSocket handshake, but the service
puts its error text exactly there (``404 Endpoint does not exist. TrackingId:...``), so a trace
hook records it for the handshake running in the current task.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import platform
import ssl
from dataclasses import dataclass
from typing import Any, Mapping, Sequence
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_parser import RawResponseMessage
from yarl import URL

from .connection_string import resolve_ca_file
from .errors import ConnectionLostError, RelayError, error_from_status
from .paths import CanonicalPath, canonical_path, url_with_path
from .protocol import filter_sb_hc_query

USER_AGENT = f"azure-relay-python/0.1 ({platform.system()}; Python {platform.python_version()})"
"""Sent as ``Relay-User-Agent`` on control channels and sender sockets, as .NET does."""

MAX_MESSAGE_SIZE = 0
"""aiohttp ``max_msg_size``: 0 means unlimited (bodies are one message each)."""


@dataclass(frozen=True, slots=True)
class RelayAddress:
    """A hybrid connection's address split into the parts each flow needs.

    ``host``/``port`` from ``sb://host[:port]/entity``; ``use_tls`` is False only for ``ws://`` or
    ``http://`` addresses (or ``use_tls=False``), meant for a local emulator started without TLS.
    """

    host: str
    port: int | None
    entity: str
    use_tls: bool
    query: str = ""
    """The address's own query (``sb://ns/hc?x=1`` -> ``x=1``), kept ahead of ``sb-hc-*`` parameters."""

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.port else host

    @property
    def ws_base(self) -> str:
        return f"{'wss' if self.use_tls else 'ws'}://{self.netloc}"

    @property
    def http_base(self) -> str:
        return f"{'https' if self.use_tls else 'http'}://{self.netloc}"

    @property
    def sb_uri(self) -> str:
        """``sb://host[:port]/entity``: the logical address, used in messages and as the SAS audience."""
        return f"sb://{self.netloc}/{self.entity}"

    def entity_http_url(self, path: str | CanonicalPath = "/") -> str:
        """``https://host[:port]/entity{path}`` for HTTP senders; ``path`` is relative to the entity.

        ``path`` is a :class:`~relay.paths.CanonicalPath` or text that :func:`relay.paths.canonical_path`
        accepts (it raises :class:`~relay.paths.PathError`, a ValueError, for dot segments, encoded
        separators or control characters). The text is encoded exactly once; hand it on as
        ``yarl.URL(text, encoded=True)`` so neither yarl nor aiohttp re-interprets it. The address's
        own query (``sb://ns/hc?x=1``) goes ahead of the path's, as .NET keeps it.
        """
        target = path if isinstance(path, CanonicalPath) else canonical_path(path or "/", what="request path")
        query = "&".join(q for q in (self.query, target.query) if q)
        target = CanonicalPath(target.segments, target.trailing_slash, query)
        # https://host/entity (no trailing slash) for the root is what the .NET samples send.
        return str(url_with_path(f"{self.http_base}/{quote(self.entity, safe='/')}", target))


def parse_address(address: str, use_tls: bool | None = None) -> RelayAddress:
    """Parse ``sb://host[:port]/entity`` (or ``ws://``/``wss://``/``http(s)://`` forms) into a :class:`RelayAddress`."""
    if not isinstance(address, str) or "://" not in address:
        raise ValueError(f"address must look like sb://{{namespace}}.servicebus.windows.net/{{hybrid connection}}, got {address!r}")
    parts = urlsplit(address)
    scheme = parts.scheme.lower()
    if scheme not in ("sb", "wss", "https", "ws", "http"):
        raise ValueError(f"address scheme must be sb:// (or ws:// for a plain emulator), got {scheme}://")
    if not parts.hostname:
        raise ValueError(f"address {address!r} has no host")
    path = parts.path
    if path.lower().startswith("/$hc/"):
        path = path[4:]
    entity = path.strip("/")
    if not entity:
        raise ValueError(f"address {address!r} names no hybrid connection (sb://host/ENTITY)")
    tls = scheme in ("sb", "wss", "https") if use_tls is None else bool(use_tls)
    query = filter_sb_hc_query(parts.query)
    return RelayAddress(parts.hostname, parts.port, entity, tls, query)


def build_ssl_context(connection_verify: bool | str | ssl.SSLContext) -> ssl.SSLContext:
    """An SSL context for ``connection_verify``: True (system CAs), a CA-bundle path, False (no checks), or a context."""
    if isinstance(connection_verify, ssl.SSLContext):
        return connection_verify
    if connection_verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if connection_verify is True or connection_verify is None:
        return ssl.create_default_context()
    if isinstance(connection_verify, str):  # a missing file names its absolute path, not a bare [Errno 2]
        return ssl.create_default_context(cafile=resolve_ca_file(connection_verify, "connection_verify"))
    raise TypeError("connection_verify must be True, False, a CA bundle path or an ssl.SSLContext")


# Reason phrase of the handshake running in the current task (aiohttp forgets it on non-101).
_handshake_reason: contextvars.ContextVar[list | None] = contextvars.ContextVar("relay_handshake_reason", default=None)


async def _on_request_end(session: Any, ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
    holder = _handshake_reason.get()
    if holder is not None:
        holder.append(params.response.reason or "")


class FinalResponse(aiohttp.ClientResponse):
    """A response whose first status line is final, even a 1xx.

    Relay sends no interim responses of its own (this client never sends ``Expect:
    100-continue``), so a 1xx status is a listener's answer relayed as its *final* response.
    aiohttp would skip it and wait for another status line that never comes (the sender hangs
    until its timeout); here the 1xx is returned like any other status, for the caller to judge.
    """

    async def start(self, connection: Any) -> aiohttp.ClientResponse:
        protocol = connection.protocol
        read = protocol.read
        informational: list[int] = []

        async def read_final() -> Any:
            message, payload = await read()
            if 100 <= message.code <= 199 and message.code != 101:  # aiohttp loops on these
                informational.append(message.code)
                message = RawResponseMessage(message.version, 101, message.reason, message.headers, message.raw_headers,
                                             message.should_close, message.compression, message.upgrade, message.chunked)
            return message, payload

        protocol.read = read_final
        try:
            await super().start(connection)
        finally:
            del protocol.read
        if informational:
            self.status = informational[0]
        return self


def new_session(ssl_context: ssl.SSLContext | None, *, limit: int = 0, websocket: bool = True, **kwargs: Any) -> aiohttp.ClientSession:
    """A ClientSession with the relay's TLS settings; WebSocket sessions get the handshake-reason hook.

    (HTTP sessions go without it: aiohttp's tracing costs about 5 % per request.)
    """
    traces = []
    if websocket:
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(_on_request_end)
        traces.append(trace)
    connector = aiohttp.TCPConnector(limit=limit, ssl=ssl_context if ssl_context is not None else False, enable_cleanup_closed=False)
    if not websocket:
        kwargs.setdefault("response_class", FinalResponse)
    return aiohttp.ClientSession(
        connector=connector,
        trace_configs=traces,
        auto_decompress=False,
        skip_auto_headers=("User-Agent",) if kwargs.pop("no_user_agent", False) else None,
        **kwargs,
    )


# aiohttp's own heartbeat re-arms its timer on every received chunk, through a loop callback
# (one extra wake-up per message). _Heartbeat only sets a flag per chunk; it needs the
# protocol's data_received_cb hook (aiohttp >= 3.11), else aiohttp's heartbeat is used.
_LEAN_HEARTBEAT = "data_received_cb" in inspect.signature(ResponseHandler.set_parser).parameters


class _Heartbeat:
    """Keep-alive for a WebSocket: a PING every ``interval`` seconds (as .NET's keep-alive, traffic
    or not), and the connection is dropped (``receive()`` then reports an error) when nothing at
    all arrived within ``interval / 2`` after a PING."""

    __slots__ = ("_ws", "_interval", "_seen", "_loop", "__weakref__")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        self._ws = ws
        self._interval = interval
        self._seen = False
        self._loop = asyncio.get_running_loop()
        conn = ws._response.connection  # type: ignore[attr-defined]
        if conn is not None and conn.protocol is not None:
            conn.protocol._data_received_cb = self._touch
        self._loop.call_later(interval, self._ping)

    def _touch(self) -> None:
        self._seen = True

    def _ping(self) -> None:
        ws = self._ws
        if ws.closed:
            return
        self._seen = False
        task = self._loop.create_task(ws.ping())
        task.add_done_callback(_ignore_result)
        self._loop.call_later(self._interval / 2, self._check)

    def _check(self) -> None:
        ws = self._ws
        if ws.closed:
            return
        if not self._seen:
            error = aiohttp.ServerTimeoutError(f"No PONG received after {self._interval / 2:g} seconds")
            handle = getattr(ws, "_handle_ping_pong_exception", None)
            if handle is not None:
                handle(error)
            else:  # pragma: no cover - other aiohttp versions
                ws._response.close()  # type: ignore[attr-defined]
            return
        self._loop.call_later(self._interval / 2, self._ping)


def _ignore_result(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # a PING on a closing socket: the check notices the silence


async def ws_connect(
    session: aiohttp.ClientSession,
    url: str | URL,
    *,
    headers: Mapping[str, str] | None = None,
    protocols: Sequence[str] = (),
    heartbeat: float | None = None,
    context: str = "",
) -> tuple[aiohttp.ClientWebSocketResponse | None, int, str]:
    """Open a WebSocket. Returns ``(ws, 101, "")`` or ``(None, status, reason)`` when refused.

    Network failures raise :class:`~relay.errors.ConnectionLostError`-style :class:`RelayError`
    (transient). Messages never include the URL's query, which can hold rendezvous secrets.
    ``url`` goes out byte for byte (``encoded=True``): the service hands out rendezvous
    addresses that must be used exactly as given, and yarl would otherwise re-quote them
    (``%2f`` -> ``%2F``).
    """
    holder: list[str] = []
    token = _handshake_reason.set(holder)
    try:
        ws = await session.ws_connect(
            URL(url, encoded=True),
            headers=headers,
            protocols=protocols,
            autoclose=False,
            autoping=True,
            heartbeat=None if _LEAN_HEARTBEAT else heartbeat,
            max_msg_size=MAX_MESSAGE_SIZE,
            compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
        )
        if heartbeat and _LEAN_HEARTBEAT:
            _Heartbeat(ws, heartbeat)
        return ws, 101, ""
    except aiohttp.WSServerHandshakeError as exc:
        return None, exc.status, holder[-1] if holder else (exc.message or "")
    except aiohttp.ClientConnectorCertificateError as exc:
        raise ConnectionLostError(
            f"{context}: the TLS certificate of {urlsplit(str(url)).netloc} is not trusted ({exc.certificate_error}); "
            "for the local emulator pass connection_verify='/path/to/ca.pem' (or TrustedCaFile= in the connection string)"
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ConnectionLostError(f"{context}: cannot reach {urlsplit(str(url)).netloc}: {exc}") from None
    finally:
        _handshake_reason.reset(token)


def handshake_failure(status: int, reason: str, *, context: str) -> RelayError:
    """The typed error for a refused handshake."""
    return error_from_status(status, reason or "", context=context)
