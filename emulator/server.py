"""The Relay port: WebSocket ``/$hc/...`` and plain HTTP(S) ``/{entity}/...`` on one aiohttp server.

Routing (relay-protocol.md §6):

* ``/$hc/{entity}?sb-hc-action=listen``  -> listener control channel (:meth:`RelayServer._listen`)
* ``/$hc/{entity}?sb-hc-action=connect`` -> WebSocket sender, held until a listener accepts
* ``/$hc/{entity}?sb-hc-action=accept``  -> the listener's rendezvous for a sender (or its reject)
* ``/$hc/{entity}?sb-hc-action=request`` -> the listener's rendezvous for an HTTP request
* anything else                           -> HTTP sender (:mod:`emulator.http_mode`), or the
  runtime-information GET when ``X-PROCESS-AT: ServiceBus`` is present.

Handshake failures carry the Azure-style text (``TrackingId``, ``SystemTracker``,
``Timestamp``) in the reason phrase, as .NET reads it from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from datetime import datetime, timezone
from html import escape
from urllib.parse import quote

from aiohttp import WSMsgType, web

from relay import protocol as p

from .auth import LISTEN, SEND, AuthError, Authorizer
from .config import EmulatorConfig
from .http_mode import HttpMode
from .ids import tracking_id
from .listeners import Listener, ListenerRegistry, NoListener
from .rendezvous import PendingAccept, relay

log = logging.getLogger("emulator.relay")

MSG_RENDEZVOUS_INVALID = "The rendezvous address is not valid or has expired."
MSG_BAD_ACTION = "The sb-hc-action query parameter is missing or not valid."
MSG_NOT_UPGRADE = "Requests under /$hc/ must be WebSocket upgrades."
ACCEPT_TIMEOUT_STATUS = 504


class RelayServer:
    """State and handlers of one emulated namespace."""

    def __init__(self, config: EmulatorConfig, authorizer: Authorizer) -> None:
        self.config = config
        self.authorizer = authorizer
        self.listeners = ListenerRegistry(config.listener_limit)
        self.accepts: dict[str, PendingAccept] = {}
        self.relays: set[tuple[web.WebSocketResponse, web.WebSocketResponse]] = set()
        self.http = HttpMode(self)
        self.log = log
        self.started = datetime.now(timezone.utc)
        # "host:port" of the rendezvous (gateway) site when the strict profile serves one (__main__ sets it).
        self.rendezvous_authority: str | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_message_bytes)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        # Going away (1001) on every socket, so clients reconnect instead of hanging.
        for listener in self.listeners.all():
            await listener.close(1001, "The emulator is shutting down.")
        for pair in list(self.relays):
            for ws in pair:
                with contextlib.suppress(Exception):
                    await ws.close(code=1001, message=b"The emulator is shutting down.")

    # -- helpers ----------------------------------------------------------------------------

    def new_websocket(self, *, protocols: tuple[str, ...] = (), relay_leg: bool = False,
                      idle_timeout: float | None = None, autoping: bool = True) -> web.WebSocketResponse:
        """A server-side socket: no compression, large messages, pings answered, no per-message timers.

        ``relay_leg`` sockets (a sender and its rendezvous) forward close frames themselves
        (half-close) and never decode text; command sockets decode text and auto-close.
        """
        return web.WebSocketResponse(
            protocols=protocols,
            compress=False,
            max_msg_size=self.config.max_message_bytes,
            autoclose=not relay_leg,
            autoping=autoping,
            heartbeat=None,
            decode_text=not relay_leg,
            receive_timeout=idle_timeout,
        )

    def rendezvous_address(self, listener: Listener, raw_path: str, query: str) -> tuple[str, str, str]:
        """A rendezvous address for ``listener``: ``(address, raw query, secret)``.

        ``query`` holds everything but the secret. Strict profile: the address names the gateway
        host (``rendezvousHost``) instead of the namespace host, and the secret carries ``%2f`` and
        ``%2F``, so a client that re-quotes the URL (``%2f`` -> ``%2F``) or rebuilds it from parts
        no longer matches (``rendezvousExactUrl``: the raw query must come back byte for byte).
        """
        token = secrets.token_urlsafe(24)  # one urandom call: three 64-bit parts of one 192-bit secret
        a, b, c = token[:11], token[11:22], token[22:]
        if self.config.rendezvous_exact_url:
            raw_secret, secret = f"{a}%2f{b}%2F{c}", f"{a}/{b}/{c}"
        else:
            raw_secret = secret = f"{a}{b}{c}"
        raw_query = f"{query}&sb-hc-secret={raw_secret}"
        authority = self.rendezvous_authority or listener.host
        return f"{listener.scheme}://{authority}{raw_path}?{raw_query}", raw_query, secret

    def rendezvous_refusal(self, request: web.Request, raw_query: str, entity: str) -> web.Response | None:
        """403 unless a rendezvous handshake came to the gateway host with the address byte for byte
        (a reject may append its ``&sb-hc-statusCode=...`` parameters)."""
        if self.rendezvous_authority is not None:
            sock = request.transport.get_extra_info("sockname") if request.transport else None
            gateway = self.rendezvous_authority.rsplit(":", 1)[0].strip("[]")
            if not sock or sock[0] != gateway:
                return self.error(403, MSG_RENDEZVOUS_INVALID + " It must be opened on the host it names.", request.host, entity)
        actual = request.raw_path.partition("?")[2]
        if self.config.rendezvous_exact_url and actual != raw_query and not actual.startswith(raw_query + "&"):
            return self.error(403, MSG_RENDEZVOUS_INVALID + " The address must be used exactly as given.", request.host, entity)
        return None

    def pick_listener(self, request: web.Request, entity: str):
        """A random listener for a sender (WebSocket or HTTP), honouring Allowed/DisallowedListeners.

        Raises :class:`NoListener` when none is connected or none passes the filter.
        """
        return self.listeners.pick(
            entity,
            request.headers.get(p.HEADER_ALLOWED_LISTENERS),
            request.headers.get(p.HEADER_DISALLOWED_LISTENERS),
        )

    def error(self, status: int, message: str, host: str, entity: str) -> web.Response:
        """An HTTP error in the service's style; the text goes in the reason phrase and the XML body."""
        reason = p.service_reason(message, f"sb://{host}/{entity}")
        # One line per refusal (status and the service text, never the token or the query string).
        log.info("sb://%s/%s -> %d %s", host, entity, status, message)
        body = f"<Error><Code>{status}</Code><Detail>{escape(reason)}</Detail></Error>"
        return web.Response(status=status, reason=reason, text=body, content_type="application/xml")

    # -- routing ----------------------------------------------------------------------------

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if not path.startswith(p.HC_PREFIX):
            if request.headers.get("X-PROCESS-AT", "").lower() == "servicebus":
                return await self._management(request)
            return await self.http.handle(request)

        host = request.host
        match = p.split_entity_path(path[len(p.HC_PREFIX):], self.config.hybrid_connections)
        if match is None:
            return self.error(404, p.MSG_ENDPOINT_NOT_FOUND, host, path[len(p.HC_PREFIX):])
        entity, _ = match
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return self.error(400, MSG_NOT_UPGRADE, host, entity)
        _, _, raw_query = request.raw_path.partition("?")
        params = p.query_params(raw_query)
        action = params.get(p.QUERY_ACTION)
        if action == p.ACTION_LISTEN:
            return await self._listen(request, entity, params)
        if action == p.ACTION_CONNECT:
            return await self._connect(request, entity, params, raw_query)
        if action == p.ACTION_ACCEPT:
            return await self._accept(request, entity, params)
        if action == p.ACTION_REQUEST:
            return await self.http.rendezvous(request, params, entity)
        return self.error(400, MSG_BAD_ACTION, host, entity)

    # -- listener control channel (§6.1) -----------------------------------------------------

    async def _listen(self, request: web.Request, entity: str, params: dict[str, str]) -> web.StreamResponse:
        token = request.headers.get(p.HEADER_TOKEN) or params.get(p.QUERY_TOKEN)
        try:
            expiry = self.authorizer.authorize(token, entity, LISTEN, host=request.host)
        except AuthError as exc:
            return self.error(exc.status, exc.message, request.host, entity)
        if not self.listeners.has_room(entity):
            return self.error(403, p.MSG_TOO_MANY_LISTENERS, request.host, entity)

        # Strict profile: PINGs from the listener close the channel (controlPingPolicy), so they
        # are seen here rather than answered by aiohttp; pongs are keep-alive traffic.
        ws = self.new_websocket(idle_timeout=self.config.idle_timeout_seconds,
                                autoping=self.config.control_ping_policy == "answer")
        peer = request.transport.get_extra_info("peername") if request.transport else None
        listener = Listener(
            id=params.get(p.QUERY_ID) or tracking_id(),
            entity=entity,
            ws=ws,
            host=request.host,
            scheme="wss" if request.secure else "ws",
            expiry=expiry,
            remote=(peer[0], peer[1]) if peer else ("", 0),
            closed=True,  # reserved against the quota, not routable until the 101 is out
        )
        self.listeners.add(listener)
        watcher: asyncio.Task | None = None
        try:
            await ws.prepare(request)
            listener.closed = False
            log.info("listener %s online on %s (%d listeners)", listener.id, entity, self.listeners.count(entity))
            watcher = asyncio.get_running_loop().create_task(self._watch_expiry(listener))
            await self._control_loop(listener)
        finally:
            listener.closed = True
            self.listeners.remove(listener)
            self.http.listener_gone(listener)
            if watcher is not None:
                watcher.cancel()
            log.info("listener %s offline on %s", listener.id, entity)
        return ws

    async def _control_loop(self, listener: Listener) -> None:
        ws = listener.ws
        reader = p.CommandReader()
        while True:
            try:
                msg = await ws.receive()
            except asyncio.TimeoutError:
                await listener.close(1001, "The connection was idle for too long.")
                return
            kind = msg.type
            if kind is WSMsgType.PONG:
                continue  # unsolicited pongs: the official clients' keep-alive
            if kind is WSMsgType.PING:
                if self.config.control_ping_policy == "close":
                    log.info("listener %s sent a PING on its control channel, closing it (controlPingPolicy=close)", listener.id)
                    await listener.close(1008, "Ping frames are not accepted on the control channel; keep it alive with pongs.")
                    return
                await ws.pong(msg.data)
                continue
            if kind is WSMsgType.BINARY:
                if not reader.awaiting_body and not msg.data:
                    continue  # hyco-https sends an empty body message even after body:false
            elif kind is WSMsgType.ERROR:
                # aiohttp has already closed the socket with the matching code (1009 for size).
                code = getattr(msg.data, "code", ws.close_code)
                what = "message too big" if code == 1009 else "invalid frame"
                log.warning("listener %s: %s on the control channel, closed with %s (%s)",
                            listener.id, what, code, msg.data)
                return
            elif kind is not WSMsgType.TEXT:
                return  # CLOSE / CLOSED
            try:
                item = reader.feed(msg.data)
            except p.ProtocolError as exc:
                # The channel can no longer be trusted to pair commands with bodies: close it, so
                # the listener learns at once (it reconnects) instead of its senders timing out.
                log.warning("listener %s sent a malformed command, closing with 1008: %s", listener.id, exc)
                await listener.close(1008, f"Malformed command: {exc}")
                return
            if item is None:
                continue
            command, body = item
            if isinstance(command, p.ResponseCommand):
                limit = self.config.control_response_limit_bytes
                if limit is not None and body is not None and len(body) > limit:
                    # Bigger responses must use a rendezvous (protocol article); the channel is dropped.
                    log.info("listener %s: a %d-byte response body on the control channel, closing it with 1009",
                             listener.id, len(body))
                    self.http.on_response_refused(command, "The listener sent a response over 64 KiB on its control channel.")
                    await listener.close(1009, "Responses over 64 KiB must be sent over a rendezvous.")
                    return
                if self.http.on_response(command, body, None) is None:
                    log.info("listener %s: response for unknown or finished request %s ignored",
                             listener.id, command.request_id)
            elif isinstance(command, p.RenewTokenCommand):
                try:
                    listener.expiry = self.authorizer.authorize(command.token, listener.entity, LISTEN, host=listener.host)
                except AuthError as exc:
                    log.info("listener %s: renewToken refused (%s)", listener.id, exc.status)
                    await listener.close(1008, exc.message)
                    return
            elif isinstance(command, p.UnknownCommand):
                log.info("listener %s: unknown command '%s' ignored", listener.id, command.name[:64])
            else:  # accept/request only ever go from the service to the listener
                log.info("listener %s: unexpected '%s' command ignored", listener.id, type(command).__name__)

    async def _watch_expiry(self, listener: Listener) -> None:
        """Close the control channel with 1008 once its token is past expiry + grace (§3.4),
        or with 1011 ``NameRenewalFailed`` when the configured recycle time is up (Azure: ~24 h)."""
        grace = self.config.token_grace_seconds
        recycle = self.config.listener_recycle_seconds
        recycle_at = time.time() + recycle if recycle else None
        while not listener.closed:
            now = time.time()
            if recycle_at is not None and now >= recycle_at:
                log.info("listener %s: recycled", listener.id)
                await listener.close(1011, "InternalServerError: NameRenewalFailed")
                return
            if listener.expiry is not None and listener.expiry + grace <= now:
                log.info("listener %s: token expired", listener.id)
                await listener.close(1008, p.MSG_EXPIRED_TOKEN)
                return
            deadlines = [t for t in (recycle_at, None if listener.expiry is None else listener.expiry + grace) if t]
            if not deadlines:
                return
            await asyncio.sleep(min(deadlines) - now)

    # -- WebSocket sender (§6.2) ------------------------------------------------------------

    async def _connect(self, request: web.Request, entity: str, params: dict[str, str], raw_query: str) -> web.StreamResponse:
        host = request.host
        if self.config.hybrid_connections[entity].requires_client_authorization:
            token = request.headers.get(p.HEADER_TOKEN) or params.get(p.QUERY_TOKEN)
            try:
                self.authorizer.authorize(token, entity, SEND, host=host)
            except AuthError as exc:
                return self.error(exc.status, exc.message, host, entity)
        try:
            listener = self.pick_listener(request, entity)
        except NoListener as exc:
            return self.error(404, exc.message, host, entity)

        sender_id = params.get(p.QUERY_ID) or tracking_id()
        raw_path = request.raw_path.partition("?")[0]
        app_query = p.filter_sb_hc_query(raw_query)
        address, issued_query, secret = self.rendezvous_address(
            listener, raw_path,
            f"{app_query + '&' if app_query else ''}{p.QUERY_ACTION}={p.ACTION_ACCEPT}&{p.QUERY_ID}={quote(sender_id, safe='')}",
        )
        connect_headers = p.fold_headers(
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.raw_headers
            if k.lower() != b"servicebusauthorization"
        )
        peer = request.transport.get_extra_info("peername") if request.transport else None
        command = p.AcceptCommand(
            address=address,
            id=sender_id,
            connect_headers=connect_headers,
            remote_endpoint=p.RemoteEndpoint(peer[0], peer[1]) if peer else None,
        )
        pending = PendingAccept(sender_id, entity, issued_query)
        self.accepts[secret] = pending
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.accept_timeout_seconds
        try:
            try:
                # Bounded too: a listener that stops reading its control channel blocks the write.
                await asyncio.wait_for(listener.send(p.encode_command(command)), self.config.accept_timeout_seconds)
            except (ConnectionError, RuntimeError):
                return self.error(404, p.MSG_NO_LISTENERS, host, entity)
            except asyncio.TimeoutError:
                pass  # the accept never reached the listener: answered as a timeout below
            try:
                outcome = await asyncio.wait_for(asyncio.shield(pending.outcome), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                if not pending.outcome.done():
                    pending.outcome.set_result(("timeout",))
                    log.info("sender %s on %s: listener %s did not accept within %s s",
                             sender_id, entity, listener.id, self.config.accept_timeout_seconds)
                    return self.error(ACCEPT_TIMEOUT_STATUS, p.MSG_ACCEPT_TIMEOUT, host, entity)
                outcome = pending.outcome.result()  # accepted at the last moment
        finally:
            self.accepts.pop(secret, None)

        if outcome[0] == "reject":
            _, code, text = outcome
            reason = (text or "Rejected").replace("\r", " ").replace("\n", " ")
            reason = reason.encode("latin-1", "replace").decode("latin-1")
            return web.Response(status=code, reason=reason, text=reason)

        _, listener_ws, protocol = outcome
        sender_ws = self.new_websocket(protocols=(protocol,) if protocol else (), relay_leg=True)
        try:
            await sender_ws.prepare(request)
        except Exception:
            with contextlib.suppress(Exception):
                await listener_ws.close(code=1001, message=b"The sender went away.")
            pending.done.set_result(None)
            raise
        pair = (sender_ws, listener_ws)
        self.relays.add(pair)
        try:
            await relay(sender_ws, listener_ws, f"sender {sender_id} on {entity}", service_codes=self.config.service_close_codes)
        finally:
            self.relays.discard(pair)
            if not pending.done.done():
                pending.done.set_result(None)
        return sender_ws

    async def _accept(self, request: web.Request, entity: str, params: dict[str, str]) -> web.StreamResponse:
        """The listener's rendezvous for a waiting sender: accept (101) or reject (410)."""
        pending = self.accepts.get(params.get("sb-hc-secret", ""))
        if pending is None or pending.outcome.done():
            return self.error(403, MSG_RENDEZVOUS_INVALID, request.host, entity)
        refusal = self.rendezvous_refusal(request, pending.raw_query, entity)
        if refusal is not None:
            return refusal
        try:
            rejection = p.reject_params(params)
        except p.ProtocolError:
            return self.error(400, "The reject status code is not a number.", request.host, entity)
        if rejection is not None:
            code, text = rejection
            if not 100 <= code <= 999:
                return self.error(400, "The reject status code must be 100-999.", request.host, entity)
            pending.outcome.set_result(("reject", code, text))
            return web.Response(status=410, reason="Gone")

        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        protocol = offered.split(",", 1)[0].strip() if offered else ""
        ws = self.new_websocket(protocols=(protocol,) if protocol else (), relay_leg=True)
        await ws.prepare(request)
        if pending.outcome.done():  # the sender timed out while we were answering
            await ws.close(code=1001, message=b"The sender is gone.")
            return ws
        pending.outcome.set_result(("accept", ws, protocol))
        await pending.done
        return ws

    # -- runtime information (§1.5) ---------------------------------------------------------

    async def _management(self, request: web.Request) -> web.Response:
        """``GET /{hc}?api-version=2016-07`` with ``X-PROCESS-AT: ServiceBus`` (.NET GetRuntimeInformationAsync)."""
        host = request.host
        match = p.split_entity_path(request.path, self.config.hybrid_connections)
        if match is None or match[1]:
            body = (
                '<feed xmlns="http://www.w3.org/2005/Atom"><title type="text">Publicly Listed Services</title>'
                f"<id>uuid:{p.new_tracking_id()}</id><updated>{_now_iso()}</updated></feed>"
            )
            return web.Response(body=body.encode(), headers={"Content-Type": "application/atom+xml;type=feed;charset=utf-8"})
        entity = match[0]
        token = request.headers.get("Authorization") or request.headers.get(p.HEADER_TOKEN)
        last: AuthError | None = None
        for right in (LISTEN, SEND):
            try:
                self.authorizer.authorize(token, entity, right, host=host)
                break
            except AuthError as exc:
                last = exc
        else:
            assert last is not None
            return self.error(last.status, last.message, host, entity)
        hc = self.config.hybrid_connections[entity]
        stamp = self.started.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = (
            '<entry xmlns="http://www.w3.org/2005/Atom">'
            f"<id>https://{escape(host)}/{escape(entity)}</id><title type=\"text\">{escape(entity)}</title>"
            f"<published>{stamp}</published><updated>{stamp}</updated>"
            '<content type="application/xml">'
            '<HybridConnectionDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect" '
            'xmlns:i="http://www.w3.org/2001/XMLSchema-instance">'
            f"<CreatedAt>{stamp}</CreatedAt><UpdatedAt>{stamp}</UpdatedAt>"
            f"<RequiresClientAuthorization>{str(hc.requires_client_authorization).lower()}</RequiresClientAuthorization>"
            f"<UserMetadata>{escape(hc.user_metadata)}</UserMetadata>"
            f"<ListenerCount>{self.listeners.count(entity)}</ListenerCount>"
            "</HybridConnectionDescription></content></entry>"
        )
        return web.Response(body=body.encode(), headers={"Content-Type": "application/atom+xml;type=entry;charset=utf-8"})


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
