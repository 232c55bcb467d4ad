"""HTTP senders (relay-protocol.md §1.5, §1.6, §2.4, §2.5, §6.3).

A plain HTTP(S) request to ``/{entity}[/suffix][?query]`` becomes a ``request``
command for a listener: inline on the control channel (JSON + one binary body
message) when ``Content-Length`` is known and headers + body fit the inline
threshold (64 KiB), otherwise the address-only form, after which the listener
opens the rendezvous (``sb-hc-action=request``) and gets the full request there,
its body streamed from the sender as it arrives (one fragmented binary message).
The ``response`` is accepted on the control channel or on that rendezvous; the
sender gets its status, ``statusDescription`` as the reason phrase, the
listener's headers and ``Via: 1.1 {host}``. No answer within the response
timeout gives 504; no listener gives 502 (configurable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

import aiohttp
import aiohttp.http_exceptions
from aiohttp import WSMsgType, web

from relay import protocol as p
from relay._frames import BINARY, CONTINUATION, encode_frame

from .auth import SEND, AuthError
from .ids import tracking_id
from .listeners import Listener, NoListener

if TYPE_CHECKING:
    from .server import RelayServer

_DROP_REQUEST = p.HOP_BY_HOP_HEADERS | {p.HEADER_TOKEN.lower()}
# aiohttp computes framing itself; these must not be copied from the listener's answer.
_DROP_RESPONSE = p.HOP_BY_HOP_HEADERS | {"content-length"}
MSG_TOO_LARGE = "The request body is larger than the emulator's maxMessageBytes ({} bytes)."
MSG_INCOMPLETE_BODY = "The request body ended before its declared length."
MSG_SENDER_GONE = b"The sender disconnected before sending the whole body."
_STREAM_CHUNK = 64 * 1024

log = logging.getLogger("emulator.http")


@dataclass(eq=False, slots=True)
class PendingRequest:
    """An HTTP request handed to a listener and waiting for its response."""

    id: str
    secret: str
    entity: str
    listener: Listener
    command: p.RequestCommand  # the full request (for the rendezvous form)
    body: bytes
    inline: bool
    source: aiohttp.StreamReader | None = None  # rendezvous form: the sender's body, streamed as it arrives
    pump: asyncio.Task | None = None  # the task streaming ``source`` to the listener's rendezvous
    pump_socket: web.WebSocketResponse | None = None
    delivered: bool = False  # full request already sent (inline, or over a rendezvous)
    rendezvous_open: bool = False  # the listener holds a rendezvous for it (the response may come there)
    rendezvous_count: int = 0  # rendezvous sockets open for it right now
    raw_query: str = ""  # the query of its rendezvous address, to compare byte for byte
    conn: SenderConnection | None = None  # the sender's TCP connection
    delivered_on: web.WebSocketResponse | None = None  # the rendezvous the full request went over (None: control)
    response: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def resolve(self, command: p.ResponseCommand, body: bytes | None) -> None:
        if not self.response.done():
            self.response.set_result((command, body))

    def fail(self, message: str, status: int = 502) -> None:
        if not self.response.done():
            self.response.set_result((status, message))

    def drop(self) -> None:
        """The rendezvous it depends on closed: the sender's connection is dropped, no response."""
        if not self.response.done():
            self.response.set_result((DROP, ""))


DROP = 0
"""Outcome status meaning "drop the sender's TCP connection" (rendezvous gone mid-request)."""


@dataclass(eq=False, slots=True)
class SenderConnection:
    """One HTTP sender TCP connection and the rendezvous its requests are pinned to (§6.3 step 6).

    Strict profile (``rendezvousPerSenderConnection``): once a listener opens a request rendezvous
    for a request of this connection, every later request of the connection goes over that
    rendezvous; the rendezvous lives as long as the connection, and when the listener closes it the
    service drops the connection (after the response being written, at once otherwise).
    """

    transport: asyncio.Transport
    entity: str
    rendezvous: web.WebSocketResponse | None = None
    listener: Listener | None = None
    current: PendingRequest | None = None
    dropped_by_listener: bool = False
    watcher: asyncio.Task | None = None

    def usable(self) -> bool:
        return self.rendezvous is not None and not self.rendezvous.closed and self.listener is not None and not self.listener.closed

def _reason(text: str | None) -> str | None:
    if not text:
        return None
    # A reason phrase is one line of latin-1 text.
    return text.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace").decode("latin-1")


