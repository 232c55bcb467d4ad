"""``HybridConnectionListener``: the on-premises side, serving WebSocket and HTTP senders."""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import time
import uuid
from typing import Any, Awaitable, Callable, Union
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from ._hints import add_hint
from ._http_serving import (
    MSG_HANDLER_FAILED,
    MSG_HANDLER_TIMEOUT,
    MSG_NO_HANDLER,
    MSG_SHUTTING_DOWN,
    RENDEZVOUS_OPEN_TIMEOUT,
    HttpServing,
)
from ._websocket import WebSocketClosed, WebSocket
from ._transport import USER_AGENT, build_ssl_context, new_session, parse_address
from .client import HEADER_USER_AGENT
from .connection_string import parse_connection_string
from .credentials import RelayToken, close_credential, get_token_provider
from .errors import ConnectionLostError, EndpointNotFoundError, RelayError, error_from_status
from .protocol import (
    ACTION_LISTEN,
    HEADER_TOKEN,
    AcceptCommand,
    CommandReader,
    ProtocolError,
    RenewTokenCommand,
    RequestCommand,
    encode_command,
    filter_sb_hc_query,
    hc_url,
    reject_url,
)
from .relayed_http import RelayedHttpRequest, RelayedHttpResponse
from .stream import HybridConnectionStream

__all__ = [
    "AcceptContext",
    "HybridConnectionListener",
    "ListenerState",
    "RelayedHttpRequest",
    "RelayedHttpResponse",
    "RETRY_DELAYS",
    "retry_delay",
]

_log = logging.getLogger(__name__)

RETRY_DELAYS = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds between reconnect attempts (.NET's list); stays at the last value, resets once online."""


def retry_delay(attempt: int) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0-based): 0, 1, 2, 5, 10, then 30 for good."""
    return RETRY_DELAYS[min(max(attempt, 0), len(RETRY_DELAYS) - 1)]


__all__ += ["MSG_NO_HANDLER", "MSG_HANDLER_FAILED", "MSG_HANDLER_TIMEOUT", "MSG_SHUTTING_DOWN"]

MSG_ACCEPT_HANDLER_FAILED = "The Listener's custom AcceptHandler threw an exception. See Listener logs for details."
MSG_REJECTED = "Rejected by user code"


def _tcp_keepalive(ws: WebSocket, idle: float | None) -> None:
    """TCP keep-alive on the control channel's socket: a peer that vanished (no RST, no FIN) is
    noticed by the kernel's probes, without WebSocket PINGs (which the service may punish)."""
    if not idle:
        return
    sock = ws.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", max(1, int(idle))), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        pass  # best effort: the pongs still keep the channel alive


class ListenerState:
    """Values of :attr:`HybridConnectionListener.state`."""

    IDLE = "idle"
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"
    CLOSING = "closing"
    CLOSED = "closed"


# ---------------------------------------------------------------------------------------------
# Request / response / accept context
# ---------------------------------------------------------------------------------------------


class AcceptContext:
    """What an ``accept_handler`` sees about a WebSocket sender, and how it answers.

    Read: ``id`` (tracking id), ``url`` (``sb://host/entity[/suffix][?app query]``, ``sb-hc-*``
    removed), ``headers`` (the sender's handshake headers, case-insensitive), ``subprotocols``
    (offered, in order), ``remote_endpoint``. Set: ``subprotocol`` (default: the first offered,
    ``None`` for none), and on rejection ``status_code`` (default 400) and
    ``status_description`` (default "Rejected by user code").
    """

    __slots__ = ("id", "url", "headers", "subprotocols", "subprotocol", "remote_endpoint", "status_code", "status_description")

    def __init__(self, command: AcceptCommand, url: str):
        self.id = command.id
        self.url = url
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(command.connect_headers))
        offered = self.headers.get("Sec-WebSocket-Protocol", "")
        self.subprotocols = [p.strip() for p in offered.split(",") if p.strip()]
        self.subprotocol: str | None = self.subprotocols[0] if self.subprotocols else None
        self.remote_endpoint = command.remote_endpoint
        self.status_code: int | None = None
        self.status_description: str | None = None

    def __repr__(self) -> str:
        return f"<AcceptContext id={self.id!r} url={self.url!r}>"


