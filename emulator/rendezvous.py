"""Joining a WebSocket sender to the listener's rendezvous socket, and relaying between them.

The relay works at the message level: each received message is written to the
other leg as one frame of the same type (text stays text, binary stays binary,
boundaries kept); text is never decoded (``decode_text=False``). Pings are
answered per hop by aiohttp. A close frame is forwarded with its code and reason
while the other direction keeps flowing (half-close); the transports are torn
down once both directions have closed, or at once if either TCP connection dies.

This leans on two aiohttp internals: ``ws._writer`` (to send a close frame
without aiohttp's ``close()``, which would swallow the data still coming the
other way) and ``_set_closed``/``_close_transport`` (to finish without a second
close frame). Both are stable across aiohttp 3.9-3.14.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from .listeners import _drained, _header

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE
_ERROR = WSMsgType.ERROR

log = logging.getLogger("emulator.relay")


@dataclass(eq=False, slots=True)
class PendingAccept:
    """A WebSocket sender waiting for the listener to open (or reject) its rendezvous."""

    id: str
    entity: str
    raw_query: str  # the query of the address handed out, to compare byte for byte
    # Resolved by the rendezvous handler with ("accept", listener_ws, protocol) or ("reject", code, text).
    outcome: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    # Resolved by the sender handler when relaying is over, so the rendezvous handler can return.
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


async def _send_close(ws: web.WebSocketResponse, code: int | None, reason: bytes) -> None:
    writer = ws._writer  # noqa: SLF001
    if writer is None:
        return
    if code is None or code in (0, 1005, 1006, 1015):
        payload = b""  # no status code on the wire (1005/1006/1015 are never sent)
        await writer.send_frame(payload, _CLOSE)
        writer._closing = True  # noqa: SLF001 - mirror WebSocketWriter.close()
    else:
        await writer.close(code, reason)


CLEAN_CODES = frozenset((1000, 1001, None, 0, 1005))
SERVICE_CLOSE = {
    # (side that closed, clean?) -> the close frame the service sends the other side (relay-protocol.md §2.2).
    ("sender", True): (1001, b"The sender closed the connection."),
    ("sender", False): (1011, b"The sender closed the connection with an error."),
    ("listener", True): (1000, b"The listener closed the connection."),
    ("listener", False): (1011, b"The listener closed the connection with an error."),
}


def service_close(side: str, code: int | None) -> tuple[int, bytes]:
    """The service's own close frame for the other leg when ``side`` closed with ``code``."""
    return SERVICE_CLOSE[(side, code in CLEAN_CODES)]


async def _pump(src: web.WebSocketResponse, dst: web.WebSocketResponse, label: str, side: str,
                service_codes: bool = False) -> bool:
    """Copy messages src -> dst until src closes. True for a clean close (forwarded), False if src died.

    ``service_codes`` (strict profile): the other side gets the service's own close frame
    (:func:`service_close`) instead of the peer's code and reason.
    """
    receive = src.receive
    writer = dst._writer  # noqa: SLF001
    assert writer is not None
    transport, protocol = writer.transport, writer.protocol
    try:
        while True:
            msg = await receive()
            kind = msg.type
            if kind is _BINARY or kind is _TEXT:
                # The frame goes straight to the transport, header and payload in one write (one
                # TLS record): what aiohttp's send_frame does for an uncompressed server frame,
                # without its coroutine and bookkeeping per message. Flow control as aiohttp's.
                if writer._closing or transport.is_closing():  # noqa: SLF001
                    raise ConnectionResetError("Cannot write to closing transport")
                data = msg.data
                transport.write(_header(kind, len(data)) + data)
                if protocol._paused:  # noqa: SLF001
                    await _drained(protocol)
            elif kind is _CLOSE:
                if service_codes:
                    code, reason = service_close(side, msg.data)
                else:
                    code = msg.data
                    reason = msg.extra.encode("utf-8") if isinstance(msg.extra, str) else (msg.extra or b"")
                await _send_close(dst, code, reason)
                return True
            elif kind is _ERROR:  # oversized or broken frame: aiohttp already closed src (1009 / 1002)
                log.warning("%s: the %s sent an invalid message, closed with %s (%s)",
                            label, side, getattr(msg.data, "code", src.close_code), msg.data)
                return False
            else:  # CLOSED / CLOSING: the source connection is gone
                log.info("%s: the %s went away without a close frame", label, side)
                return False
    except (ConnectionError, RuntimeError, asyncio.TimeoutError) as exc:
        log.info("%s: relaying from the %s failed, a connection went away (%s)", label, side, type(exc).__name__)
        return False


def _finish(ws: web.WebSocketResponse) -> None:
    ws._set_closed()  # noqa: SLF001 - the close handshake was already relayed
    ws._close_transport()  # noqa: SLF001


async def relay(a: web.WebSocketResponse, b: web.WebSocketResponse, label: str = "relay", *, service_codes: bool = False) -> None:
    """Relay both directions (``a`` the sender, ``b`` the listener's rendezvous) until both have
    closed, or one connection dies (then the other gets 1001)."""
    loop = asyncio.get_running_loop()
    ab = loop.create_task(_pump(a, b, label, "sender", service_codes))
    ba = loop.create_task(_pump(b, a, label, "listener", service_codes))
    try:
        done, _ = await asyncio.wait((ab, ba), return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        other = ba if first is ab else ab
        if first.result():
            # Half-close: keep relaying the other direction until it closes too.
            await other
        else:
            other.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await other
            # The peer of the dead side learns with 1001 (going away), as the service does.
            alive = b if first is ab else a
            with contextlib.suppress(Exception):
                if not alive._writer._closing:  # noqa: SLF001
                    await _send_close(alive, 1001, b"The other side of the connection went away.")
    finally:
        for task in (ab, ba):
            if not task.done():
                task.cancel()
        _finish(a)
        _finish(b)
