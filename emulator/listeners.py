"""Connected listeners (control channels) and how a sender is routed to one of them.

Each :class:`Listener` wraps one control-channel WebSocket. All writes to it go
through :meth:`Listener.send`, which holds the channel's lock so a body message
always directly follows its JSON command (relay-protocol.md §2, §10.3) even when
several senders are routed to the same listener at once.
"""

from __future__ import annotations

import asyncio
import random
import struct
from dataclasses import dataclass, field

from aiohttp import web

from relay import protocol as p


_LEN1 = struct.Struct("!BB").pack
_LEN2 = struct.Struct("!BBH").pack
_LEN3 = struct.Struct("!BBQ").pack


def _header(opcode: int, length: int) -> bytes:
    """Server-to-client frame header (FIN set, unmasked) for a message of ``length`` bytes."""
    if length < 126:
        return _LEN1(0x80 | opcode, length)
    if length < 65536:
        return _LEN2(0x80 | opcode, 126, length)
    return _LEN3(0x80 | opcode, 127, length)


async def _drained(protocol) -> None:
    """Wait until the transport accepts writes again (aiohttp's ``_drain_helper``, cancel-safe).

    aiohttp's helper awaits one waiter future shared by every writer of the connection, so
    cancelling one waiting writer (a sender whose deadline passed) cancels that shared future
    and the next writer gets a ``CancelledError`` it never asked for. Here the waiter is
    shielded, and a stale (done) waiter is replaced, as ``_drain_helper`` does for ``None``.
    """
    if protocol.transport is None:
        raise ConnectionResetError("the control channel is closed")
    waiter = protocol._drain_waiter  # noqa: SLF001
    if waiter is None or waiter.done():
        waiter = asyncio.get_running_loop().create_future()
        # Nobody may be waiting any more when the connection drops: retrieve the exception.
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        protocol._drain_waiter = waiter  # noqa: SLF001
    await asyncio.shield(waiter)


@dataclass(eq=False, slots=True)
class Listener:
    """One control channel. ``host`` is the Host header it dialed, reused in rendezvous addresses."""

    id: str
    entity: str
    ws: web.WebSocketResponse
    host: str
    scheme: str
    expiry: float | None
    remote: tuple[str, int]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False

    async def send(self, text: str, body: bytes | None = None) -> None:
        """Write one command (and its body) atomically with respect to other writers.

        Both frames leave in one ``write`` of one buffer: one syscall, and over TLS one record
        instead of one per buffer (a ``writelines`` is encrypted item by item); the channel
        lock keeps other commands out between them.
        """
        writer = self.ws._writer  # noqa: SLF001
        if writer is None or writer._closing:  # noqa: SLF001
            raise ConnectionResetError("the control channel is closed")
        payload = text.encode("utf-8")
        async with self.lock:
            transport = writer.transport
            if transport.is_closing():
                raise ConnectionResetError("the control channel is closed")
            if body is None:
                transport.write(_header(0x1, len(payload)) + payload)
            else:
                transport.write(b"".join((_header(0x1, len(payload)), payload, _header(0x2, len(body)), body)))
            protocol = writer.protocol
            if protocol._paused:  # noqa: SLF001 - honour flow control like aiohttp's writer does
                await _drained(protocol)

    async def close(self, code: int, reason: str) -> None:
        """Close the control channel with ``code`` (1008 for token problems)."""
        if self.closed:
            return
        self.closed = True
        async with self.lock:
            try:
                await self.ws.close(code=code, message=reason.encode("utf-8")[:120])
            except Exception:  # the peer may already be gone
                pass


class NoListener(Exception):
    """No listener can take the sender; ``message`` is the 404/502 text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ListenerRegistry:
    """Listeners per hybrid connection, with the 25-listener quota and random selection."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_entity: dict[str, list[Listener]] = {}

    def count(self, entity: str) -> int:
        return len(self._by_entity.get(entity, ()))

    def has_room(self, entity: str) -> bool:
        return self.count(entity) < self.limit

    def add(self, listener: Listener) -> None:
        self._by_entity.setdefault(listener.entity, []).append(listener)

    def remove(self, listener: Listener) -> None:
        group = self._by_entity.get(listener.entity)
        if group and listener in group:
            group.remove(listener)

    def all(self) -> list[Listener]:
        return [lst for group in self._by_entity.values() for lst in group]

    def pick(self, entity: str, allowed_header: str | None, disallowed_header: str | None) -> Listener:
        """A random eligible listener, honouring AllowedListeners/DisallowedListeners (§6.4)."""
        group = [lst for lst in self._by_entity.get(entity, ()) if not lst.closed]
        if not group:
            raise NoListener(p.MSG_NO_LISTENERS)
        allowed = p.listener_ids(allowed_header)
        disallowed = p.listener_ids(disallowed_header)
        if allowed or disallowed:
            group = [
                lst for lst in group
                if (not allowed or lst.id.lower() in allowed) and lst.id.lower() not in disallowed
            ]
            if not group:
                raise NoListener(p.MSG_LISTENER_FILTER)
        return group[0] if len(group) == 1 else random.choice(group)
