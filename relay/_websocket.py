"""Every listener and sender WebSocket as raw frames over an aiohttp connection.

The handshake goes through an aiohttp session (its TLS settings and connection machinery, the
address byte for byte), and then this module installs its own frame parser on the connection:
every frame is parsed in the protocol's ``data_received`` and handed to a waiting reader, with no
reassembly task, no per-message timeout or heartbeat bookkeeping and no extra copy for the body.
Writes are single ``transport.write`` calls of masked frames (:func:`relay._frames.encode_frame`),
so a command and its body leave in one write (one TLS record).

It carries the control channel (commands, with coalesced response writes), request rendezvous, whose body arrives as ONE binary message in many fragments and is
handed on fragment by fragment (up to 64 MiB, never reassembled), and relayed WebSocket streams
(:class:`relay.stream.HybridConnectionStream`, sender and listener side), which need subprotocol
negotiation, a half-close (``autoclose=False``: the peer's close frame is not echoed until this
side closes) and a PING keep-alive. Measured: a relayed 1 KB echo costs less CPU per message than
aiohttp's own WebSocket client on the same connection (bench/PROFILE.md).

Only what the relay needs: text/binary/continuation frames, PING answered, PONG noted, the close
handshake; no extensions are negotiated; a protocol violation closes with 1002.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections import deque
from typing import Any, AsyncIterable, Mapping, Sequence

import aiohttp
from yarl import URL

from ._frames import BINARY, CONTINUATION, command_frames, encode_frame
from ._transport import connect_error

TEXT = 0x1
CLOSE = 0x8
PING = 0x9
PONG = 0xA
_DATA_OPCODES = (CONTINUATION, TEXT, BINARY)
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_HIGH_WATER = 4 * 1024 * 1024  # queued frame bytes before the socket stops reading (flow control)


class WebSocketClosed(Exception):
    """The socket is closed; ``code``/``reason`` from the peer's close frame (``code`` is ``None``
    when there was none: the connection dropped, or ``reason`` says why it was dropped here)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"{code} {reason}".strip() if code is not None else (reason or "closed without a close frame"))
        self.code = code
        self.reason = reason


