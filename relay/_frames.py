"""Sending one binary message in several frames (a streamed body) over an aiohttp client WebSocket.

aiohttp's public API sends each message as a single frame, but a streamed HTTP response must go
out as it is produced: the service forwards each fragment to the sender, and a response that
stays idle for 60 s is cut off. This writes continuation frames directly to the socket. If the
aiohttp internals it needs are missing, the body is collected and sent as one message instead.
"""

from __future__ import annotations

import random
import struct
from typing import AsyncIterable

import aiohttp

try:  # aiohttp's (C-accelerated) masking routine
    from aiohttp._websocket.helpers import websocket_mask as _mask
except ImportError:  # pragma: no cover - other aiohttp versions
    _mask = None

# Masking keys only stop proxies from mistaking frames for other traffic; a PRNG is what aiohttp's
# own writer uses too, and it saves a system call per frame.
_random_bits = random.Random().getrandbits


def _mask_key() -> bytes:
    return _random_bits(32).to_bytes(4, "big")


BINARY = 0x2
CONTINUATION = 0x0
_TEXT = 0x1


def encode_frame(payload: bytes, opcode: int, fin: bool, *, mask: bool = True) -> bytes:
    """One WebSocket frame. Clients mask (``mask=True``); a server (the emulator) must not."""
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if mask else 0
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, bit | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, bit | 127, length)
    if not mask:
        return header + payload
    key = _mask_key()
    data = bytearray(payload)
    _mask(key, data)  # type: ignore[misc]
    return header + key + data


async def send_streamed_message(ws: aiohttp.ClientWebSocketResponse, chunks: AsyncIterable[bytes]) -> int:
    """Send ``chunks`` as one binary message (fragmented when possible). Returns the bytes sent."""
    writer = getattr(ws, "_writer", None)
    transport = getattr(writer, "transport", None)
    protocol = getattr(writer, "protocol", None)
    drain = getattr(protocol, "_drain_helper", None)
    if _mask is None or transport is None or drain is None:
        body = bytearray()
        async for chunk in chunks:
            body += chunk
        await ws.send_bytes(bytes(body))
        return len(body)
    total = 0
    opcode = BINARY
    pending: bytes | None = None
    async for chunk in chunks:
        if not chunk:
            continue
        if pending is not None:
            if transport.is_closing():
                raise ConnectionResetError("the rendezvous socket closed while streaming the body")
            transport.write(encode_frame(pending, opcode, False))
            opcode = CONTINUATION
            if protocol.writing_paused:  # type: ignore[union-attr]
                await drain()
        pending = bytes(chunk)
        total += len(pending)
    if transport.is_closing():
        raise ConnectionResetError("the rendezvous socket closed while streaming the body")
    transport.write(encode_frame(pending or b"", opcode, True))
    return total


def frames_supported(ws: aiohttp.ClientWebSocketResponse) -> bool:
    """True when :func:`write_command` can write directly to ``ws``'s transport."""
    writer = getattr(ws, "_writer", None)
    return _mask is not None and getattr(writer, "transport", None) is not None and hasattr(getattr(writer, "protocol", None), "_drain_helper")


async def write_command(ws: aiohttp.ClientWebSocketResponse, text: str, body: bytes | bytearray | memoryview | None) -> None:
    """A command's JSON (text message) and its body (binary message) in ONE transport write.

    One write keeps the pair adjacent on the socket without a lock (nothing can come between
    them) and costs one TLS record and one system call instead of two. Callers check
    :func:`frames_supported` first.
    """
    writer = ws._writer  # type: ignore[attr-defined]
    transport = writer.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the control channel is closed")
    data = encode_frame(text.encode("utf-8"), _TEXT, True)
    if body is not None:
        data += encode_frame(body, BINARY, True)
    transport.write(data)
    if writer.protocol.writing_paused:
        await writer.protocol._drain_helper()
