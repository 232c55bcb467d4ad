"""The library's one WebSocket implementation (relay._websocket) against a peer that writes raw frames.

The Relay service never sends these on purpose, so a tiny aiohttp server plays a peer that does:
fragmented messages (legal: reassembled), and framing violations (closed with 1002, and the
reader is told why instead of hanging), invalid UTF-8 in a text message (1007), a handshake that
names a subprotocol nobody offered (refused).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct

import aiohttp
import pytest

from relay._websocket import WebSocketClosed, WebSocket
from relay.errors import ConnectionLostError
from relay.stream import HybridConnectionStream

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """An unmasked server frame."""
    first = (0x80 if fin else 0) | rsv | opcode
    if len(payload) < 126:
        return struct.pack("!BB", first, len(payload)) + payload
    return struct.pack("!BBH", first, 126, len(payload)) + payload


class RawPeer:
    """Answers the handshake, writes ``script`` (raw bytes) and records what the client sends."""

    def __init__(self, script: bytes = b"", protocol: str | None = None) -> None:
        self.script = script
        self.protocol = protocol
        self.received = bytearray()
        self.server: asyncio.Server | None = None
        self.done = asyncio.Event()
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept
        if self.protocol:
            answer += b"\r\nSec-WebSocket-Protocol: " + self.protocol.encode()
        writer.write(answer + b"\r\n\r\n" + self.script)
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), 5):  # until the client hangs up
                self.received += chunk
        except (asyncio.TimeoutError, ConnectionError):
            pass
        writer.close()
        self.done.set()

    async def __aenter__(self) -> RawPeer:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def unmask_close_codes(data: bytes) -> list[int]:
    """Close codes in the client's (masked) frames."""
    codes, pos = [], 0
    while pos + 6 <= len(data):
        b0, b1 = data[pos], data[pos + 1]
        length, head = b1 & 0x7F, 2
        if length == 126:
            length, head = struct.unpack_from("!H", data, pos + 2)[0], 4
        key = data[pos + head : pos + head + 4]
        payload = bytes(b ^ key[i & 3] for i, b in enumerate(data[pos + head + 4 : pos + head + 4 + length]))
        if b0 & 0x0F == 0x8 and len(payload) >= 2:
            codes.append(struct.unpack("!H", payload[:2])[0])
        pos += head + 4 + length
    return codes


async def open_stream(peer: RawPeer, session: aiohttp.ClientSession, protocols=()) -> HybridConnectionStream:
    ws = await WebSocket.open(session, peer.url, timeout=5, protocols=protocols, autoclose=False)
    assert isinstance(ws, WebSocket), ws
    return HybridConnectionStream(ws)


async def test_fragmented_messages_are_reassembled_and_control_frames_may_interleave():
    script = (frame(0x1, "hé".encode()[:2], fin=False) + frame(0x9, b"ping?") + frame(0x0, "hé".encode()[2:] + b"llo")
              + frame(0x2, b"\x00\x01", fin=False) + frame(0x0, b"\x02", fin=False) + frame(0x0, b"", fin=True)
              + frame(0x8, struct.pack("!H", 1000)))
    async with RawPeer(script) as peer, aiohttp.ClientSession() as session:
        stream = await open_stream(peer, session)
        assert await stream.receive() == "héllo"
        assert await stream.receive() == b"\x00\x01\x02"
        assert await stream.receive() is None  # clean close: the receive side ends
        await stream.close()
        await asyncio.wait_for(peer.done.wait(), 5)
    assert peer.received[:2] == bytes([0x8A, 0x80 | 5])  # the PING in the middle was answered with a PONG


@pytest.mark.parametrize("script, why", [
    (frame(0x3, b"x"), "opcode 0x3"),  # a reserved data opcode
    (frame(0x2, b"x", rsv=0x40), "reserved bits"),  # RSV1 without a negotiated extension
    (frame(0x9, b"x", fin=False), "opcode 0x9"),  # a fragmented control frame
    (frame(0x0, b"x"), "continuation"),  # a continuation with nothing to continue
    (frame(0x1, b"a", fin=False) + frame(0x2, b"b"), "inside a fragmented"),  # a new message mid-message
])
async def test_framing_violations_close_with_1002_and_say_why(script: bytes, why: str):
    async with RawPeer(script) as peer, aiohttp.ClientSession() as session:
        stream = await open_stream(peer, session)
        with pytest.raises(ConnectionLostError, match=why):
            await asyncio.wait_for(stream.receive(), 5)
        assert stream.closed
        await stream.close()
        await asyncio.wait_for(peer.done.wait(), 5)
    assert 1002 in unmask_close_codes(bytes(peer.received))


async def test_invalid_utf8_in_a_text_message_closes_with_1007():
    async with RawPeer(frame(0x1, b"\xff\xfe")) as peer, aiohttp.ClientSession() as session:
        stream = await open_stream(peer, session)
        with pytest.raises(ConnectionLostError, match="UTF-8"):
            await asyncio.wait_for(stream.receive(), 5)
        await asyncio.wait_for(peer.done.wait(), 5)
    assert unmask_close_codes(bytes(peer.received)) == [1007]


async def test_a_subprotocol_nobody_offered_is_refused():
    async with RawPeer(protocol="evil") as peer, aiohttp.ClientSession() as session:
        result = await WebSocket.open(session, peer.url, timeout=5, protocols=("chat",))
        assert result == (101, "the server chose subprotocol 'evil', which was not offered")
        chosen = await WebSocket.open(session, peer.url, timeout=5, protocols=("evil", "chat"))
        assert isinstance(chosen, WebSocket) and chosen.subprotocol == "evil"
        chosen.abort()


async def test_the_peer_vanishing_ends_the_reader_with_the_reason():
    async with RawPeer() as peer, aiohttp.ClientSession() as session:
        ws = await WebSocket.open(session, peer.url, timeout=5)
        assert isinstance(ws, WebSocket)
        reader = asyncio.ensure_future(ws.recv_frame())
        await asyncio.sleep(0.05)
        ws.abort(reason="gone")
        with pytest.raises(WebSocketClosed, match="gone"):
            await asyncio.wait_for(reader, 5)
