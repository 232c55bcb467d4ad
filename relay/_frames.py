"""WebSocket frames written straight to a transport: one encoder for the library's masked frames
and the emulator's unmasked ones, and a command + body pair as one buffer (one write).
"""

from __future__ import annotations

import random
import struct

try:  # aiohttp's (C-accelerated) masking routine, in place on a bytearray
    from aiohttp._websocket.helpers import websocket_mask as _mask
except ImportError:  # pragma: no cover - other aiohttp versions
    _mask = None
# (websockets.speedups.apply_mask would save the bytearray copy, about 0.15 µs per 1 KB, but
# importing websockets costs about 100 ms of start-up: importlib.metadata for its version.)


def _masked(payload: bytes | bytearray | memoryview, key: bytes) -> bytearray:
    """``payload`` masked with ``key`` (RFC 6455 §5.3), as a new buffer."""
    data = bytearray(payload)  # the one copy masking needs
    _mask(key, data)  # type: ignore[misc]
    return data


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


def _header(first: int, second: int, length: int) -> bytes:
    """Frame header: ``first`` (FIN + opcode), ``second`` (mask bit), then the length's encoding."""
    if length < 126:
        return _PACK1(first, second | length)
    if length < 65536:
        return _PACK2(first, second | 126, length)
    return _PACK8(first, second | 127, length)


def frame_parts(payload: bytes | bytearray | memoryview, opcode: int, fin: bool, *, mask: bool = True) -> tuple:
    """One WebSocket frame as ``(header [+ masking key], payload [masked])``.

    Write the parts joined (:func:`encode_frame`, :func:`command_frames`): on a TLS transport
    every part of a ``writelines`` becomes its own TLS record.
    """
    first = (0x80 if fin else 0) | opcode
    if not mask:
        return _header(first, 0, len(payload)), payload
    key = _mask_key()
    return _header(first, 0x80, len(payload)) + key, _masked(payload, key)


def encode_frame(payload: bytes | bytearray | memoryview, opcode: int, fin: bool, *, mask: bool = True) -> bytes:
    """One WebSocket frame. Clients mask (``mask=True``); a server (the emulator) must not."""
    return b"".join(frame_parts(payload, opcode, fin, mask=mask))


def command_frames(text: str, body: bytes | bytearray | memoryview | None) -> bytes:
    """A command's JSON (text message) and its body (binary message, if any) as ONE buffer of
    masked frames: one write, one TLS record, one system call."""
    data = text.encode("utf-8")
    if body is None:
        key = _mask_key()
        return b"".join((_header(0x80 | _TEXT, 0x80, len(data)), key, _masked(data, key)))
    keys = _random_bits(64).to_bytes(8, "big")  # two masking keys from one draw
    key, key2 = keys[:4], keys[4:]
    return b"".join((_header(0x80 | _TEXT, 0x80, len(data)), key, _masked(data, key),
                     _header(0x80 | BINARY, 0x80, len(body)), key2, _masked(body, key2)))
