"""``HybridConnectionStream``: one relayed WebSocket, seen from either end.

The service relays whole messages, keeping their type, so the stream is message-oriented like
.NET's ``HybridConnectionStream`` in message mode: each :meth:`send` is one message (``bytes`` →
binary, ``str`` → text) and each :meth:`receive` returns one message.
"""

from __future__ import annotations

from typing import Any, Mapping

from ._websocket import WebSocket, WebSocketClosed
from .errors import ConnectionLostError

__all__ = ["HybridConnectionStream", "CLEAN_CLOSE_CODES"]

CLEAN_CLOSE_CODES = frozenset((1000, 1001))
"""Close codes after which :meth:`HybridConnectionStream.receive` returns ``None`` instead of raising."""

SHUTDOWN_REASON = "Shutdown"
"""Close reason of a half-close (.NET ``HybridConnectionStream.Shutdown``); the other direction stays open."""


class HybridConnectionStream:
    """A relayed WebSocket between a sender and a listener.

    * ``await send(data)``: one message per call; ``bytes``/``bytearray``/``memoryview`` go as a
      binary message, ``str`` as a text message.
    * ``await receive()``: the next message (``bytes`` or ``str``). **Returns ``None``** once the
      peer has closed cleanly (close code 1000 or 1001, including the peer's :meth:`shutdown`);
      **raises** :class:`~relay.errors.ConnectionLostError` when the connection broke (no close
      frame, or an error close code such as 1008/1011). ``async for message in stream`` stops at
      ``None``.
    * ``await shutdown()``: half-close. Sends close 1000 ``"Shutdown"`` (as .NET does) and keeps
      reading until the peer closes; :meth:`send` is no longer allowed.
    * ``await close(code=1000, reason="")``: close and wait (up to 10 s) for the peer's answer.
    * Any clean close from the other side (1000 or 1001, whatever the reason: the service sends
      its own close frames, e.g. 1001 when the sender shut down) ends the *receive* side only:
      :meth:`receive` returns ``None``, and this side may still :meth:`send` until it calls
      :meth:`close` (as .NET's ``HybridConnectionStream`` does); ``relay send --ws`` relies on it.
    * ``subprotocol``: the negotiated WebSocket subprotocol or ``None``; ``close_code`` /
      ``close_reason``: the peer's close frame, once received.
    * ``id`` is the connection's tracking id; on the listener side ``headers`` holds the sender's
      handshake headers (case-insensitive) and ``url`` the address the sender used (with the
      ``sb-hc-*`` parameters removed).

    Use it as an async context manager to close it on exit.
    """

    __slots__ = ("_ws", "_shutdown_sent", "_closed", "close_code", "close_reason", "id", "headers", "url", "__weakref__")

    def __init__(self, ws: WebSocket, *, id: str = "", headers: Mapping[str, str] | None = None, url: str = ""):
        self._ws = ws
        self._shutdown_sent = False
        self._closed = False
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.id = id
        self.headers: Mapping[str, str] = headers if headers is not None else {}
        self.url = url

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("peer-closed" if self.close_code is not None else "open")
        return f"<HybridConnectionStream id={self.id!r} {state}>"

    @property
    def subprotocol(self) -> str | None:
        return self._ws.subprotocol

    @property
    def closed(self) -> bool:
        """True once both sides are done (after :meth:`close`, or a broken connection)."""
        return self._closed or (self._ws.closed and self.close_code is None)

    async def send(self, data: bytes | bytearray | memoryview | str) -> None:
        """Send one message: ``str`` as text, bytes-like as binary."""
        if self._shutdown_sent or self._closed:
            raise ConnectionLostError("cannot send: this side already shut the stream down or closed it")
        try:
            await self._ws.send(data)
        except (WebSocketClosed, ConnectionError, RuntimeError) as exc:
            raise ConnectionLostError(f"the relayed connection is gone: {exc}") from None

    async def receive(self) -> bytes | str | None:
        """The next message; ``None`` after a clean close by the peer. See the class docs."""
        ws = self._ws
        try:
            return await ws.recv_message()
        except WebSocketClosed as closed:
            return await self._on_closed(closed)
        except UnicodeDecodeError:
            # Fail the connection (RFC 6455 §8.1): close with 1007 and drop it, no handshake to wait for.
            self._closed = True
            ws.send_close(1007, "invalid UTF-8 in a text message")
            ws.abort()
            raise ConnectionLostError("the relayed connection sent a text message that is not valid UTF-8") from None

    async def _on_closed(self, closed: WebSocketClosed) -> None:
        code = closed.code
        if code is not None and self.close_code is None and not self._closed:
            self.close_code = code
            self.close_reason = closed.reason
            if code in CLEAN_CLOSE_CODES:
                if self._shutdown_sent:
                    await self._finish()  # both directions are done
                # Otherwise a half-close: the send side stays open until close().
                return None
            await self._finish()
            raise ConnectionLostError(f"the relayed connection was closed with {code} {closed.reason}".strip())
        if self.close_code in CLEAN_CLOSE_CODES or self._closed:
            return None
        self._closed = True
        if closed.reason:
            raise ConnectionLostError(f"the relayed connection failed: {closed.reason}")
        raise ConnectionLostError("the relayed connection was lost without a close frame")

    def __aiter__(self) -> HybridConnectionStream:
        return self

    async def __anext__(self) -> bytes | str:
        message = await self.receive()
        if message is None:
            raise StopAsyncIteration
        return message

    async def shutdown(self) -> None:
        """Half-close: tell the peer this side is done sending (close 1000 "Shutdown"); keep receiving."""
        if self._shutdown_sent or self._closed:
            return
        self._shutdown_sent = True
        if self.close_code is not None:  # the peer already closed: complete the handshake
            await self._finish()
            return
        if not self._ws.send_close(1000, SHUTDOWN_REASON):
            await self._finish()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the stream (and wait up to 10 s for the peer's close frame)."""
        if self._closed:
            return
        if self._shutdown_sent and self.close_code is None:
            # Our close frame is out; drain until the peer's arrives.
            try:
                while await self.receive() is not None:
                    pass
            except ConnectionLostError:
                pass
        await self._finish(code, reason)

    async def _finish(self, code: int = 1000, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        # After both close frames have crossed, close() only drops the connection.
        try:
            await self._ws.close(code, reason)
        except Exception:  # the transport is already gone; nothing left to release
            pass

    async def __aenter__(self) -> HybridConnectionStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
