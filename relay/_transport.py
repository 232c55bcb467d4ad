"""Sockets for the client and the listener: addresses, TLS, aiohttp sessions, connection errors.

aiohttp carries every connection (control channel, rendezvous, sender WebSockets and HTTP
requests): one library means one connection pool and one TLS setup. Every WebSocket is
:class:`relay._websocket.WebSocket`, raw frames over an upgraded aiohttp connection; the
handshake's HTTP status and reason phrase (where the service puts its error text, ``404 Endpoint
does not exist. TrackingId:...``) come straight from the response.
"""

from __future__ import annotations

import platform
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp.http_parser import RawResponseMessage
from yarl import URL

from .connection_string import resolve_ca_file
from .errors import ConnectionLostError
from .paths import CanonicalPath, canonical_path, url_with_path
from .protocol import filter_sb_hc_query

USER_AGENT = f"azure-relay-python/0.1 ({platform.system()}; Python {platform.python_version()})"
"""Sent as ``Relay-User-Agent`` on control channels and sender sockets, as .NET does."""

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
    """A ClientSession with the relay's TLS settings. HTTP sessions (``websocket=False``) read a
    1xx status as final (:class:`FinalResponse`); WebSocket sessions only carry handshakes."""
    connector = aiohttp.TCPConnector(limit=limit, ssl=ssl_context if ssl_context is not None else False, enable_cleanup_closed=False)
    if not websocket:
        kwargs.setdefault("response_class", FinalResponse)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent",) if kwargs.pop("no_user_agent", False) else None,
        **kwargs,
    )


def connect_error(exc: BaseException, url: str | URL, context: str) -> ConnectionLostError:
    """The typed, transient error for a connection that could not be made (never shows the query)."""
    netloc = urlsplit(str(url)).netloc
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return ConnectionLostError(
            f"{context}: the TLS certificate of {netloc} is not trusted ({exc.certificate_error}); "
            "for the local emulator pass connection_verify='/path/to/ca.pem' (or TrustedCaFile= in the connection string)"
        )
    return ConnectionLostError(f"{context}: cannot reach {netloc}: {exc}")
