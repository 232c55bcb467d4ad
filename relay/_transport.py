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

import contextvars
import platform
import ssl
from dataclasses import dataclass
from typing import Any, Mapping, Sequence
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from .errors import ConnectionLostError, RelayError, error_from_status
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

    def entity_http_url(self, path: str = "/") -> str:
        """``https://host[:port]/entity{path}`` for HTTP senders; ``path`` is relative to the entity."""
        if not path:
            path = "/"
        if not path.startswith(("/", "?")):
            path = "/" + path
        if path == "/":
            path = ""  # https://host/entity (no trailing slash) is what the .NET samples send
        if self.query:
            head, sep, tail = path.partition("?")
            path = f"{head}?{self.query}" + (f"&{tail}" if sep and tail else "")
        return f"{self.http_base}/{quote(self.entity, safe='/')}{path}"


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
    if isinstance(connection_verify, str):
        return ssl.create_default_context(cafile=connection_verify)
    raise TypeError("connection_verify must be True, False, a CA bundle path or an ssl.SSLContext")


# Reason phrase of the handshake running in the current task (aiohttp forgets it on non-101).
_handshake_reason: contextvars.ContextVar[list | None] = contextvars.ContextVar("relay_handshake_reason", default=None)


async def _on_request_end(session: Any, ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
    holder = _handshake_reason.get()
    if holder is not None:
        holder.append(params.response.reason or "")


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
    return aiohttp.ClientSession(
        connector=connector,
        trace_configs=traces,
        auto_decompress=False,
        skip_auto_headers=("User-Agent",) if kwargs.pop("no_user_agent", False) else None,
        **kwargs,
    )


async def ws_connect(
    session: aiohttp.ClientSession,
    url: str,
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
            heartbeat=heartbeat,
            max_msg_size=MAX_MESSAGE_SIZE,
            compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
        )
        return ws, 101, ""
    except aiohttp.WSServerHandshakeError as exc:
        return None, exc.status, holder[-1] if holder else (exc.message or "")
    except aiohttp.ClientConnectorCertificateError as exc:
        raise ConnectionLostError(
            f"{context}: the TLS certificate of {urlsplit(url).netloc} is not trusted ({exc.certificate_error}); "
            "for the local emulator pass connection_verify='/path/to/ca.pem' (or TrustedCaFile= in the connection string)"
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ConnectionLostError(f"{context}: cannot reach {urlsplit(url).netloc}: {exc}") from None
    finally:
        _handshake_reason.reset(token)


def handshake_failure(status: int, reason: str, *, context: str) -> RelayError:
    """The typed error for a refused handshake."""
    return error_from_status(status, reason or "", context=context)
