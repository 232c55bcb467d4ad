"""``HybridConnectionClient``: the sender side (HTTP requests and WebSocket connections)."""

from __future__ import annotations

import asyncio
import json as _json
import uuid
from typing import Any, AsyncIterable, AsyncIterator, Iterable, Mapping

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._hints import add_hint
from ._websocket import WebSocket
from ._transport import USER_AGENT, build_ssl_context, new_session, parse_address
from .connection_string import parse_connection_string
from .credentials import close_credential, get_token_provider
from .errors import (
    AuthorizationFailedError,
    ConnectionLostError,
    RejectedError,
    RelayError,
    RelayTimeoutError,
    error_from_status,
)
from .paths import CanonicalPath, canonical_path
from .protocol import ACTION_CONNECT, HEADER_ALLOWED_LISTENERS, HEADER_DISALLOWED_LISTENERS, HEADER_TOKEN, hc_url
from .stream import HybridConnectionStream

__all__ = ["HybridConnectionClient", "RelayHttpResponse"]

DEFAULT_TIMEOUT = 70.0
"""Seconds to wait for a connection or for response headers (.NET's HybridConnectionClient default)."""

HEADER_USER_AGENT = "Relay-User-Agent"

_MAX_URLS = 256
"""Request paths whose entity URL a client remembers (cleared when full)."""
_SERVICE_MARKER = "systemtracker:"
"""Only the service's own refusals carry ``SystemTracker:``; a listener's reject may carry a
``TrackingId:`` too (.NET appends one to its AcceptHandler failures), so that one proves nothing."""


def _listener_header(ids: str | Iterable[str] | None) -> str | None:
    if ids is None:
        return None
    if isinstance(ids, str):
        return ids
    return ",".join(str(i) for i in ids)


def _add_sender_headers(headers: Any, token: Any, allowed: Any, disallowed: Any) -> None:
    """The token and the AllowedListeners/DisallowedListeners headers every send carries."""
    if token is not None:
        headers[HEADER_TOKEN] = token.token
    for name, ids in ((HEADER_ALLOWED_LISTENERS, allowed), (HEADER_DISALLOWED_LISTENERS, disallowed)):
        value = _listener_header(ids)
        if value:
            headers[name] = value


class RelayHttpResponse:
    """An HTTP response relayed from a listener (or produced by the service for 2xx/3xx).

    ``status``, ``reason``, ``headers`` (case-insensitive, multi-valued), ``await read()`` →
    bytes, ``await text()``, ``await json()``, ``async for chunk in iter_chunks()``. Use as
    ``async with`` (or call :meth:`release`) when you do not read the body, so the pooled
    connection is returned.
    """

    __slots__ = ("_resp", "status", "reason", "headers", "_body")

    def __init__(self, resp: aiohttp.ClientResponse):
        self._resp = resp
        self.status: int = resp.status
        self.reason: str = resp.reason or ""
        self.headers: CIMultiDictProxy[str] = resp.headers
        self._body: bytes | None = None

    def __repr__(self) -> str:
        return f"<RelayHttpResponse {self.status} {self.reason}>"

    @property
    def from_listener(self) -> bool:
        """True when the service marked the response as the listener's (``Via`` header)."""
        return "Via" in self.headers

    async def read(self) -> bytes:
        """The whole body."""
        if self._body is None:
            try:
                self._body = await self._resp.read()
            except (aiohttp.ClientError, ConnectionError) as exc:
                raise ConnectionLostError(f"the response body was cut off: {exc}") from None
        return self._body

    async def text(self, encoding: str | None = None) -> str:
        """The body decoded with ``encoding``, the response charset, or UTF-8."""
        body = await self.read()
        return body.decode(encoding or self._resp.charset or "utf-8", errors="replace")

    async def json(self) -> Any:
        """The body parsed as JSON."""
        return _json.loads(await self.read())

    async def iter_chunks(self, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        """The body as it arrives, in chunks of at most ``chunk_size`` bytes."""
        if self._body is not None:
            for i in range(0, len(self._body), chunk_size):
                yield self._body[i : i + chunk_size]
            return
        try:
            async for chunk in self._resp.content.iter_chunked(chunk_size):
                yield chunk
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise ConnectionLostError(f"the response body was cut off: {exc}") from None

    def release(self) -> None:
        """Return the connection to the pool (unread body bytes are discarded)."""
        self._resp.release()

    async def __aenter__(self) -> RelayHttpResponse:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self._resp.release()


async def _aiter_body(body: AsyncIterable[bytes | str]) -> AsyncIterator[bytes]:
    async for chunk in body:
        yield chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)


