"""WebSocket frames written straight to a transport: one encoder for the library's masked frames
and the emulator's unmasked ones, and a command + body pair as one buffer (one write).
"""

from __future__ import annotations

import random
import struct

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


_PACK1 = struct.Struct("!BB").pack
_PACK2 = struct.Struct("!BBH").pack
_PACK8 = struct.Struct("!BBQ").pack


def frame_parts(payload: bytes | bytearray | memoryview, opcode: int, fin: bool, *, mask: bool = True) -> tuple:
    """One WebSocket frame as ``(header [+ masking key], payload [masked])``.

    Write the parts joined (:func:`encode_frame`, :func:`command_frames`): on a TLS transport
    every part of a ``writelines`` becomes its own TLS record.
    """
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if mask else 0
    length = len(payload)
    if length < 126:
        header = _PACK1(first, bit | length)
    elif length < 65536:
        header = _PACK2(first, bit | 126, length)
    else:
        header = _PACK8(first, bit | 127, length)
    if not mask:
        return header, payload
    key = _mask_key()
    data = bytearray(payload)  # the one copy masking needs
    _mask(key, data)  # type: ignore[misc]
    return header + key, data


def encode_frame(payload: bytes | bytearray | memoryview, opcode: int, fin: bool, *, mask: bool = True) -> bytes:
    """One WebSocket frame. Clients mask (``mask=True``); a server (the emulator) must not."""
    return b"".join(frame_parts(payload, opcode, fin, mask=mask))


def command_frames(text: str, body: bytes | bytearray | memoryview | None) -> bytes:
    """A command's JSON (text message) and its body (binary message, if any) as ONE buffer of
    masked frames: one write, one TLS record, one system call."""
    if body is None:
        return b"".join(frame_parts(text.encode("utf-8"), _TEXT, True))
    return b"".join(frame_parts(text.encode("utf-8"), _TEXT, True) + frame_parts(body, BINARY, True))