class _Parser:
    """Feeds parsed frames to the socket (aiohttp calls ``feed_data`` from ``data_received``)."""

    __slots__ = ("_sock", "_buf", "_eof")

    def __init__(self, sock: WebSocket) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._eof = False

    # The payload interface aiohttp's ResponseHandler expects of a parser/queue.
    def is_eof(self) -> bool:
        return self._eof

    def feed_eof(self) -> None:
        self._eof = True
        self._sock._on_eof()

    def set_exception(self, exc: BaseException, exc_cause: BaseException | None = None) -> None:
        self._eof = True
        self._sock._on_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        sock = self._sock
        sock._seen = True  # traffic, for the keep-alive
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data  # the usual case: frames start at the chunk's start; slice it directly
        pos, end = 0, len(view)
        on_frame = sock._on_frame
        while end - pos >= 2:
            b0, b1 = view[pos], view[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (view[pos + 2] << 8) | view[pos + 3]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = struct.unpack_from("!Q", view, pos + 2)[0]
                head = 10
            masked = b1 & 0x80
            if masked:
                head += 4
            if end - pos < head + length:
                break
            payload = bytes(view[pos + head : pos + head + length])
            if masked:  # servers never mask; tolerate it anyway
                key = view[pos + head - 4 : pos + head]
                payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
            pos += head + length
            if b0 & 0x70:
                sock._protocol_error("reserved bits set without an extension")
                return False, b""
            on_frame(b0 & 0x0F, bool(b0 & 0x80), payload)
        if view is buf:
            if pos:
                del buf[:pos]
        elif pos < end:
            buf += data[pos:]
        return False, b""


class WebSocket:
    """A client WebSocket over an upgraded aiohttp connection, frame by frame.

    ``autoclose=True`` (request rendezvous) answers the peer's close frame at once;
    ``autoclose=False`` (streams) leaves the send side open until :meth:`close`, for a half-close.
    ``subprotocol`` is the one the server chose (``None`` if none).
    """

    def __init__(self, response: aiohttp.ClientResponse, *, autoclose: bool = True, subprotocol: str | None = None) -> None:
        conn = response.connection
        assert conn is not None and conn.transport is not None
        self._response = response
        self._protocol: Any = conn.protocol
        self._transport: asyncio.Transport = conn.transport  # type: ignore[assignment]
        self._frames: deque[tuple[int, bool, bytes]] = deque()
        self._queued = 0
        self._paused = False
        self._waiter: asyncio.Future | None = None  # a reader waiting for frames
        self._close_waiter: asyncio.Future | None = None  # close() waiting for the peer's close frame
        self._closed: WebSocketClosed | None = None  # set once the peer's close (or EOF) is in
        self._close_sent = False
        self._autoclose = autoclose
        self._seen = False  # anything received since the last keep-alive PING
        self._keepalive: asyncio.TimerHandle | None = None
        self._held: list[bytes] | None = None  # coalesced command frames waiting for the loop's next turn
        self.subprotocol = subprotocol
        self._parser = _Parser(self)
        self._protocol.set_parser(self._parser, self._parser)  # also parses bytes that came with the 101

    @classmethod
    async def open(
        cls,
        session: aiohttp.ClientSession,
        url: str | URL,
        *,
        timeout: float | None,
        headers: Mapping[str, str] | None = None,
        protocols: Sequence[str] = (),
        autoclose: bool = True,
        context: str = "",
    ) -> WebSocket | tuple[int, str]:
        """The open socket, or ``(status, reason)`` when the service refused the handshake.

        ``url`` goes out byte for byte (the service's rendezvous addresses must be used as given).
        With ``context``, network and certificate failures raise
        :class:`~relay.errors.ConnectionLostError` naming the host (never the query, which can hold
        a rendezvous secret); without it aiohttp's and the OS's errors propagate as they are.
        """
        key = base64.b64encode(os.urandom(16))
        hdrs = dict(headers) if headers else {}
        hdrs["Upgrade"] = "websocket"
        hdrs["Connection"] = "Upgrade"
        hdrs["Sec-WebSocket-Version"] = "13"
        hdrs["Sec-WebSocket-Key"] = key.decode()
        if protocols:
            hdrs["Sec-WebSocket-Protocol"] = ", ".join(protocols)
        target = url if isinstance(url, URL) else URL(url, encoded=True)
        try:
            async with asyncio.timeout(timeout):
                response = await session.request("GET", target, headers=hdrs, read_until_eof=False, allow_redirects=False)
        except (aiohttp.ClientError, OSError) as exc:
            if not context:
                raise
            raise connect_error(exc, target, context) from None
        if response.status != 101:
            status, reason = response.status, response.reason or ""
            response.close()
            return status, reason
        answer = response.headers
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode()
        if answer.get("Sec-WebSocket-Accept") != accept or answer.get("Upgrade", "").lower() != "websocket":
            response.close()
            return 101, "invalid WebSocket handshake answer"
        chosen = answer.get("Sec-WebSocket-Protocol")
        if chosen is not None and chosen not in protocols:
            response.close()
            return 101, f"the server chose subprotocol {chosen!r}, which was not offered"
        return cls(response, autoclose=autoclose, subprotocol=chosen)

    # -- incoming -------------------------------------------------------------------------------------

    def _on_frame(self, opcode: int, fin: bool, payload: bytes) -> None:
        if opcode in _DATA_OPCODES:
            self._frames.append((opcode, fin, payload))
            self._queued += len(payload)
            if self._queued > _HIGH_WATER and not self._paused:
                self._paused = True
                self._protocol.pause_reading()
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if opcode not in (CLOSE, PING, PONG) or not fin or len(payload) > 125:
            self._protocol_error(f"invalid frame (opcode {opcode:#x})")
            return
        if opcode == PING:
            if not self._close_sent and not self._transport.is_closing():
                self._transport.write(encode_frame(payload, PONG, True))
            return
        if opcode == PONG:
            return
        # CLOSE
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        self._set_closed(WebSocketClosed(code, payload[2:].decode("utf-8", "replace")))
        if self._autoclose and not self._close_sent and not self._transport.is_closing():
            self._close_sent = True
            self._transport.write(encode_frame(payload[:2], CLOSE, True))  # echo the code

    def _protocol_error(self, what: str) -> None:
        """The peer broke the framing: close with 1002 and drop the connection."""
        self._set_closed(WebSocketClosed(None, f"WebSocket protocol error: {what}"))
        if not self._close_sent and not self._transport.is_closing():
            self._close_sent = True
            self._transport.write(encode_frame(struct.pack("!H", 1002), CLOSE, True))
        self._response.close()

    def _on_eof(self) -> None:
        self._set_closed(WebSocketClosed(None, ""))

    def _set_closed(self, closed: WebSocketClosed) -> None:
        if self._closed is None:
            self._closed = closed
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        self._wake()

    def _wake(self) -> None:
        for waiter in (self._waiter, self._close_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def recv_frame(self) -> tuple[int, bool, bytes]:
        """The next data frame ``(opcode, fin, payload)``; raises :class:`WebSocketClosed` at the end."""
        frames = self._frames
        while not frames:
            if self._closed is not None:
                raise self._closed
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frame = frames.popleft()
        self._queued -= len(frame[2])
        if self._paused and self._queued < _HIGH_WATER // 2:
            self._paused = False
            self._protocol.resume_reading()
        return frame

    async def recv_message(self) -> str | bytes:
        """A whole message (text decoded as UTF-8; invalid UTF-8 raises ``UnicodeDecodeError``)."""
        opcode, fin, payload = await self.recv_frame()
        if opcode == CONTINUATION:
            self._protocol_error("a continuation frame without a message to continue")
            raise self._closed  # type: ignore[misc]
        if fin:
            return payload.decode("utf-8") if opcode == TEXT else payload
        parts = [payload]
        while not fin:
            next_opcode, fin, payload = await self.recv_frame()
            if next_opcode != CONTINUATION:
                self._protocol_error("a new message inside a fragmented one")
                raise self._closed  # type: ignore[misc]
            parts.append(payload)
        data = b"".join(parts)
        return data.decode("utf-8") if opcode == TEXT else data

    async def body_fragments(self) -> AsyncIterable[bytes]:
        """The fragments of the binary message that comes next, as they arrive."""
        fin = False
        while not fin:
            _opcode, fin, payload = await self.recv_frame()
            yield payload

    # -- keep-alive -------------------------------------------------------------------------------------

    def keep_alive(self, interval: float | None) -> None:
        """A PING every ``interval`` s (as .NET's keep-alive, traffic or not); the connection is
        dropped (readers get :class:`WebSocketClosed` saying why) when nothing at all arrived
        within ``interval / 2`` after a PING."""
        if interval:
            self._keepalive = asyncio.get_running_loop().call_later(interval, self._ping, interval)

    def _ping(self, interval: float) -> None:
        if self.closed:
            return
        self._seen = False
        self._transport.write(encode_frame(b"", PING, True))
        self._keepalive = asyncio.get_running_loop().call_later(interval / 2, self._check, interval)

    def _check(self, interval: float) -> None:
        if self.closed:
            return
        if not self._seen:
            self._set_closed(WebSocketClosed(None, f"no answer to a keep-alive PING within {interval / 2:g} s"))
            self._response.close()
            return
        self._keepalive = asyncio.get_running_loop().call_later(interval / 2, self._ping, interval)

    # -- outgoing -------------------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        if self._close_sent or self._transport.is_closing():
            raise WebSocketClosed(self._closed.code if self._closed else None, "the WebSocket is closed")
        if self._held:
            self._flush()
        self._transport.write(data)  # one buffer: one TLS record
        if self._protocol.writing_paused:
            await self._protocol._drain_helper()

    async def send(self, data: bytes | bytearray | memoryview | str) -> None:
        """One message in one frame: ``str`` as text, bytes-like as binary."""
        if type(data) is str:
            await self._write(encode_frame(data.encode("utf-8"), TEXT, True))
        else:
            await self._write(encode_frame(data, BINARY, True))

    async def send_command(self, text: str, body: bytes | bytearray | memoryview | None = None, *, coalesce: bool = False) -> None:
        """A command's JSON (text message) and its body (binary message, if any) in one write, so
        nothing can come between them and no lock is needed.

        ``coalesce=True`` (the listener passes it while other requests are in flight) holds the
        frames until the loop's next turn and writes everything held by then at once: responses
        finished in the same loop iteration share one TLS record and one system call. Any other
        write first writes whatever is held, so the order on the socket is the order of the calls,
        and nothing held is written after this side's close frame.
        """
        if self._close_sent or self._transport.is_closing():
            raise WebSocketClosed(self._closed.code if self._closed else None, "the WebSocket is closed")
        data = command_frames(text, body)
        held = self._held
        if held is not None:
            held.append(data)
            if not coalesce:
                self._flush()
        elif coalesce:
            self._held = [data]
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._transport.write(data)
        if self._protocol.writing_paused:
            await self._protocol._drain_helper()

    def _flush(self) -> None:
        held, self._held = self._held, None
        # Closed since (our close frame may be out: nothing may follow it): what is held is lost
        # like bytes in a socket buffer when a connection drops; the service answers the senders.
        if held and not self._close_sent and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    async def send_stream(self, chunks: AsyncIterable[bytes]) -> None:
        """One binary message from an async iterable, a frame per chunk as produced (last one FIN)."""
        opcode = BINARY
        pending: bytes | None = None
        async for chunk in chunks:
            if not chunk:
                continue
            if pending is not None:
                await self._write(encode_frame(pending, opcode, False))
                opcode = CONTINUATION
            pending = chunk
        await self._write(encode_frame(pending or b"", opcode, True))

    async def send_pong(self) -> None:
        """An unsolicited PONG (RFC 6455 §5.5.3: a keep-alive that expects no answer)."""
        await self._write(encode_frame(b"", PONG, True))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's extra info (``"socket"``, ``"peername"``, ...)."""
        return self._transport.get_extra_info(name, default)

    def send_close(self, code: int = 1000, reason: str = "") -> bool:
        """Send a close frame (once) without waiting for the answer; False if the socket is gone."""
        if self._close_sent or self._transport.is_closing():
            return False
        if self._held:
            self._flush()  # what this side already sent goes out ahead of its close frame
        self._close_sent = True
        self._transport.write(encode_frame(struct.pack("!H", code) + reason.encode("utf-8")[:120], CLOSE, True))
        return True

    async def close(self, code: int = 1000, reason: str = "", *, timeout: float = 10.0) -> None:
        """Close handshake (wait up to ``timeout`` for the peer's close frame), then drop the connection."""
        try:
            if self.send_close(code, reason):
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout
                while self._closed is None:
                    self._frames.clear()  # nothing more is read after our close
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    self._close_waiter = loop.create_future()
                    try:
                        await asyncio.wait_for(self._close_waiter, remaining)
                    except asyncio.TimeoutError:
                        break
                    finally:
                        self._close_waiter = None
        finally:
            self.abort(code)

    def abort(self, code: int | None = None, reason: str = "closed by this side") -> None:
        """Drop the connection now; a reader still waiting (a rendezvous serving loop) ends."""
        self._set_closed(WebSocketClosed(code, reason))
        self._response.close()

    @property
    def closed(self) -> bool:
        return self._close_sent or self._closed is not None or self._transport.is_closing()