class HybridConnectionClient:
    """Sender for one hybrid connection: HTTP requests (:meth:`request`) and WebSockets (:meth:`connect`).

    ``address`` is ``sb://{namespace}.servicebus.windows.net/{hybrid connection}`` (a port is allowed,
    e.g. ``sb://127.0.0.1:8443/orders`` for the local emulator). TLS is always used, like .NET,
    except for ``ws://host:port/entity`` addresses or ``use_tls=False``, meant for an emulator
    started with ``--no-tls``.

    ``credential``: an azure-core ``AsyncTokenCredential``/``TokenCredential`` (Entra ID, scope
    ``https://relay.azure.net/.default``), ``AzureNamedKeyCredential`` (SAS from a key),
    ``AzureSasCredential`` (fixed SAS), :class:`~relay.credentials.AadCallbackTokenProvider`, or
    ``None`` for anonymous senders. Tokens are cached per credential object and refreshed ahead
    of expiry (:mod:`relay.credentials`).

    ``connection_verify``: True (system CAs), a CA-bundle path (e.g. the emulator's ``ca.pem``),
    False (no verification; tests only) or an ``ssl.SSLContext``. ``max_connections`` bounds the
    HTTP connection pool (requests beyond it wait for a free connection). ``operation_timeout``
    is the default ``timeout`` of :meth:`request` and :meth:`connect` (70 s, as .NET).
    ``keepalive_interval`` sets WebSocket pings on sender streams (3.5 min, as .NET).

    Use ``async with HybridConnectionClient(...) as client:`` or call :meth:`close`.
    """

    def __init__(
        self,
        address: str,
        credential: Any = None,
        *,
        connection_verify: bool | str | Any = True,
        user_agent: str | None = None,
        use_tls: bool | None = None,
        operation_timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = 100,
        keepalive_interval: float | None = 210.0,
    ):
        self._address = parse_address(address, use_tls)
        self._provider = get_token_provider(credential)
        self._ssl = build_ssl_context(connection_verify) if self._address.use_tls else None
        self._user_agent = f"{user_agent} {USER_AGENT}" if user_agent else USER_AGENT
        self._timeout = float(operation_timeout)
        self._max_connections = max_connections
        self._keepalive = keepalive_interval
        self._http: aiohttp.ClientSession | None = None
        self._ws_session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._sb_uri = self._address.sb_uri
        self._urls: dict[Any, URL] = {}  # request path -> its entity URL (canonical, encoded once)
        self._owned_credential: Any = None

    @classmethod
    def from_connection_string(cls, conn_str: str, credential: Any = None, **kwargs: Any) -> HybridConnectionClient:
        """Build a client from a Relay connection string (see :mod:`relay.connection_string`).

        ``entity_path=`` names the hybrid connection when the string has no ``EntityPath``.
        An explicit ``credential`` wins over the one the string describes. A credential created
        from the string (``Authentication=Managed Identity``) belongs to the client and is closed
        by :meth:`close`.
        """
        cs = parse_connection_string(conn_str)
        address = cs.address(kwargs.pop("entity_path", None))
        options = cs.client_kwargs()
        options.update(kwargs)
        owned = cs.credential() if credential is None else None
        instance = cls(address, credential if credential is not None else owned, **options)
        instance._owned_credential = owned  # created here, so closed by close()
        return instance

    @property
    def address(self) -> str:
        """The logical address ``sb://host[:port]/entity``."""
        return self._address.sb_uri

    @property
    def token_provider(self):
        """The shared :class:`~relay.credentials.TokenProvider` for this client's credential."""
        return self._provider

    def __repr__(self) -> str:
        return f"HybridConnectionClient({self.address!r}, credential={self._provider.describe()})"

    # -- sessions ------------------------------------------------------------------------------

    def _http_session(self) -> aiohttp.ClientSession:
        session = self._http
        if session is None or session.closed:
            session = self._http = new_session(self._ssl, limit=self._max_connections, websocket=False, no_user_agent=True)
        return session

    def _ws(self) -> aiohttp.ClientSession:
        session = self._ws_session
        if session is None or session.closed:
            session = self._ws_session = new_session(self._ssl, limit=0, no_user_agent=True)
        return session

    async def close(self) -> None:
        """Close the connection pools. Open streams from :meth:`connect` are closed too."""
        for session in (self._http, self._ws_session):
            if session is not None and not session.closed:
                await session.close()
        self._http = self._ws_session = None
        if self._owned_credential is not None:
            owned, self._owned_credential = self._owned_credential, None
            await close_credential(owned)

    async def __aenter__(self) -> HybridConnectionClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    # -- HTTP ----------------------------------------------------------------------------------

    def _client_timeout(self, timeout: float) -> aiohttp.ClientTimeout:
        value = self._timeouts.get(timeout)
        if value is None:
            value = self._timeouts[timeout] = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        return value

    async def request(
        self,
        method: str,
        path: str | CanonicalPath = "/",
        *,
        body: bytes | bytearray | str | AsyncIterable[bytes] | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        timeout: float | None = None,
        allowed_listeners: str | Iterable[str] | None = None,
        disallowed_listeners: str | Iterable[str] | None = None,
    ) -> RelayHttpResponse:
        """Send an HTTP request to the hybrid connection and return the listener's response.

        ``path`` is relative to the entity (``"/a?x=1"`` → ``https://host/entity/a?x=1``): a
        :class:`~relay.paths.CanonicalPath` or text that :func:`relay.paths.canonical_path` accepts
        (dot segments, encoded ``/`` or ``\\`` and control characters raise
        :class:`~relay.paths.PathError`, so a path can never leave the entity).
        ``body`` may be bytes, str (UTF-8) or an async iterable of bytes (sent chunked, so the
        service relays it over a rendezvous). ``timeout`` (default ``operation_timeout``, 70 s)
        bounds the wait for the response headers and each read of the body. ``allowed_listeners``/``disallowed_listeners`` restrict which listener ids may
        serve the request.

        The listener's own responses, including 4xx/5xx, are returned (they carry ``Via``).
        Failures produced by the service raise typed errors: 401
        :class:`~relay.errors.AuthorizationFailedError`, 403 :class:`~relay.errors.ForbiddenError`,
        404 :class:`~relay.errors.EndpointNotFoundError`, no listener
        :class:`~relay.errors.NoListenerError`, 504 :class:`~relay.errors.RelayTimeoutError`,
        413 :class:`~relay.errors.PayloadTooLargeError`. Network failures raise
        :class:`~relay.errors.ConnectionLostError`.
        """
        if timeout is None:
            timeout = self._timeout
        token = await self._provider.get_token(self._sb_uri)
        hdrs: CIMultiDict[str] = CIMultiDict(headers) if headers else CIMultiDict()
        _add_sender_headers(hdrs, token, allowed_listeners, disallowed_listeners)
        url = self._urls.get(path)
        if url is None:
            # Canonical and encoded once (relay.paths, PathError for tricks); encoded=True: yarl must
            # not re-read it. Remembered per path: most senders call a handful of paths again and again.
            url = URL(self._address.entity_http_url(path), encoded=True)
            if len(self._urls) >= _MAX_URLS:
                self._urls.clear()
            self._urls[path] = url
        if isinstance(body, str):
            data: Any = body.encode("utf-8")
        elif body is None or isinstance(body, (bytes, bytearray, memoryview)):
            data = body
        elif hasattr(body, "__aiter__"):
            data = _aiter_body(body)
        else:
            raise TypeError("body must be bytes, str or an async iterable of bytes")
        session = self._http_session()
        try:
            async with asyncio.timeout(timeout):
                resp = await session.request(
                    method, url, data=data, headers=hdrs, timeout=self._client_timeout(timeout), allow_redirects=False
                )
        except TimeoutError:
            raise RelayTimeoutError(f"{method} {self.address}{path if path != '/' else ''}: no response within {timeout:g} s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ConnectionLostError(
                f"{method} {self.address}: the TLS certificate is not trusted ({exc.certificate_error}); for the local "
                "emulator pass connection_verify='/path/to/ca.pem' (or TrustedCaFile= in the connection string)"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionLostError(f"{method} {self.address}: {type(exc).__name__}: {exc}") from None
        if resp.status >= 400 and "Via" not in resp.headers:
            raise await self._service_error(resp, method, path)
        return RelayHttpResponse(resp)

    async def _service_error(self, resp: aiohttp.ClientResponse, method: str, path: str) -> RelayError:
        reason = resp.reason or ""
        try:
            if not reason or "TrackingId" not in reason:
                text = (await resp.content.read(2048)).decode("utf-8", "replace")
                detail = _error_detail(text)
                if detail:
                    reason = f"{reason}: {detail}" if reason else detail
        except Exception:
            pass
        finally:
            resp.release()
        target = f"{self.address}{path if path not in ('/', '') else ''}"
        error = error_from_status(resp.status, reason, context=f"{method} {target}")
        if isinstance(error, AuthorizationFailedError):
            self._provider.invalidate(self._address.sb_uri)
        return add_hint(error, self._provider, action="send", sb_uri=self.address)

    # -- WebSocket -----------------------------------------------------------------------------

    async def connect(
        self,
        *,
        path: str | CanonicalPath = "",
        headers: Mapping[str, str] | None = None,
        subprotocols: Iterable[str] | None = None,
        timeout: float | None = None,
        allowed_listeners: str | Iterable[str] | None = None,
        disallowed_listeners: str | Iterable[str] | None = None,
    ) -> HybridConnectionStream:
        """Open a relayed WebSocket to a listener (``sb-hc-action=connect``).

        ``path`` is an optional suffix and/or query after the entity (``"/chat?room=1"``), handed to
        the listener in its accept address; the same canonical rules as :meth:`request` apply. ``headers`` reach the listener's accept handler.
        ``subprotocols`` are offered in order; the listener picks one (``stream.subprotocol``).
        The service holds the handshake until a listener accepts; ``timeout`` (default
        ``operation_timeout``, 70 s) bounds that wait.

        Raises :class:`~relay.errors.RejectedError` (with the listener's ``status`` and
        ``description``) when the listener refuses, and the typed service errors (401, 403, 404,
        :class:`~relay.errors.NoListenerError`, timeouts) otherwise.
        """
        if timeout is None:
            timeout = self._timeout
        token = await self._provider.get_token(self._address.sb_uri)
        tracking_id = str(uuid.uuid4())
        target = path if isinstance(path, CanonicalPath) else canonical_path(path, what="connect path")
        suffix = "" if target.path == "/" else target.path  # encoded once by relay.paths; yarl must not re-read it
        query = "&".join(q for q in (self._address.query, target.query) if q)  # the address's own query first, as .NET
        url = URL(hc_url(self._address.ws_base, self._address.entity, ACTION_CONNECT, id=tracking_id, suffix=suffix,
                         app_query=query), encoded=True)
        hdrs: dict[str, str] = {HEADER_USER_AGENT: self._user_agent}
        if headers:
            hdrs.update(headers)
        _add_sender_headers(hdrs, token, allowed_listeners, disallowed_listeners)
        context = f"connect to {self.address}"
        try:
            result = await WebSocket.open(
                self._ws(), url, timeout=timeout, headers=hdrs, protocols=tuple(subprotocols or ()), autoclose=False, context=context
            )
        except TimeoutError:
            raise RelayTimeoutError(f"{context}: no listener accepted within {timeout:g} s") from None
        if not isinstance(result, WebSocket):
            status, reason = result
            lowered = reason.lower()
            if _SERVICE_MARKER in lowered or status in (401, 407) or not reason:
                error = error_from_status(status, reason, context=context)
                if isinstance(error, AuthorizationFailedError):
                    self._provider.invalidate(self._address.sb_uri)
                raise add_hint(error, self._provider, action="send", sb_uri=self.address)
            error = RejectedError(f"{context}: the listener rejected the connection: {status} {reason}", status=status)
            error.description = reason  # type: ignore[attr-defined]
            raise error
        result.keep_alive(self._keepalive)
        return HybridConnectionStream(result, id=tracking_id)


def _error_detail(text: str) -> str:
    """``<Error><Code>..</Code><Detail>..</Detail></Error>`` → the detail text; plain text as is (one line)."""
    text = text.strip()
    if not text:
        return ""
    start = text.find("<Detail>")
    if start >= 0:
        end = text.find("</Detail>", start)
        text = text[start + 8 : end if end > 0 else None]
    elif text.startswith("<"):
        return ""
    return " ".join(text.split())[:500]
