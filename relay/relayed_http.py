"""The HTTP request a listener receives and the response its handler returns.

Plain data holders with the header rules of the protocol (one string per header name, no
hop-by-hop headers, no CR/LF); :mod:`relay.listener` moves them over the wire.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, AsyncIterable, AsyncIterator, Iterable, Mapping, Union

from multidict import CIMultiDict, CIMultiDictProxy

from .protocol import HOP_BY_HOP_HEADERS, RemoteEndpoint, query_params

__all__ = ["BodyType", "RelayedHttpRequest", "RelayedHttpResponse", "response_headers", "reason_phrase"]


class RelayedHttpRequest:
    """An HTTP request relayed to this listener.

    ``method``; ``target`` (the sender's path and query, *including* the entity path, with the
    ``sb-hc-*`` parameters removed, e.g. ``/orders/a?x=1``); ``path`` (relative to the entity,
    ``/a``); ``query`` (raw query string without ``?``, ``"x=1"``); ``query_params`` (decoded
    dict, first value wins); ``headers`` (case-insensitive; repeated headers arrive folded into
    one comma-joined value); ``id`` (the service's request id); ``remote_endpoint`` (sender
    address and port, or ``None``).

    The body: ``await read()`` returns all of it (waiting for the rest if it is still
    arriving); ``async for chunk in request.iter_chunks()`` (or ``request.stream``) yields it
    piece by piece *as it arrives*, without keeping it. Requests the service delivers over a
    rendezvous (bodies over 64 KiB, chunked or of unknown length) are still streaming when the
    handler starts: for them ``body``, ``text()`` and ``json()`` work only after
    ``await read()`` (before that they raise :class:`RuntimeError`). Small inline requests
    arrive whole, so ``body`` works at once. Consume the body once: either ``read()`` or
    ``iter_chunks()``. If the sender goes away mid-body, ``read()`` / ``iter_chunks()`` raise
    :class:`~relay.errors.ConnectionLostError`. A body the handler does not read is discarded.
    """

    __slots__ = ("method", "target", "path", "query", "_body", "_stream", "_streaming", "id", "remote_endpoint",
                 "_raw_headers", "_headers")

    def __init__(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | None,
        body: bytes,
        id: str,
        remote_endpoint: RemoteEndpoint | None,
        entity: str,
        stream: AsyncIterable[bytes] | None = None,
    ):
        self.method = method
        self.target = target
        path, _, self.query = target.partition("?")
        prefix = "/" + entity
        # The entity prefix as sent (the usual case) or in another case (entity names are case-insensitive).
        if (path.startswith(prefix) or path.lower().startswith(prefix.lower())) and (
            len(path) == len(prefix) or path[len(prefix)] == "/"
        ):
            path = path[len(prefix) :] or "/"
        self.path = path or "/"
        self._raw_headers = headers or {}
        self._headers: CIMultiDictProxy[str] | None = None
        self._body = body
        self._stream = stream  # None once the whole body is in ``_body``
        self._streaming = False  # read() or iter_chunks() has taken the stream
        self.id = id
        self.remote_endpoint = remote_endpoint

    @property
    def body(self) -> bytes:
        """The whole body; for a body still streaming, only after ``await read()``."""
        if self._stream is not None:
            if self._streaming:
                raise RuntimeError("the request body was consumed by iter_chunks() (or read() has not finished)")
            raise RuntimeError("the request body is still streaming: call `await request.read()` first, or use iter_chunks()")
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = value
        self._stream = None

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        headers = self._headers
        if headers is None:
            headers = self._headers = CIMultiDictProxy(CIMultiDict(self._raw_headers))
        return headers

    @property
    def query_params(self) -> dict[str, str]:
        return query_params(self.query)

    async def read(self) -> bytes:
        """The whole body, waiting for the rest of it when it is still arriving."""
        stream = self._stream
        if stream is None:
            return self._body
        if self._streaming:
            raise RuntimeError("the request body was already consumed by iter_chunks()")
        self._streaming = True
        parts = bytearray()
        async for chunk in stream:
            parts += chunk
        self._body = bytes(parts)
        self._stream = None
        return self._body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body piece by piece as it arrives (nothing is kept; no empty pieces)."""
        stream = self._stream
        if stream is None:
            if self._body:
                yield self._body
            return
        if self._streaming:
            raise RuntimeError("the request body was already consumed")
        self._streaming = True
        async for chunk in stream:
            if chunk:
                yield chunk

    @property
    def stream(self) -> AsyncIterator[bytes]:
        """Same as :meth:`iter_chunks` (``async for chunk in request.stream``)."""
        return self.iter_chunks()

    def text(self, encoding: str = "utf-8") -> str:
        """The body decoded (UTF-8 by default); see :attr:`body`."""
        return self.body.decode(encoding, errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; see :attr:`body`."""
        return json.loads(self.body)

    def __repr__(self) -> str:
        size = "streaming" if self._stream is not None else f"{len(self._body)} bytes"
        return f"<RelayedHttpRequest {self.method} {self.target} id={self.id!r} body={size}>"


BodyType = Union[bytes, bytearray, memoryview, str, AsyncIterable[bytes], None]


class RelayedHttpResponse:
    """The answer a request handler returns.

    ``status`` (default 200); ``headers`` (mapping or list of pairs; repeated names are folded
    into one comma-joined value because the protocol carries one string per name; hop-by-hop
    headers such as ``Content-Length`` are dropped, the service frames the body itself);
    ``body``: bytes, str (UTF-8; ``Content-Type: text/plain; charset=utf-8`` is added when no
    content type is set) or an async iterable of bytes (streamed over a rendezvous); ``reason``:
    the status description (default: the standard phrase).

    Bodies up to 64 KiB go inline on the control channel; bigger or streamed bodies go over a
    rendezvous WebSocket to the request's address.
    """

    __slots__ = ("status", "headers", "body", "reason")

    def __init__(
        self,
        status: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: BodyType = b"",
        reason: str | None = None,
    ):
        self.status = int(status)
        self.headers = headers
        self.body = body
        self.reason = reason

    def __repr__(self) -> str:
        return f"<RelayedHttpResponse {self.status}>"


def response_headers(headers: Any, body_is_text: bool) -> dict[str, str]:
    """The headers the response command carries: hop-by-hop names dropped, repeated names folded
    into one comma-joined value, CR/LF in values replaced by spaces (no header injection via the
    service), and a text content type for a ``str`` body without one."""
    if not headers:
        return {"Content-Type": _TEXT_CONTENT_TYPE} if body_is_text else {}
    result: dict[str, str] = {}
    lowered: dict[str, str] = {}
    hop = HOP_BY_HOP_HEADERS
    for name, value in headers.items() if hasattr(headers, "items") else headers:
        key = name.lower()
        if key in hop:
            continue
        if type(value) is not str:
            value = str(value)
        if "\r" in value or "\n" in value:
            value = value.replace("\r", " ").replace("\n", " ")
        original = lowered.get(key)
        if original is None:
            lowered[key] = name
            result[name] = value
        else:
            result[original] = f"{result[original]}, {value}"
    if body_is_text and "content-type" not in lowered:
        result["Content-Type"] = _TEXT_CONTENT_TYPE
    return result


_TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
_PHRASES = {status.value: status.phrase for status in HTTPStatus}


def reason_phrase(status: int, reason: str | None) -> str:
    if reason is not None:
        return reason.replace("\r", " ").replace("\n", " ")
    return _PHRASES.get(status, "")