RequestHandler = Callable[[RelayedHttpRequest], Union[RelayedHttpResponse, Awaitable[RelayedHttpResponse], None]]
AcceptHandler = Callable[[AcceptContext], Union[bool, Awaitable[bool]]]


# ---------------------------------------------------------------------------------------------
# Listener
# ---------------------------------------------------------------------------------------------


class HybridConnectionListener:
    """Listen on a hybrid connection: accept WebSocket senders and answer HTTP requests.

    ``async with HybridConnectionListener(address, credential, ...) as listener:`` connects the
    control channel (errors of that first attempt raise, e.g.
    :class:`~relay.errors.AuthorizationFailedError` or :class:`~relay.errors.ForbiddenError`
    with the likely cause) and starts a background pump. Then:

    * WebSocket senders: ``stream = await listener.accept()`` or ``async for stream in listener``
      (``accept()`` returns ``None`` once the listener is closed). ``accept_handler(ctx)`` (sync
      or async) may reject a sender by returning False (set ``ctx.status_code`` /
      ``ctx.status_description``; defaults 400 "Rejected by user code"; an exception rejects with
      502) or pick ``ctx.subprotocol``.
    * HTTP senders: ``request_handler(request)`` (sync or async) gets a
      :class:`RelayedHttpRequest` and returns a :class:`RelayedHttpResponse`. Exceptions answer
      500, a missing handler 501 (as .NET), and a handler slower than ``handler_timeout`` (55 s,
      inside the service's 60 s deadline) answers 503 (502 and 504 are the service's own codes). By default the handler runs once the whole
      body has arrived (``request.body`` is set). With ``stream_request_body=True`` it runs as soon
      as the request line and headers are in, and reads large (rendezvous) bodies as they arrive
      with ``async for chunk in request.iter_chunks()`` or ``await request.read()``; ``request.body``
      then raises until ``read()`` has finished.

    The listener reconnects after any drop with .NET's backoff (0, 1, 2, 5, 10, 30 s ...), except
    when the hybrid connection does not exist (404): then it goes offline and ``last_error``
    holds :class:`~relay.errors.EndpointNotFoundError`. It renews its token on the control
    channel (``renewToken``) before expiry, keeps the control channel alive with an unsolicited
    PONG every ``keepalive_interval`` seconds (as the official clients do; the service may drop a
    control channel that sends PINGs), detects a dead connection with TCP keep-alive probes
    (after ``keepalive_interval`` s of silence, 3 probes 10 s apart) and, when
    ``receive_timeout`` is set, also reconnects when nothing at all arrived on the control
    channel for that many seconds (off by default: the service sends nothing on an idle channel,
    so a deadline would also recycle healthy idle listeners, with a moment without a listener), and
    reports ``state``, ``is_online``, ``last_error`` and the callbacks ``on_connecting`` (before
    the first connect and whenever it starts reconnecting), ``on_online`` (each time the control
    channel is up) and ``on_offline`` (gave up, or closed); all are sync or async callables without
    arguments.

    ``listener_id`` (default: a new GUID) is sent as ``sb-hc-id``; senders target it with
    ``allowed_listeners``. ``renew_margin`` overrides how many seconds before expiry the token is
    renewed (default: 10 % of its lifetime, at most 4 min). :meth:`close` stops accepting, lets
    in-flight requests finish for up to ``close_timeout`` seconds, then closes the control
    channel with 1000.
    """

    def __init__(
        self,
        address: str,
        credential: Any = None,
        *,
        connection_verify: bool | str | Any = True,
        request_handler: RequestHandler | None = None,
        accept_handler: AcceptHandler | None = None,
        listener_id: str | None = None,
        keepalive_interval: float | None = 60.0,
        receive_timeout: float | None = None,
        renew_margin: float | None = None,
        use_tls: bool | None = None,
        operation_timeout: float = 60.0,
        handler_timeout: float = 55.0,
        close_timeout: float = 10.0,
        user_agent: str | None = None,
        on_online: Callable[[], Any] | None = None,
        on_offline: Callable[[], Any] | None = None,
        on_connecting: Callable[[], Any] | None = None,
        stream_request_body: bool = False,
    ):
        self._address = parse_address(address, use_tls)
        self._provider = get_token_provider(credential)
        self._ssl = build_ssl_context(connection_verify) if self._address.use_tls else None
        self.request_handler = request_handler
        self.accept_handler = accept_handler
        self.listener_id = listener_id or str(uuid.uuid4())
        self._keepalive = keepalive_interval
        self._receive_timeout = receive_timeout
        self._http = HttpServing(self)
        self._renew_margin = renew_margin
        self._operation_timeout = operation_timeout
        self._handler_timeout = handler_timeout
        self._close_timeout = close_timeout
        self._user_agent = f"{user_agent} {USER_AGENT}" if user_agent else USER_AGENT
        self.on_online = on_online
        self.on_offline = on_offline
        self.on_connecting = on_connecting
        self.stream_request_body = stream_request_body

        self.state = ListenerState.IDLE
        self.last_error: BaseException | None = None
        self._session: aiohttp.ClientSession | None = None
        self._control: WebSocket | None = None
        self._pump_task: asyncio.Task | None = None
        self._renew_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._accepted: asyncio.Queue[HybridConnectionStream | None] = asyncio.Queue()
        self._closing = False
        self._wakeup: asyncio.Event | None = None
        self._url = hc_url(self._address.ws_base, self._address.entity, ACTION_LISTEN, id=self.listener_id,
                           app_query=self._address.query)
        self._accept_url_base = self._address.sb_uri
        self._owned_credential: Any = None

    @classmethod
    def from_connection_string(cls, conn_str: str, credential: Any = None, **kwargs: Any) -> HybridConnectionListener:
        """Build a listener from a Relay connection string (see :mod:`relay.connection_string`).

        ``entity_path=`` names the hybrid connection when the string has no ``EntityPath``.
        A credential created from the string (``Authentication=Managed Identity``) belongs to the
        listener and is closed by :meth:`close`.
        """
        cs = parse_connection_string(conn_str)
        address = cs.address(kwargs.pop("entity_path", None))
        options = cs.client_kwargs()
        options.update(kwargs)
        owned = cs.credential() if credential is None else None
        instance = cls(address, credential if credential is not None else owned, **options)
        instance._owned_credential = owned  # created here, so closed by close()
        return instance

    def __repr__(self) -> str:
        return f"HybridConnectionListener({self.address!r}, state={self.state!r}, listener_id={self.listener_id!r})"

    @property
    def address(self) -> str:
        """The logical address ``sb://host[:port]/entity``."""
        return self._address.sb_uri

    @property
    def is_online(self) -> bool:
        """True while the control channel is connected."""
        return self.state == ListenerState.ONLINE

    @property
    def token_provider(self):
        """The shared :class:`~relay.credentials.TokenProvider` for this listener's credential."""
        return self._provider

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect the control channel (errors raise) and start serving in the background."""
        if self._pump_task is not None:
            raise RuntimeError("the listener is already open")
        if self.state == ListenerState.CLOSED:
            raise RuntimeError("a closed listener cannot be reopened; create a new one")
        self._closing = False
        self._wakeup = asyncio.Event()
        self._session = new_session(self._ssl, limit=0, no_user_agent=True)
        self._set_state(ListenerState.CONNECTING)
        try:
            ws, token = await asyncio.wait_for(self._connect_control(), self._operation_timeout)
        except BaseException as exc:
            self.last_error = exc if isinstance(exc, Exception) else None
            await self._session.close()
            self._session = None
            self.state = ListenerState.OFFLINE
            if isinstance(exc, asyncio.TimeoutError):
                raise ConnectionLostError(f"listen on {self.address}: no answer within {self._operation_timeout:g} s") from None
            raise
        self._pump_task = asyncio.get_running_loop().create_task(self._pump(ws, token), name=f"relay-listener-{self.listener_id}")

    async def __aenter__(self) -> HybridConnectionListener:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop accepting, let in-flight requests finish (up to ``close_timeout`` s), close with 1000."""
        if self.state in (ListenerState.CLOSED, ListenerState.CLOSING):
            return
        # on_offline fires once when a listener that was up (or reconnecting) goes away, as .NET's Offline.
        was_online = self._pump_task is not None and self.state in (ListenerState.ONLINE, ListenerState.CONNECTING)
        self._closing = True
        self.state = ListenerState.CLOSING
        if self._wakeup is not None:
            self._wakeup.set()
        await self._http.close_idle()
        if self._tasks:
            _done, pending = await asyncio.wait(list(self._tasks), timeout=self._close_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._renew_task is not None:
            self._renew_task.cancel()
        ws = self._control
        if ws is not None and not ws.closed:
            try:
                await ws.close(1000, "Normal Closure", timeout=self._close_timeout)
            except Exception:
                pass
        if self._pump_task is not None:
            self._pump_task.cancel()
            try:
                await self._pump_task
            except BaseException:
                pass
        # Sockets accepted but never taken by accept() are closed, and waiting accept() calls get None.
        while not self._accepted.empty():
            stream = self._accepted.get_nowait()
            if stream is not None:
                await stream.close(1001, MSG_SHUTTING_DOWN)
        self._accepted.put_nowait(None)
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.state = ListenerState.CLOSED
        if self._owned_credential is not None:
            owned, self._owned_credential = self._owned_credential, None
            await close_credential(owned)
        if was_online:
            self._fire(self.on_offline)

    # -- accept queue ------------------------------------------------------------------------------

    async def accept(self) -> HybridConnectionStream | None:
        """The next accepted WebSocket sender; ``None`` once the listener is closed."""
        if self.state == ListenerState.IDLE:
            raise RuntimeError("open the listener first (async with listener: ...)")
        stream = await self._accepted.get()
        if stream is None:
            self._accepted.put_nowait(None)  # wake the other waiters too
        return stream

    def __aiter__(self) -> HybridConnectionListener:
        return self

    async def __anext__(self) -> HybridConnectionStream:
        stream = await self.accept()
        if stream is None:
            raise StopAsyncIteration
        return stream

    # -- control channel -----------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        previous, self.state = self.state, state
        if state == previous:
            return
        if state == ListenerState.CONNECTING:
            self._fire(self.on_connecting)
        elif state == ListenerState.ONLINE:
            self._fire(self.on_online)
        elif state == ListenerState.OFFLINE:
            self._fire(self.on_offline)

    def _fire(self, callback: Callable[[], Any] | None) -> None:
        if callback is None:
            return
        try:
            result = callback()
            if inspect.isawaitable(result):
                self._spawn(result)
        except Exception:
            _log.exception("listener callback %r failed", callback)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("listener task failed", exc_info=task.exception())

    async def _connect_control(self) -> tuple[WebSocket, RelayToken | None]:
        token = await self._provider.get_token(self.address)
        headers = {HEADER_USER_AGENT: self._user_agent}
        if token is not None:
            headers[HEADER_TOKEN] = token.token
        context = f"listen on {self.address}"
        assert self._session is not None
        # No PING keep-alive: the service may punish PINGs; the keep-alive here is unsolicited PONGs (_keepalive_loop).
        ws = await WebSocket.open(self._session, self._url, timeout=None, headers=headers, context=context)
        if not isinstance(ws, WebSocket):
            status, reason = ws
            error = error_from_status(status, reason, context=context)
            if status == 401:
                self._provider.invalidate(self.address)
            raise add_hint(error, self._provider, action="listen", sb_uri=self.address)
        self._control = ws
        _tcp_keepalive(ws, self._keepalive)
        self.last_error = None
        self._set_state(ListenerState.ONLINE)
        return ws, token

    async def _pump(self, ws: WebSocket, token: RelayToken | None) -> None:
        try:
            while True:
                loop = asyncio.get_running_loop()
                self._renew_task = loop.create_task(self._renew_loop(ws, token))
                keepalive = loop.create_task(self._keepalive_loop(ws)) if self._keepalive else None
                try:
                    await self._serve(ws)
                except ConnectionLostError as exc:
                    self.last_error = exc
                    if not self._closing:
                        _log.warning("%s", exc)
                finally:
                    self._renew_task.cancel()
                    self._renew_task = None
                    if keepalive is not None:
                        keepalive.cancel()
                if self._closing:
                    return
                self._control = None
                if not ws.closed:
                    await ws.close()
                reconnected = await self._reconnect()
                if reconnected is None:
                    return
                ws, token = reconnected
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug; do not die silently
            _log.exception("listener pump failed")
            self.last_error = exc
            self._set_state(ListenerState.OFFLINE)

    async def _reconnect(self) -> tuple[WebSocket, RelayToken | None] | None:
        self._set_state(ListenerState.CONNECTING)
        attempt = 0
        while not self._closing:
            await self._backoff(retry_delay(attempt))
            if self._closing:
                return None
            try:
                return await asyncio.wait_for(self._connect_control(), self._operation_timeout)
            except EndpointNotFoundError as exc:
                self.last_error = exc
                _log.error("%s; the listener goes offline", exc)
                self._set_state(ListenerState.OFFLINE)
                return None
            except (RelayError, asyncio.TimeoutError, OSError, aiohttp.ClientError) as exc:
                self.last_error = exc
                _log.warning("reconnect attempt %d failed: %s", attempt + 1, exc)
                attempt += 1
        return None

    async def _backoff(self, delay: float) -> None:
        """Wait ``delay`` seconds before a reconnect attempt, or less if :meth:`close` is called."""
        if delay <= 0 or self._wakeup is None:
            return
        try:
            await asyncio.wait_for(self._wakeup.wait(), delay)
        except asyncio.TimeoutError:
            pass

    async def _keepalive_loop(self, ws: WebSocket) -> None:
        """An unsolicited PONG every ``keepalive_interval`` s (RFC 6455 §5.5.3: no answer expected)."""
        assert self._keepalive
        while not ws.closed:
            await asyncio.sleep(self._keepalive)
            try:
                await ws.send_pong()
            except Exception:
                return  # the pump notices the dead socket and reconnects

    async def _send_control(self, ws: WebSocket, text: str, body: Any, coalesce: bool = False) -> None:
        """One command (and its body) on the control channel, the two adjacent: one write, so no lock.
        ``coalesce``: may wait for the loop's next turn to share one write with other responses."""
        try:
            await ws.send_command(text, body or None, coalesce=coalesce)
        except WebSocketClosed:
            raise ConnectionResetError("the control channel is closed") from None

    async def _serve(self, ws: WebSocket) -> None:
        reader = CommandReader()
        receive = ws.recv_message
        spawn = self._spawn
        start_request = self._http.start_request
        start_request = self._http.start_request
        deadline = self._receive_timeout
        while True:
            try:
                data = await (asyncio.wait_for(receive(), deadline) if deadline else receive())
            except asyncio.TimeoutError:
                ws.abort(reason="receive deadline")  # the peer is gone: no close handshake to wait for
                raise ConnectionLostError(
                    f"nothing arrived on the control channel of {self.address} for {deadline:g} s; reconnecting"
                ) from None
            except UnicodeDecodeError:
                _log.warning("ignored a malformed control message: a text message that is not valid UTF-8")
                reader = CommandReader()
                continue
            except WebSocketClosed as closed:
                if self._closing:
                    return
                if closed.code is not None:
                    raise ConnectionLostError(f"the service closed the control channel of {self.address}: {closed}") from None
                if closed.reason:
                    raise ConnectionLostError(f"the control channel of {self.address} failed: {closed.reason}") from None
                raise ConnectionLostError(f"the control channel of {self.address} was lost") from None
            try:
                result = reader.feed(data)
            except ProtocolError as exc:
                _log.warning("ignored a malformed control message: %s", exc)
                promised_body = reader.awaiting_body
                reader = CommandReader()
                if not (promised_body and type(data) is str):
                    continue
                # The body announced by the previous command never came; this text is a new command.
                try:
                    result = reader.feed(data)
                except ProtocolError as exc2:
                    _log.warning("ignored a malformed control message: %s", exc2)
                    reader = CommandReader()
                    continue
            if result is None:
                continue
            command, body = result
            if type(command) is RequestCommand:
                start_request(ws, command, body)
            elif type(command) is AcceptCommand:
                spawn(self._on_accept(command))
            else:  # unknown or misdirected commands are ignored, as .NET does
                _log.debug("ignored a %s on the control channel", getattr(command, "name", type(command).__name__))

    # -- token renewal ---------------------------------------------------------------------------

    async def _renew_loop(self, ws: WebSocket, token: RelayToken | None) -> None:
        if token is None:
            return
        while not ws.closed:
            if self._renew_margin is not None:
                # Never closer than half the token's remaining life, so a large margin cannot spin.
                now = time.time()
                due = max(token.expires_on - self._renew_margin, now + (token.expires_on - now) / 2)
            else:
                due = token.refresh_at
            await asyncio.sleep(max(0.0, due - time.time()))
            if self._renew_margin is not None:
                self._provider.invalidate(self.address)
            try:
                fresh = await self._provider.get_token(self.address)
            except Exception as exc:
                remaining = token.expires_on - time.time()
                _log.warning("token renewal for %s failed (%s); retrying", self.address, type(exc).__name__)
                await asyncio.sleep(max(0.5, min(10.0, remaining / 4)))
                continue
            if fresh is None or fresh.token == token.token:
                if time.time() >= token.expires_on:
                    # A fixed SAS (or a credential stuck on an expired token): nothing to renew with.
                    # The service closes the channel (1008) and the reconnect fetches afresh.
                    _log.warning("the token for %s expired and %s has no newer one", self.address, self._provider.describe())
                    return
                # Nothing newer yet (a credential serving its cache): try again later.
                await asyncio.sleep(max(0.5, min(10.0, (token.expires_on - time.time()) / 4)))
                continue
            token = fresh
            try:
                await self._send_control(ws, encode_command(RenewTokenCommand(token.token)), None)
            except Exception:
                return  # the pump notices the dead socket and reconnects with a fresh token

    # -- WebSocket senders ---------------------------------------------------------------------------

    def _logical_url(self, address: str) -> str:
        parts = urlsplit(address)
        path = parts.path
        if path.lower().startswith("/$hc/"):
            path = path[4:]
        query = filter_sb_hc_query(parts.query)
        return f"sb://{self._address.netloc}{path}" + (f"?{query}" if query else "")

    async def _on_accept(self, command: AcceptCommand) -> None:
        ctx = AcceptContext(command, self._logical_url(command.address))
        accepted = True
        if self._closing:
            accepted, ctx.status_code, ctx.status_description = False, 503, MSG_SHUTTING_DOWN
        elif self.accept_handler is not None:
            try:
                result = self.accept_handler(ctx)
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, 20.0)
                accepted = bool(result)
            except Exception:
                _log.exception("accept handler failed for %s", ctx.id)
                accepted, ctx.status_code, ctx.status_description = False, 502, MSG_ACCEPT_HANDLER_FAILED
        session = self._session
        if session is None:
            return
        if not accepted:
            code = ctx.status_code or 400
            if not 100 <= code <= 999:
                code = 400
            url = reject_url(command.address, code, ctx.status_description or MSG_REJECTED)
            try:
                result = await WebSocket.open(session, url, timeout=RENDEZVOUS_OPEN_TIMEOUT, context="reject")
            except (RelayError, TimeoutError) as exc:
                _log.warning("rejecting %s failed: %s", ctx.id, exc)
                return
            if isinstance(result, WebSocket):
                await result.close()
            elif result[0] != 410:  # 410 Gone is the service's "rejection delivered"
                _log.warning("rejecting %s: the service answered %d", ctx.id, result[0])
            return
        protocols = (ctx.subprotocol,) if ctx.subprotocol else ()
        try:
            result = await WebSocket.open(
                session, command.address, timeout=RENDEZVOUS_OPEN_TIMEOUT, protocols=protocols, autoclose=False, context="accept"
            )
        except (RelayError, TimeoutError) as exc:
            _log.warning("accepting %s failed: %s", ctx.id, exc)
            return
        if not isinstance(result, WebSocket):
            _log.warning("accepting %s failed: %d %s", ctx.id, result[0], result[1])
            return
        result.keep_alive(self._keepalive)
        stream = HybridConnectionStream(result, id=ctx.id, headers=ctx.headers, url=ctx.url)
        if self._closing:
            await stream.close(1001, MSG_SHUTTING_DOWN)
            return
        self._accepted.put_nowait(stream)
