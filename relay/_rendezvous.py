"""A request rendezvous as raw WebSocket frames over an aiohttp connection.

The listener's HTTP path needs what aiohttp's WebSocket client does not offer: a request body
arrives as ONE binary message in many fragments, and the handler should see each fragment as it
arrives instead of the whole (up to 64 MiB) message. So the handshake goes through the
listener's aiohttp session (its TLS settings and connection machinery, the address byte for
byte), and then this module installs its own frame parser on the connection: every frame is
delivered as it is parsed, with no reassembly and no extra copy for the body. Writes are single
``transport.write`` calls of masked frames (:func:`relay._frames.encode_frame`), so a command and
its body leave in one write. One WebSocket stack (aiohttp) for every listener socket.

Only what a rendezvous needs: text/binary/continuation frames, PING answered, PONG ignored,
the close handshake. No extensions are negotiated.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections import deque
from typing import Any, AsyncIterable

import aiohttp
from yarl import URL

from ._frames import BINARY, CONTINUATION, command_frames, encode_frame

TEXT = 0x1
CLOSE = 0x8
PING = 0x9
PONG = 0xA
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_HIGH_WATER = 4 * 1024 * 1024  # queued frame bytes before the socket stops reading (flow control)


class RendezvousClosed(Exception):
    """The rendezvous is closed; ``code``/``reason`` from the peer's close frame (``None`` if it had none)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"{code} {reason}".strip() if code is not None else "closed without a close frame")
        self.code = code
        self.reason = reason


class _Parser:
    """Feeds parsed frames to the socket (aiohttp calls ``feed_data`` from ``data_received``)."""

    __slots__ = ("_sock", "_buf", "_eof")

    def __init__(self, sock: RendezvousSocket) -> None:
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
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        on_frame = self._sock._on_frame
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            masked = b1 & 0x80
            if masked:
                head += 4
            if end - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            if masked:  # servers never mask; tolerate it anyway
                key = buf[pos + head - 4 : pos + head]
                payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
            pos += head + length
            on_frame(b0 & 0x0F, bool(b0 & 0x80), payload)
        if pos:
            del buf[:pos]
        return False, b""


class RendezvousSocket:
    """A client WebSocket over an upgraded aiohttp connection, frame by frame."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
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
        self._closed: RendezvousClosed | None = None  # set once the peer's close (or EOF) is in
        self._close_sent = False
        self._message_opcode = 0  # opcode of the data message being received (0: none)
        self._parser = _Parser(self)
        self._protocol.set_parser(self._parser, self._parser)  # also parses bytes that came with the 101

    @classmethod
    async def open(cls, session: aiohttp.ClientSession, url: str, *, timeout: float) -> RendezvousSocket | tuple[int, str]:
        """The open socket, or ``(status, reason)`` when the service refused the handshake."""
        key = base64.b64encode(os.urandom(16))
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": key.decode(),
        }
        async with asyncio.timeout(timeout):
            response = await session.request(
                "GET", URL(url, encoded=True), headers=headers, read_until_eof=False, allow_redirects=False
            )
        if response.status != 101:
            status, reason = response.status, response.reason or ""
            response.close()
            return status, reason
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode()
        if response.headers.get("Sec-WebSocket-Accept") != accept or response.headers.get("Upgrade", "").lower() != "websocket":
            response.close()
            return 101, "invalid WebSocket handshake answer"
        return cls(response)

    # -- incoming -------------------------------------------------------------------------------------

    def _on_frame(self, opcode: int, fin: bool, payload: bytes) -> None:
        if opcode == PING:
            if not self._close_sent and not self._transport.is_closing():
                self._transport.write(encode_frame(payload, PONG, True))
            return
        if opcode == PONG:
            return
        if opcode == CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            self._set_closed(RendezvousClosed(code, payload[2:].decode("utf-8", "replace")))
            if not self._close_sent and not self._transport.is_closing():
                self._close_sent = True
                self._transport.write(encode_frame(payload[:2], CLOSE, True))  # echo the code
            return
        self._frames.append((opcode, fin, payload))
        self._queued += len(payload)
        if self._queued > _HIGH_WATER and not self._paused:
            self._paused = True
            self._protocol.pause_reading()
        self._wake()

    def _on_eof(self) -> None:
        self._set_closed(RendezvousClosed(None, ""))

    def _set_closed(self, closed: RendezvousClosed) -> None:
        if self._closed is None:
            self._closed = closed
        self._wake()

    def _wake(self) -> None:
        for waiter in (self._waiter, self._close_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def recv_frame(self) -> tuple[int, bool, bytes]:
        """The next data frame ``(opcode, fin, payload)``; raises :class:`RendezvousClosed` at the end."""
        while not self._frames:
            if self._closed is not None:
                raise self._closed
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frame = self._frames.popleft()
        self._queued -= len(frame[2])
        if self._paused and self._queued < _HIGH_WATER // 2:
            self._paused = False
            self._protocol.resume_reading()
        return frame

    async def recv_message(self) -> str | bytes:
        """A whole message (text decoded); for commands, which are small."""
        opcode, fin, payload = await self.recv_frame()
        if fin:
            return payload.decode("utf-8") if opcode == TEXT else payload
        parts = [payload]
        while not fin:
            _, fin, payload = await self.recv_frame()
            parts.append(payload)
        data = b"".join(parts)
        return data.decode("utf-8") if opcode == TEXT else data

    async def body_fragments(self) -> AsyncIterable[bytes]:
        """The fragments of the binary message that comes next, as they arrive."""
        fin = False
        while not fin:
            _opcode, fin, payload = await self.recv_frame()
            yield payload

    # -- outgoing -------------------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        if self._close_sent or self._transport.is_closing():
            raise RendezvousClosed(self._closed.code if self._closed else None, "the rendezvous is closed")
        self._transport.write(data)  # one buffer: one TLS record
        if self._protocol.writing_paused:
            await self._protocol._drain_helper()

    async def send_command(self, text: str, body: bytes | bytearray | memoryview | None = None) -> None:
        """A command's JSON and (if any) its body as one binary message, in one write."""
        await self._write(command_frames(text, body))

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

    async def close(self, code: int = 1000, reason: str = "", *, timeout: float = 10.0) -> None:
        """Close handshake (wait up to ``timeout`` for the peer's close frame), then drop the connection."""
        try:
            if not self._close_sent and not self._transport.is_closing():
                self._close_sent = True
                self._transport.write(encode_frame(struct.pack("!H", code) + reason.encode("utf-8")[:120], CLOSE, True))
                deadline = asyncio.get_running_loop().time() + timeout
                while self._closed is None:
                    self._frames.clear()  # nothing more is read after our close
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        break
                    self._close_waiter = asyncio.get_running_loop().create_future()
                    try:
                        await asyncio.wait_for(self._close_waiter, remaining)
                    except asyncio.TimeoutError:
                        break
                    finally:
                        self._close_waiter = None
        finally:
            # A reader still waiting (a rendezvous serving loop) ends now instead of hanging on.
            self._set_closed(RendezvousClosed(code, "closed by this side"))
            self._response.close()

    @property
    def closed(self) -> bool:
        return self._close_sent or self._closed is not None or self._transport.is_closing()
