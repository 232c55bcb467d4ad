"""Forward relayed requests and WebSockets to one local service, and to nothing else.

Used by ``python -m relay listen --forward URL`` and by every connection of ``python -m relay
agent``. A :class:`Forwarder` is bound to one hybrid connection and one :class:`ForwardTarget`;
it never contacts any other host, port or path:

* the relayed path is parsed once with :func:`relay.paths.canonical_path` (dot segments, encoded
  ``/`` or ``\\``, control characters and double encoding are refused, never resolved);
* the hybrid connection's name is removed only at a segment boundary
  (:meth:`~relay.paths.CanonicalPath.relative_to`), so ``/echo%2F@host:port/x`` or ``/echoes``
  never pass for ``/echo/...``;
* the URL to the local service is built from components with :func:`relay.paths.url_with_path`,
  so the result is always under the target's base URL (same scheme, host, port, base path);
* with ``allow_paths`` only paths under one of those prefixes (below the hybrid connection) are
  forwarded.

A refused path answers **400** (HTTP) or rejects the WebSocket at accept with 400; a path outside
``allow_paths`` answers **403** (WebSocket: rejected with 403). A local service that does not
answer within ``timeout`` seconds gives the sender **504**, well inside the service's 60 s
deadline; one that refuses the connection gives **502**. More than ``max_concurrency`` requests
in flight get **503** with ``Retry-After: 1``.

Headers: hop-by-hop headers, ``Host`` and the Relay token header are not forwarded; W3C trace
headers are replaced by the forwarder's own span's (:mod:`relay.tracing`). Request bodies are read
whole; responses up to 64 KiB with a known length are read whole, larger or unknown-length ones
stream through. Nothing of a body is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from . import tracing
from .listener import AcceptContext, RelayedHttpRequest, RelayedHttpResponse
from .paths import CanonicalPath, PathError, canonical_path, url_with_path
from .protocol import HEADER_TOKEN, HOP_BY_HOP_HEADERS

__all__ = ["ForwardObserver", "ForwardTarget", "Forwarder", "TargetError", "parse_target"]

_log = logging.getLogger("relay.forward")

_SKIP_REQUEST_HEADERS = HOP_BY_HOP_HEADERS | {"host", HEADER_TOKEN.lower()} | tracing.TRACE_HEADERS
_SKIP_WS_HEADERS = _SKIP_REQUEST_HEADERS | {
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol", "sec-websocket-accept",
}
_SKIP_RESPONSE_HEADERS = HOP_BY_HOP_HEADERS
STREAM_THRESHOLD = 64 * 1024
"""Local responses up to this size (with a Content-Length) are read whole; larger or unknown-length ones stream."""
STREAM_CHUNK = 64 * 1024
MAX_TIMEOUT = 55.0
"""The service gives a listener 60 s; the forwarder must answer (504 at worst) before that."""


class TargetError(ValueError):
    """A target URL or allowed path that cannot be used; the message says how to write it."""


def parse_target(url: str, *, what: str = "target", example: str = "") -> URL:
    """Check a local service's base URL (``http://127.0.0.1:8080`` or ``https://host/base/``) and return it.

    Raises :class:`TargetError` naming the fix for a URL without a scheme (``127.0.0.1:8080``),
    with another scheme, user info, a query or fragment, or a base path the canonical rules refuse.
    ``example`` goes in front of the suggested URL (``--forward`` for the CLI).
    """
    if not isinstance(url, str) or not url.strip():
        raise TargetError(f"{what}: give the local service's URL, e.g. http://127.0.0.1:8080")
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        guess = text.split("://", 1)[-1].lstrip("/") or "127.0.0.1:8080"
        hint = f"{example} http://{guess}".strip()
        raise TargetError(f"{what} {text!r} needs a scheme (http:// or https://) and a host, e.g. {hint} (or https://...)")
    try:
        base = URL(text, encoded=True)
        url_with_path(base, CanonicalPath())  # refuses user info, query, fragment and a bad base path
    except (PathError, ValueError) as exc:
        raise TargetError(f"{what} {text!r}: {exc}") from None
    if base.port is None:
        raise TargetError(f"{what} {text!r}: the port is not a number")
    return base


def parse_allow_path(prefix: str, *, what: str = "allowed path") -> CanonicalPath:
    """An ``--allow-path`` prefix (relative to the hybrid connection, e.g. ``/api/v1``) in canonical form."""
    try:
        return canonical_path(prefix, what=what, allow_query=False).without_query()
    except PathError as exc:
        raise TargetError(str(exc)) from None


@dataclass(frozen=True)
class ForwardTarget:
    """Where one hybrid connection's traffic goes, and the limits on it.

    ``base``: the local service's base URL (from :func:`parse_target`); ``allow_paths``: if not
    empty, only paths (below the hybrid connection) under one of these prefixes are forwarded;
    ``websockets``: forward relayed WebSockets (to ``ws://``/``wss://`` on the same base);
    ``timeout``: seconds the local service gets to answer an HTTP request (at most 55);
    ``connect_timeout``: seconds to open a connection to it; ``max_concurrency``: HTTP requests
    in flight at once (more get 503), ``max_websockets``: WebSocket streams open at once (more are
    rejected with 503); 0 means unlimited.
    """

    base: URL
    allow_paths: tuple[CanonicalPath, ...] = ()
    websockets: bool = True
    timeout: float = 30.0
    connect_timeout: float = 10.0
    max_concurrency: int = 100
    max_websockets: int = 100

    @classmethod
    def build(cls, url: str, allow_paths: list[str] | tuple[str, ...] = (), **options: Any) -> ForwardTarget:
        """Validate ``url`` and ``allow_paths`` (raising :class:`TargetError`) and build a target."""
        base = parse_target(url)
        prefixes = tuple(parse_allow_path(p) for p in allow_paths)
        timeout = float(options.get("timeout", cls.timeout))
        if not 0 < timeout <= MAX_TIMEOUT:
            raise TargetError(f"timeout {timeout:g} s: use more than 0 and at most {MAX_TIMEOUT:g} s (Relay gives up after 60 s)")
        return cls(base, prefixes, **options)

    @property
    def ws_base(self) -> URL:
        return self.base.with_scheme("wss" if self.base.scheme == "https" else "ws")


class ForwardObserver:
    """Hooks a :class:`Forwarder` calls as traffic passes (the agent counts them; default: nothing).

    ``status`` is what the sender got; ``seconds`` the time the local service took (``None`` when
    it was not contacted); ``bytes_in`` came from the sender, ``bytes_out`` went back to it.
    """

    def request_done(self, request_id: str, method: str, status: int, bytes_in: int, bytes_out: int,
                     seconds: float | None) -> None:
        pass

    def websocket_opened(self, stream_id: str) -> None:
        pass

    def websocket_closed(self, stream_id: str, status: int, bytes_in: int, bytes_out: int) -> None:
        """A stream that :meth:`websocket_opened` reported has ended (``status`` 101, or 502: local service failed)."""

    def websocket_refused(self, stream_id: str, status: int) -> None:
        """A WebSocket sender was rejected at accept (400 path, 403 not allowed or off, 503 limit)."""


@dataclass
class _Pending:
    url: URL
    local: aiohttp.ClientWebSocketResponse
    span: Any
    created: float = field(default_factory=time.monotonic)


class Forwarder:
    """Relayed HTTP requests → ``target``; relayed WebSockets → ``target`` (``ws://`` / ``wss://``).

    ``entity`` is the hybrid connection's name (``orders`` or ``orders/eu``); ``connection`` the
    name used in logs and metrics (default: ``entity``). Give a listener ``request_handler=
    forwarder.handle`` and ``accept_handler=forwarder.accept``, and run
    ``forwarder.pipe_websocket(stream)`` for each accepted stream. ``start()`` / ``stop()`` open
    and close the HTTP session.
    """

    def __init__(self, target: ForwardTarget, entity: str, *, connection: str | None = None,
                 observer: ForwardObserver | None = None, session: aiohttp.ClientSession | None = None):
        self.target = target
        self.entity = entity
        self.connection = connection or entity
        self.observer = observer or ForwardObserver()
        self._entity_segments = tuple(entity.strip("/").split("/"))
        self._session = session
        self._owns_session = session is None
        self._in_flight = 0
        self._websockets = 0
        self._pending: dict[str, _Pending] = {}
        self._ws_tasks: set[asyncio.Task] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,
                # sock_read bounds every wait for the local service, including mid-body while streaming.
                timeout=aiohttp.ClientTimeout(total=None, connect=self.target.connect_timeout, sock_read=self.target.timeout),
                cookie_jar=aiohttp.DummyCookieJar(),  # a proxy must not keep one sender's cookies for the next
            )

    async def stop(self) -> None:
        for pending in self._pending.values():
            pending.span.end()
            await pending.local.close()
        self._pending.clear()
        for task in list(self._ws_tasks):
            task.cancel()
        if self._ws_tasks:
            await asyncio.wait(list(self._ws_tasks), timeout=2)
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    @property
    def in_flight(self) -> int:
        """HTTP requests and WebSocket streams being forwarded right now."""
        return self._in_flight + self._websockets

    # -- the one place a relayed path becomes a local URL --------------------------------------

    def resolve(self, raw: str, *, websocket: bool = False) -> URL:
        """The local URL for a relayed request target (``/entity/rest?query``), or raise.

        Raises :class:`~relay.paths.PathError` (answer 400) for a path the canonical rules refuse
        or one that is not under the hybrid connection, and :class:`PermissionError` (answer 403)
        for a path outside ``allow_paths``.
        """
        path = canonical_path(raw, what="relayed path")
        rest = path.relative_to(self._entity_segments, case_sensitive=False)
        if rest is None:
            raise PathError(f"relayed path: {path.path!r} is not under the hybrid connection {self.entity!r}")
        if self.target.allow_paths and not any(rest.startswith(p) for p in self.target.allow_paths):
            raise PermissionError(f"path {rest.path!r} is not exposed by this forwarder (allowed: "
                                  + ", ".join(p.path for p in self.target.allow_paths) + ")")
        return url_with_path(self.target.ws_base if websocket else self.target.base, rest)

    # -- HTTP -----------------------------------------------------------------------------------

    async def handle(self, request: RelayedHttpRequest) -> RelayedHttpResponse:
        """Answer one relayed HTTP request from the local service (or 400/403/502/503/504).

        Runs in an ``agent forward`` span whose parent is the sender's ``traceparent`` (if any);
        the local service gets this span's ``traceparent``.
        """
        attributes = {"http.request.method": request.method, "relay.connection": self.connection,
                      "relay.request_id": request.id}
        with tracing.span(tracing.AGENT_FORWARD, kind=SpanKind.SERVER, context=tracing.extract(request.headers),
                          attributes=attributes) as current:
            response = await self._handle(request)
            tracing.set_http_status(current, response.status)
            return response

    async def _handle(self, request: RelayedHttpRequest) -> RelayedHttpResponse:
        started = time.monotonic()
        bytes_in = 0
        try:
            url = self.resolve(request.target)
        except PathError as exc:
            return self._refuse(request, 400, str(exc), started)
        except PermissionError as exc:
            return self._refuse(request, 403, str(exc), started)
        limit = self.target.max_concurrency
        if limit and self._in_flight >= limit:
            response = RelayedHttpResponse(503, {"Retry-After": "1", "Content-Type": "text/plain; charset=utf-8"},
                                           f"More than {limit} requests in flight to the local service; try again.")
            self._done(request, response, 0, None, started, note="concurrency limit")
            return response
        self._in_flight += 1
        assert self._session is not None, "call start() first"
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _SKIP_REQUEST_HEADERS]
        headers += tracing.inject().items()  # this span's trace context (the sender's was dropped with the skip list)
        contacted = time.monotonic()
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(self.target.timeout):
                body = await request.read()
                bytes_in = len(body)
                contacted = time.monotonic()
                resp = await self._session.request(request.method, url, headers=headers, data=body or None,
                                                   allow_redirects=False)
                out_headers = [(k, v) for k, v in resp.headers.items() if k.lower() not in _SKIP_RESPONSE_HEADERS]
                status, reason = resp.status, resp.reason
                length = resp.content_length
                small = length is not None and length <= STREAM_THRESHOLD
                out = await resp.read() if small or not 200 <= status <= 599 else None
            if not 200 <= status <= 599:
                # Informational or out-of-range answers cannot be relayed as a final response.
                response = RelayedHttpResponse(502, {"Content-Type": "text/plain; charset=utf-8"},
                                               f"The local service answered with status {status}, which cannot be relayed.")
            elif out is not None:
                response = RelayedHttpResponse(status, out_headers, out, reason)
            else:
                # Large or unknown-length bodies stream through (the listener sends them over a rendezvous);
                # the log line and byte counts follow when the last chunk has gone.
                seconds = time.monotonic() - contacted
                response = RelayedHttpResponse(status, out_headers, self._stream(resp, request, status, bytes_in, seconds,
                                                                                 started), reason)
                resp = None  # the stream owns it now
                return response
        except TimeoutError:
            response = RelayedHttpResponse(504, {"Content-Type": "text/plain; charset=utf-8"},
                                           f"The local service did not answer within {self.target.timeout:g} s.")
        except (aiohttp.ClientError, OSError) as exc:
            response = RelayedHttpResponse(502, {"Content-Type": "text/plain; charset=utf-8"},
                                           f"The local service did not answer: {type(exc).__name__}.")
        finally:
            self._in_flight -= 1
            if resp is not None:
                resp.release()
        self._done(request, response, bytes_in, time.monotonic() - contacted, started)
        return response

    async def _stream(self, resp: aiohttp.ClientResponse, request: RelayedHttpRequest, status: int, bytes_in: int,
                      seconds: float, started: float) -> AsyncIterator[bytes]:
        sent = 0
        note = None
        try:
            async for chunk in resp.content.iter_chunked(STREAM_CHUNK):
                sent += len(chunk)
                yield chunk
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            note = f"the local service broke off the body: {type(exc).__name__}"
            raise
        finally:
            resp.release()
            self._done(request, RelayedHttpResponse(status), bytes_in, seconds, started, note=note, bytes_out=sent)

    def _refuse(self, request: RelayedHttpRequest, status: int, message: str, started: float) -> RelayedHttpResponse:
        response = RelayedHttpResponse(status, {"Content-Type": "text/plain; charset=utf-8"}, message)
        self._done(request, response, 0, None, started, note=message)
        return response

    def _done(self, request: RelayedHttpRequest, response: RelayedHttpResponse, bytes_in: int, seconds: float | None,
              started: float, note: str | None = None, bytes_out: int | None = None) -> None:
        if bytes_out is None:
            body = response.body
            bytes_out = len(body.encode("utf-8") if isinstance(body, str) else body) if isinstance(body, (bytes, bytearray, str)) else 0
        self.observer.request_done(request.id, request.method, response.status, bytes_in, bytes_out, seconds)
        fields = {"event": "request", "connection": self.connection, "request_id": request.id, "method": request.method,
                  "status": response.status, "duration_ms": round((time.monotonic() - started) * 1000, 1),
                  "bytes_in": bytes_in, "bytes_out": bytes_out}
        if note:
            fields["reason"] = note
        trace_id = trace.get_current_span().get_span_context().trace_id
        if trace_id:
            fields["trace_id"] = f"{trace_id:032x}"  # find the request's trace from its log line
        level = logging.WARNING if response.status >= 500 or note else logging.INFO
        _log.log(level, "%s %s -> %d", request.method, _loggable_path(request.target), response.status,
                 extra={"fields": fields})

    # -- WebSocket ------------------------------------------------------------------------------

    async def accept(self, ctx: AcceptContext) -> bool:
        """The listener's ``accept_handler``: admit a WebSocket sender only if its path may be forwarded
        and the local service takes the WebSocket.

        The local WebSocket is opened here, before the sender is accepted, so a local service that
        is down rejects the sender with 502 (not an accepted stream that closes at once), and the
        subprotocol the local service picked is the one the sender gets.
        """
        self._prune()
        reason: str | None = None
        if not self.target.websockets:
            ctx.status_code, reason = 403, "WebSocket forwarding is off for this connection"
        elif self.target.max_websockets and self._websockets + len(self._pending) >= self.target.max_websockets:
            ctx.status_code, reason = 503, f"More than {self.target.max_websockets} WebSocket streams are open"
        else:
            raw = urlsplit(ctx.url)
            try:
                url = self.resolve(raw.path + (f"?{raw.query}" if raw.query else ""), websocket=True)
            except PathError as exc:
                ctx.status_code, reason = 400, str(exc)
            except PermissionError as exc:
                ctx.status_code, reason = 403, str(exc)
            else:
                reason = await self._open_local(ctx, url)
                if reason is None:
                    return True
                ctx.status_code = 502
        ctx.status_description = reason
        _log.warning("WebSocket refused: %s", reason, extra={"fields": {
            "event": "websocket_refused", "connection": self.connection, "request_id": ctx.id,
            "status": ctx.status_code, "reason": reason}})
        self.observer.websocket_refused(ctx.id, int(ctx.status_code or 400))
        return False

    async def _open_local(self, ctx: AcceptContext, url: URL) -> str | None:
        """Connect the local WebSocket for ``ctx``; ``None`` when done, else why not (for the rejection)."""
        assert self._session is not None, "call start() first"
        span = tracing.tracer().start_span(
            tracing.AGENT_FORWARD, context=tracing.extract(ctx.headers), kind=SpanKind.SERVER,
            attributes={"relay.connection": self.connection, "relay.request_id": ctx.id, "relay.websocket": True})
        headers = [(k, v) for k, v in ctx.headers.items() if k.lower() not in _SKIP_WS_HEADERS]
        headers += tracing.inject(context=trace.set_span_in_context(span)).items()
        try:
            # The listener waits 20 s for an accept handler; answer (502) well before that.
            async with asyncio.timeout(min(self.target.connect_timeout, 15.0)):
                local = await self._session.ws_connect(url, headers=headers, protocols=tuple(ctx.subprotocols),
                                                       autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            status = getattr(exc, "status", None)
            reason = f"local service unavailable: {type(exc).__name__}" + (f" {status}" if status else "")
            tracing.set_http_status(span, 502)
            span.end()
            return reason
        ctx.subprotocol = local.protocol
        self._pending[ctx.id] = _Pending(url, local, span)
        return None

    def _prune(self) -> None:
        """Close local WebSockets for senders we admitted but the listener never delivered (its accept failed)."""
        now = time.monotonic()
        for key in [k for k, p in self._pending.items() if now - p.created > 60]:
            pending = self._pending.pop(key)
            pending.span.end()
            task = asyncio.ensure_future(pending.local.close())
            self._ws_tasks.add(task)
            task.add_done_callback(self._ws_tasks.discard)

    def spawn_pipe(self, stream: Any) -> asyncio.Task:
        """Run :meth:`pipe_websocket` for ``stream`` as a task that :meth:`stop` cancels."""
        task = asyncio.ensure_future(self.pipe_websocket(stream))
        self._ws_tasks.add(task)
        task.add_done_callback(self._ws_tasks.discard)
        return task

    async def pipe_websocket(self, stream: Any) -> None:
        """Pipe one accepted stream to the local WebSocket that :meth:`accept` opened, until either side closes."""
        pending = self._pending.pop(stream.id, None)
        if pending is None:
            # Only streams this forwarder's accept() admitted are piped: the path was checked there.
            await stream.close(1008, "not admitted by the forwarder")
            return
        self._websockets += 1
        self.observer.websocket_opened(stream.id)
        counts = [0, 0]
        fields = {"event": "websocket", "connection": self.connection, "request_id": stream.id}
        started = time.monotonic()
        status = 101
        _log.info("WebSocket opened", extra={"fields": {**fields, "status": 101}})
        with trace.use_span(pending.span, end_on_exit=True):
            try:
                await self._pipe(stream, pending.local, counts)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                status = 502
                _log.warning("WebSocket to the local service failed: %s", type(exc).__name__,
                             extra={"fields": {**fields, "status": 502, "reason": type(exc).__name__}})
                await stream.close(1011, "local service unavailable")
            finally:
                self._websockets -= 1
                self.observer.websocket_closed(stream.id, status, counts[0], counts[1])
                if not pending.local.closed:
                    await pending.local.close()
            tracing.set_http_status(pending.span, status)
        _log.info("WebSocket closed", extra={"fields": {**fields, "status": status, "bytes_in": counts[0],
                                                        "bytes_out": counts[1],
                                                        "duration_ms": round((time.monotonic() - started) * 1000, 1)}})

    async def _pipe(self, stream: Any, local: aiohttp.ClientWebSocketResponse, counts: list[int]) -> None:
        async def up() -> None:
            async for message in stream:
                if isinstance(message, str):
                    counts[0] += len(message.encode("utf-8"))
                    await local.send_str(message)
                else:
                    counts[0] += len(message)
                    await local.send_bytes(message)
            await local.close()

        async def down() -> None:
            async for msg in local:
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    data = msg.data
                    counts[1] += len(data.encode("utf-8") if isinstance(data, str) else data)
                    await stream.send(data)
                else:
                    break
            await stream.close()

        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.wait(tasks, timeout=5)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, (aiohttp.ClientError, OSError)):
                raise result


def _loggable_path(target: str) -> str:
    """The path without its query: queries may carry keys (``?code=``, ``?sig=``), paths should not."""
    return target.partition("?")[0][:200]