class HttpMode:
    """Serves HTTP senders for a :class:`~emulator.server.RelayServer`."""

    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self.pending: dict[str, PendingRequest] = {}
        self.connections: dict[asyncio.Transport, SenderConnection] = {}

    def _rendezvous_request(self, pending: PendingRequest) -> str:
        """The full request as sent over a rendezvous (no ``address`` in the strict profile)."""
        command = pending.command
        if not self.server.config.rendezvous_request_address:
            command = p.RequestCommand(
                address=None, id=command.id, request_target=command.request_target, method=command.method,  # type: ignore[arg-type]
                request_headers=command.request_headers, remote_endpoint=command.remote_endpoint, body=command.body,
            )
        return p.encode_command(command)

    async def _deliver(self, ws: web.WebSocketResponse, pending: PendingRequest) -> None:
        """Send the full request (and its body, streamed) over a rendezvous."""
        pending.delivered = True
        pending.delivered_on = ws
        pending.rendezvous_open = True
        await ws.send_str(self._rendezvous_request(pending))
        if pending.command.body:
            if pending.source is not None:
                pending.pump_socket = ws
                pending.pump = asyncio.get_running_loop().create_task(self._stream_body(ws, pending))
            else:
                await ws.send_bytes(pending.body)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        srv = self.server
        cfg = srv.config
        raw_path, _, raw_query = request.raw_path.partition("?")
        match = p.split_entity_path(request.path, cfg.hybrid_connections)
        host = request.host
        if match is None:
            return srv.error(404, p.MSG_ENDPOINT_NOT_FOUND, host, request.path.strip("/"))
        entity, _suffix = match
        hc = cfg.hybrid_connections[entity]

        # Token rules (§1.6): sb-hc-token and ServiceBusAuthorization are always consumed;
        # Authorization only when auth is on and neither of those is present.
        params = p.query_params(raw_query) if raw_query else {}
        token = request.headers.get(p.HEADER_TOKEN) or params.get(p.QUERY_TOKEN)
        consume_authorization = False
        if hc.requires_client_authorization:
            if token is None and "Authorization" in request.headers:
                token = request.headers["Authorization"]
                consume_authorization = True
            try:
                srv.authorizer.authorize(token, entity, SEND, host=host)
            except AuthError as exc:
                return srv.error(exc.status, exc.message, host, entity)

        conn = self.connections.get(request.transport) if request.transport is not None else None
        pinned = conn is not None and conn.entity == entity and conn.usable()
        if pinned:
            assert conn is not None and conn.listener is not None
            listener = conn.listener
        else:
            try:
                listener = srv.pick_listener(request, entity)
            except NoListener as exc:
                status = cfg.no_listener_http_status if exc.message == p.MSG_NO_LISTENERS else 404
                return srv.error(status, exc.message, host, entity)

        pairs = []
        header_bytes = 0
        for name_b, value_b in request.raw_headers:
            name = name_b.decode("latin-1")
            lname = name.lower()
            if lname in _DROP_REQUEST or (consume_authorization and lname == "authorization"):
                continue
            value = value_b.decode("latin-1")
            header_bytes += len(name) + len(value) + 4
            pairs.append((name, value))
        if cfg.azure_request_headers:
            # As the service forwards them: Host names the namespace without a port, and the
            # service's own Via hop is added (after any Via the sender sent).
            hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            via = f"1.1 {hostname}"
            pairs = [(n, hostname if n.lower() == "host" else v) for n, v in pairs]
            vias = [v for n, v in pairs if n.lower() == "via"]
            pairs = [(n, v) for n, v in pairs if n.lower() != "via"]
            pairs.append(("Via", ", ".join([*vias, via])))
        headers = p.fold_headers(pairs)
        filtered = p.filter_sb_hc_query(raw_query)
        target = f"{raw_path}?{filtered}" if filtered else raw_path

        length = request.content_length
        has_body = request.body_exists
        inline = not has_body or (length is not None and header_bytes + length <= cfg.inline_threshold_bytes)
        if pinned:
            inline = False  # goes over the rendezvous, body streamed
        if not inline and length is not None and length > cfg.max_message_bytes:
            return srv.error(413, MSG_TOO_LARGE.format(cfg.max_message_bytes), host, entity)
        body = b""
        if inline and has_body:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return srv.error(413, MSG_TOO_LARGE.format(cfg.max_message_bytes), host, entity)
            except (ConnectionError, aiohttp.ClientPayloadError, aiohttp.http_exceptions.HttpProcessingError) as exc:
                # The sender went away (or broke the framing) mid-body: nothing reaches the listener.
                log.info("HTTP sender on %s disconnected before sending the whole body (%s)", entity, type(exc).__name__)
                return srv.error(400, MSG_INCOMPLETE_BODY, host, entity)
        # Rendezvous form: the body is not read here; it streams to the listener's rendezvous as it arrives.

        request_id = tracking_id()
        address, issued_query, secret = srv.rendezvous_address(
            listener, f"{p.HC_PREFIX}{quote(entity, safe='/')}", f"{p.QUERY_ACTION}={p.ACTION_REQUEST}&{p.QUERY_ID}={request_id}")
        peer = request.transport.get_extra_info("peername") if request.transport else None
        command = p.RequestCommand(
            address=address,
            id=request_id,
            request_target=target,
            method=request.method,
            request_headers=headers,
            remote_endpoint=p.RemoteEndpoint(peer[0], peer[1]) if peer else None,
            body=bool(body) if inline else (has_body and (length is None or length > 0)),
        )
        pending = PendingRequest(request_id, secret, entity, listener, command, body, inline, delivered=inline,
                                 source=None if inline else request.content, raw_query=issued_query)
        if cfg.rendezvous_per_sender_connection and request.transport is not None:
            if conn is None:
                conn = self.connections[request.transport] = SenderConnection(request.transport, entity)
            conn.current = pending
            pending.conn = conn
        self.pending[request_id] = pending
        try:
            try:
                # One deadline (one timer handle) for the write and the response: the write is
                # inside it too, since a listener that stops reading its control channel backs
                # the write up (flow control), and its senders must still get 504. On expiry the
                # awaited response future is cancelled, as wait_for did.
                async with asyncio.timeout(cfg.response_timeout_seconds):
                    if pinned:
                        assert conn is not None and conn.rendezvous is not None
                        await self._deliver(conn.rendezvous, pending)
                    elif inline:
                        await listener.send(p.encode_command(command), body if command.body else None)
                    else:
                        await listener.send(p.encode_command(p.RequestCommand(address=address, id=request_id)))
                    outcome = await pending.response
            except (ConnectionError, RuntimeError):
                if pinned:
                    outcome = (DROP, "")
                else:
                    return srv.error(cfg.no_listener_http_status, p.MSG_NO_LISTENERS, host, entity)
            except asyncio.TimeoutError:
                log.info("request %s on %s: listener %s did not respond within %s s",
                         request_id, entity, listener.id, cfg.response_timeout_seconds)
                return srv.error(504, p.MSG_RESPONSE_TIMEOUT, host, entity)
        finally:
            self.pending.pop(request_id, None)
            await self._stop_pump(pending)
            if conn is not None:
                if conn.current is pending:
                    conn.current = None
                if conn.rendezvous is None and self.connections.get(conn.transport) is conn:
                    del self.connections[conn.transport]
        if isinstance(outcome, tuple) and outcome[0] == DROP:
            # The listener closed the rendezvous this connection is pinned to: the service drops the
            # sender's connection, even with this request in flight (§2.5).
            log.info("request %s on %s: the listener closed its rendezvous, dropping the sender's connection", request_id, entity)
            if request.transport is not None:
                request.transport.close()
            # Nothing reaches the sender: aiohttp's write of this response to the closed
            # transport fails quietly (a raised exception would be logged as a handler error).
            return web.Response(status=502)
        if isinstance(outcome, tuple) and isinstance(outcome[0], int):
            return srv.error(outcome[0], outcome[1], host, entity)
        response, response_body = outcome
        out = self._response(request, response, response_body, host)
        if conn is not None and conn.dropped_by_listener:
            out.force_close()  # its rendezvous is gone: close after this response
        return out

    def _response(self, request: web.Request, cmd: p.ResponseCommand, body: bytes | None, host: str) -> web.Response:
        out = web.Response(status=cmd.status_code, reason=_reason(cmd.status_description))
        via = None
        for name, value in cmd.response_headers.items():
            lname = name.lower()
            if lname in _DROP_RESPONSE:
                continue
            if lname == "via":
                via = value
                continue
            out.headers.add(name, value)
        out.headers["Via"] = f"{via}, 1.1 {host}" if via else f"1.1 {host}"
        if body and request.method != "HEAD" and cmd.status_code not in (204, 304) and cmd.status_code >= 200:
            out.body = body
        return out

    # -- listener side ----------------------------------------------------------------------

    def listener_gone(self, listener: Listener) -> None:
        """A control channel closed: requests that can only be answered through it fail now (502)."""
        for pending in list(self.pending.values()):
            if pending.listener is listener and not pending.rendezvous_open:
                pending.fail("The listener disconnected before responding.")

    def on_response(self, command: p.ResponseCommand, body: bytes | None,
                    source: web.WebSocketResponse | None) -> PendingRequest | None:
        """A ``response`` arrived on the control channel (``source`` None) or a rendezvous: complete
        the matching request. Strict profile (``strictResponseRouting``): a request delivered over a
        rendezvous is answered on that rendezvous only; an answer elsewhere is ignored."""
        pending = self.pending.get(command.request_id)
        if pending is None:
            return None
        if self.server.config.strict_response_routing and pending.delivered_on is not None and source is not pending.delivered_on:
            log.info("request %s: response on another socket than the rendezvous it was delivered on, ignored", pending.id)
            return None
        pending.resolve(command, body if command.body else None)
        return pending

    def on_response_refused(self, command: p.ResponseCommand, message: str) -> None:
        pending = self.pending.get(command.request_id)
        if pending is not None:
            pending.fail(message)

    async def rendezvous(self, request: web.Request, params: dict[str, str], entity: str) -> web.StreamResponse:
        """The listener opened ``sb-hc-action=request``: deliver the request if needed, read responses.

        Strict profile: the rendezvous then belongs to the sender's TCP connection (pinned), carries
        its later requests, and stays open until the listener or the sender closes; lenient: one
        exchange, then the emulator closes it.
        """
        srv = self.server
        cfg = srv.config
        pending = self.pending.get(params.get(p.QUERY_ID, ""))
        if pending is None or not secrets.compare_digest(pending.secret, params.get("sb-hc-secret", "")):
            return srv.error(403, "The rendezvous address is not valid or has expired.", request.host, entity)
        refusal = srv.rendezvous_refusal(request, pending.raw_query, entity)
        if refusal is not None:
            return refusal
        ws = srv.new_websocket()
        await ws.prepare(request)
        conn = pending.conn
        pinned = False
        if cfg.rendezvous_per_sender_connection and conn is not None and conn.rendezvous is None and not conn.transport.is_closing():
            conn.rendezvous, conn.listener, pinned = ws, pending.listener, True
            conn.watcher = asyncio.get_running_loop().create_task(self._watch_sender(conn, ws))
        pending.rendezvous_open = True
        pending.rendezvous_count += 1
        first = pending
        if not pending.delivered:
            await self._deliver(ws, pending)
        reader = p.CommandReader()
        try:
            async for msg in ws:
                if msg.type is WSMsgType.BINARY and not reader.awaiting_body:
                    continue  # hyco-https sends an empty body even after body:false
                if msg.type is not WSMsgType.TEXT and msg.type is not WSMsgType.BINARY:
                    break
                try:
                    item = reader.feed(msg.data)
                except p.ProtocolError as exc:
                    log.warning("request %s: malformed message on its rendezvous, closing with 1008: %s", pending.id, exc)
                    for other in self._on_socket(ws, first):
                        other.fail("The listener sent a malformed response.")
                    await ws.close(code=1008, message=f"Malformed command: {exc}".encode()[:120])
                    break
                if item is None:
                    continue
                command, body = item
                if isinstance(command, p.ResponseCommand):
                    answered = self.on_response(command, body, ws)
                    if answered is first and not pinned:
                        break  # lenient: one exchange per rendezvous; hyco-https leaves the socket open
                    if answered is None:
                        log.info("request rendezvous: response for unknown or finished request %s ignored", command.request_id)
        finally:
            if pending.pump_socket is ws:
                await self._stop_pump(pending)
            pending.rendezvous_count -= 1
            if pending.rendezvous_count == 0:  # another rendezvous for it may still carry the response
                pending.fail("The listener closed the rendezvous connection before responding.")
            if pinned and conn is not None:
                self._rendezvous_closed(conn, ws)
            if not ws.closed:
                await ws.close(code=1000, message=b"Normal Closure")
        return ws

    def _on_socket(self, ws: web.WebSocketResponse, first: PendingRequest) -> list[PendingRequest]:
        found = [x for x in self.pending.values() if x.delivered_on is ws]
        return found if first in found else [first, *found]

    def _rendezvous_closed(self, conn: SenderConnection, ws: web.WebSocketResponse) -> None:
        """The pinned rendezvous closed: drop the sender's connection (after a response being written)."""
        if conn.rendezvous is not ws:
            return
        conn.rendezvous = None
        conn.dropped_by_listener = True
        if conn.watcher is not None:
            conn.watcher.cancel()
        current = conn.current
        if current is not None and not current.response.done():
            current.drop()  # its handler closes the connection
        elif current is None:
            if self.connections.get(conn.transport) is conn:
                del self.connections[conn.transport]
            conn.transport.close()
        # else: a response is being written; the handler closes the connection after it.

    async def _watch_sender(self, conn: SenderConnection, ws: web.WebSocketResponse) -> None:
        """Close a pinned rendezvous once the sender's connection is gone (its lifetime ends there)."""
        while not conn.transport.is_closing() and not ws.closed:
            await asyncio.sleep(0.2)
        if conn.rendezvous is ws:
            conn.rendezvous = None
            if self.connections.get(conn.transport) is conn:
                del self.connections[conn.transport]
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close(code=1001, message=b"The sender closed the connection.")

    # -- streamed request bodies ---------------------------------------------------------------

    async def _stream_body(self, ws: web.WebSocketResponse, pending: PendingRequest) -> None:
        """Forward the sender's body to the rendezvous as ONE binary message, a frame per chunk.

        aiohttp's server socket has no fragment API, so the frames (unmasked, server to client)
        go straight to its transport; nothing else but control frames (pongs) is written to the
        socket meanwhile, since the rendezvous carries only this exchange. The last frame is an
        empty one with FIN. If the sender goes away mid-body, the rendezvous is closed with 1011
        so the listener sees the message cut off.
        """
        assert pending.source is not None
        writer = ws._writer  # noqa: SLF001
        assert writer is not None
        transport, protocol = writer.transport, writer.protocol
        limit = self.server.config.max_message_bytes
        opcode, total = BINARY, 0
        try:
            async for chunk in pending.source.iter_chunked(_STREAM_CHUNK):
                if not chunk:
                    continue
                total += len(chunk)
                if total > limit:
                    log.info("request %s: the streamed body exceeds maxMessageBytes, closing its rendezvous with 1009", pending.id)
                    pending.fail(MSG_TOO_LARGE.format(limit), 413)
                    pending.pump_socket = None  # closing it here
                    await ws.close(code=1009, message=b"The request body is too large.")
                    return
                if transport is None or transport.is_closing():
                    return  # the listener went away; the rendezvous handler reports it
                transport.write(encode_frame(chunk, opcode, False, mask=False))
                opcode = CONTINUATION
                if protocol.writing_paused:
                    await protocol._drain_helper()  # noqa: SLF001 - flow control, as aiohttp's own writer
            if transport is not None and not transport.is_closing():
                transport.write(encode_frame(b"", opcode, True, mask=False))
            pending.pump_socket = None  # the message is complete
        except (ConnectionError, aiohttp.ClientPayloadError, aiohttp.http_exceptions.HttpProcessingError) as exc:
            log.info("HTTP sender on %s disconnected before sending the whole body (%s); closing the rendezvous of %s with 1011",
                     pending.entity, type(exc).__name__, pending.id)
            pending.fail(MSG_INCOMPLETE_BODY, 400)
            pending.pump_socket = None  # closing it here
            with contextlib.suppress(Exception):
                await ws.close(code=1011, message=MSG_SENDER_GONE)

    async def _stop_pump(self, pending: PendingRequest) -> None:
        """The exchange is over: stop streaming the body; a message left unfinished closes the rendezvous."""
        pump = pending.pump
        if pump is None:
            return
        if not pump.done():
            if pending.pump_socket is None:  # finished, or closing the rendezvous itself
                await asyncio.wait((pump,), timeout=15.0)
            else:
                pump.cancel()
                await asyncio.wait((pump,))
        ws, pending.pump_socket = pending.pump_socket, None
        if ws is not None and not ws.closed:
            answered = pending.response.done() and not isinstance(pending.response.result()[0], int)
            with contextlib.suppress(Exception):
                await ws.close(code=1000 if answered else 1011,
                               message=b"Normal Closure" if answered else b"The request was abandoned.")
