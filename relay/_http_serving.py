"""The listener's HTTP-serving path: requests in, the handler's responses out.

A request reaches the listener in one of two ways (relay-protocol.md §2.4):

* **inline** on the control channel (JSON + body message): the handler's response goes back on
  the control channel when it is small and complete, otherwise over a new *response rendezvous*
  opened to the request's ``address``;
* **address-only**: the listener opens a *request rendezvous* to ``address`` and the service
  sends the full request there.

Either way, a rendezvous the listener opened belongs to the sender's TCP connection on the
service side: the service sends that connection's later requests over it and closes it when the
sender goes away (and drops the sender's connection if the listener closes it first). So an
open rendezvous keeps serving ``request`` messages until the service closes it, as hyco-https
does. The copy of a request on a rendezvous may lack ``address`` and ``id``; they default to the
request that opened the rendezvous.

Rendezvous sockets are :class:`relay._websocket.WebSocket`: raw frames over the
listener's aiohttp session (the one WebSocket stack of the listener), so a large body reaches the
handler fragment by fragment as it arrives, a command and its body leave in one write, and the
address is used byte for byte.
"""

from __future__ import annotations

import asyncio
import inspect
import json.encoder
import logging
import types
from typing import TYPE_CHECKING, Any

import aiohttp

from ._websocket import WebSocketClosed, WebSocket
from .errors import ConnectionLostError, RelayError
from .protocol import INLINE_LIMIT, ProtocolError, RequestCommand, decode_command
from .relayed_http import RelayedHttpRequest, RelayedHttpResponse, reason_phrase, response_headers

if TYPE_CHECKING:
    from .listener import HybridConnectionListener

_log = logging.getLogger("relay.listener")

# A JSON string literal, escaped as the command encoder (``ensure_ascii=False``) escapes it.
_json_str = json.encoder.encode_basestring
_Coroutine = types.CoroutineType

MSG_NO_HANDLER = "The listener RequestHandler has not been configured."
MSG_HANDLER_FAILED = "The listener RequestHandler threw an exception. See listener logs for details."
MSG_HANDLER_TIMEOUT = "The listener RequestHandler did not answer in time."
MSG_SHUTTING_DOWN = "The listener is shutting down."
HANDLER_TIMEOUT_STATUS = 503
"""Status of a handler that did not answer in time: 502 and 504 are the service's own codes."""

RENDEZVOUS_OPEN_TIMEOUT = 20.0
"""Seconds to open a rendezvous (.NET's AcceptTimeout)."""


class HttpServing:
    """Serves HTTP requests for one :class:`~relay.listener.HybridConnectionListener`."""

    def __init__(self, listener: HybridConnectionListener):
        self._listener = listener
        self._channels: dict[WebSocket, bool] = {}  # open rendezvous -> busy with an exchange
        self._deadlines = HandlerDeadlines()
        self._inline = 0  # inline requests started and not yet answered (see _answer_inline)

    # -- entry points --------------------------------------------------------------------------

    def start_request(self, control: Any, command: RequestCommand, body: bytes | None) -> None:
        """Serve a ``request`` from the control channel in a task of its own, so that a slow
        handler never holds up the control channel or the other requests. The task is in the
        listener's task set (close() waits for it) until it ends; it removes itself, which
        saves a done-callback (one more loop callback) per request."""
        lst = self._listener
        if not command.is_address_only:
            self._inline += 1  # until answered: the requests that arrived together answer together
        task = asyncio.get_running_loop().create_task(self.on_request(control, command, body))
        lst._tasks.add(task)

    async def on_request(self, control: Any, command: RequestCommand, body: bytes | None) -> None:
        """A ``request`` from the control channel (``body``: its inline body, if any); the body
        of the task :meth:`start_request` starts (failures are logged, never raised)."""
        try:
            if command.is_address_only:
                ws = await self._open(command)
                if ws is not None:
                    await self._serve_channel(ws, command)
            else:
                await self._answer_inline(control, command, body)
        except Exception:
            _log.exception("listener task failed")
        finally:
            self._listener._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def _answer_inline(self, control: Any, command: RequestCommand, body: bytes | None) -> None:
        lst = self._listener
        try:
            request = RelayedHttpRequest(
                command.method or "GET",
                command.request_target or "/",
                command.request_headers,
                body or b"",
                command.id or "",
                command.remote_endpoint,
                lst._address.entity,
            )
            response = await self.invoke(request)
            head, payload, streamed = encode_response(command.id or "", response)
            if not streamed and len(payload) <= INLINE_LIMIT and control is not None and not control.closed:
                try:
                    # While other inline requests are unanswered (those that arrived in the same
                    # read run in this loop turn too), hold the response: the last one writes all.
                    await lst._send_control(control, head, payload or None, self._inline > 1)
                    return
                except (ConnectionError, RuntimeError, RelayError):
                    pass  # the control channel just dropped: the request's rendezvous address still works
                except Exception as exc:  # aiohttp.ClientError and friends
                    _log.debug("control channel write failed (%s); answering over a rendezvous", type(exc).__name__)
        finally:
            self._inline -= 1  # answered (or going over a rendezvous): no longer one to wait for
        ws = await self._open(command)
        if ws is None:
            _log.warning("could not deliver the response to request %s: the rendezvous failed", command.id)
            return
        self._channels[ws] = True
        try:
            await self._send_response(ws, head, payload, streamed)
        except Exception as exc:
            _log.warning("could not deliver the response to request %s: %s", command.id, exc)
            await self._close(ws, 1011, "Response failed")
            return
        finally:
            self._channels[ws] = False
        await self._serve_channel(ws, command)

    async def invoke(self, request: RelayedHttpRequest) -> RelayedHttpResponse:
        """Run the request handler: its response, or 500/501/503 as .NET answers."""
        lst = self._listener
        if lst._closing:
            return RelayedHttpResponse(503, body=MSG_SHUTTING_DOWN)
        handler = lst.request_handler
        if handler is None:
            return RelayedHttpResponse(501, body=MSG_NO_HANDLER)
        try:
            result = handler(request)
            if type(result) is _Coroutine or inspect.isawaitable(result):  # an async def handler: the usual case first
                result = await self._deadlines.run(result, lst._handler_timeout)
        except TimeoutError:
            _log.error("request handler did not answer %s %s within %g s", request.method, request.target, lst._handler_timeout)
            return RelayedHttpResponse(HANDLER_TIMEOUT_STATUS, body=MSG_HANDLER_TIMEOUT)
        except Exception:
            _log.exception("request handler failed for %s %s", request.method, request.target)
            return RelayedHttpResponse(500, body=MSG_HANDLER_FAILED)
        if result is None:
            return RelayedHttpResponse(200)
        if not isinstance(result, RelayedHttpResponse):
            _log.error("request handler returned %s, not a RelayedHttpResponse", type(result).__name__)
            return RelayedHttpResponse(500, body=MSG_HANDLER_FAILED)
        if not 100 <= result.status <= 999:  # the protocol carries 100-999 only; anything else would strand the sender
            _log.error("request handler returned status %d for %s %s", result.status, request.method, request.target)
            return RelayedHttpResponse(500, body=MSG_HANDLER_FAILED)
        return result

    async def close_idle(self) -> None:
        """Listener closing: close the rendezvous sockets waiting for a next request; busy ones
        close after their exchange."""
        for ws, busy in list(self._channels.items()):
            if not busy:
                await self._close(ws, 1000, "Normal Closure")

    # -- rendezvous ------------------------------------------------------------------------------

    async def _open(self, command: RequestCommand) -> WebSocket | None:
        """Open the request's rendezvous, its address byte for byte."""
        session = self._listener._session
        if session is None or session.closed:
            return None
        try:
            result = await WebSocket.open(session, command.address or "", timeout=RENDEZVOUS_OPEN_TIMEOUT)
        except (OSError, asyncio.TimeoutError, aiohttp.ClientError, ValueError) as exc:
            # Never the URL: its query holds the rendezvous secret.
            _log.warning("request rendezvous for %s failed: %s", command.id, type(exc).__name__)
            return None
        if isinstance(result, tuple):
            _log.warning("request rendezvous for %s refused: %d %s", command.id, result[0], result[1])
            return None
        return result

    async def _serve_channel(self, ws: WebSocket, origin: RequestCommand) -> None:
        """Serve every ``request`` the service sends on ``ws`` until it closes the socket.

        The first request on an address-only rendezvous must come within the operation timeout;
        after that the socket waits as long as the service keeps it (the sender's connection).
        """
        lst = self._listener
        first = origin.is_address_only
        self._channels[ws] = False
        try:
            while not lst._closing:
                try:
                    if first:
                        message = await asyncio.wait_for(ws.recv_message(), lst._operation_timeout)
                    else:
                        message = await ws.recv_message()
                except WebSocketClosed:
                    return
                except asyncio.TimeoutError:
                    _log.warning("request %s: the service sent no request over its rendezvous", origin.id)
                    return
                if not isinstance(message, str):
                    continue  # a stray binary message: not a command
                try:
                    full = decode_command(message)
                except ProtocolError as exc:
                    _log.warning("ignored a malformed message on a request rendezvous: %s", exc)
                    continue
                if type(full) is not RequestCommand or full.method is None:
                    if full.has_body:  # some other command with a body: skip both
                        await ws.recv_message()
                    continue
                self._channels[ws] = True
                ok = await self._serve_one(ws, full, origin if first else None)
                self._channels[ws] = False
                first = False
                if not ok:
                    return
        except WebSocketClosed:
            return
        finally:
            self._channels.pop(ws, None)
            await self._close(ws, 1000, "Normal Closure")

    async def _serve_one(self, ws: WebSocket, full: RequestCommand, origin: RequestCommand | None) -> bool:
        """One exchange on a rendezvous. False when the socket can carry no more."""
        lst = self._listener
        request_id = full.id or (origin.id if origin is not None else None) or ""
        body: RendezvousBody | None = RendezvousBody(ws) if full.has_body else None
        request = RelayedHttpRequest(
            full.method or "GET",
            full.request_target or "/",
            full.request_headers,
            b"",
            request_id,
            full.remote_endpoint,
            lst._address.entity,
            stream=body,
        )
        try:
            if body is not None and not lst.stream_request_body:
                # Default: the handler sees a complete request (``request.body`` valid); a body cut
                # off mid-way never reaches it (ConnectionLostError, logged below).
                await asyncio.wait_for(request.read(), lst._operation_timeout)
            response = await self.invoke(request)
            head, payload, streamed = encode_response(request_id, response)
            await self._send_response(ws, head, payload, streamed)
            if body is not None and not body.done:
                # The handler did not read (all of) the body: discard the rest before the next request.
                await asyncio.wait_for(body.drain(), lst._operation_timeout)
            return True
        except (ProtocolError, asyncio.TimeoutError, WebSocketClosed, ConnectionError, RelayError, RuntimeError) as exc:
            _log.warning("request %s over rendezvous failed: %s", request_id,
                         type(exc).__name__ if isinstance(exc, asyncio.TimeoutError) else exc)
        except Exception:
            # e.g. a streamed response body whose iterator failed: the message is cut off, so the
            # socket can carry nothing more (closed with 1011 by the caller).
            _log.exception("request %s over rendezvous failed", request_id)
            await self._close(ws, 1011, "Response failed")
        return False

    @staticmethod
    async def _send_response(ws: WebSocket, head: str, payload: Any, streamed: bool) -> None:
        if streamed:
            await ws.send_command(head)
            await ws.send_stream(_chunks(payload))
        else:
            await ws.send_command(head, payload or None)

    @staticmethod
    async def _close(ws: WebSocket, code: int, reason: str) -> None:
        try:
            await ws.close(code=code, reason=reason)
        except Exception:
            pass


def encode_response(request_id: str, response: RelayedHttpResponse) -> tuple[str, Any, bool]:
    """The ``response`` JSON, the body (bytes, or an async iterable when streamed) and whether it is streamed.

    The JSON is written from a template, byte for byte what :func:`relay.protocol.encode_command`
    gives for the same :class:`ResponseCommand` (a test holds the two together): only the strings
    need escaping, which the C string encoder does, so no dict is built and walked per response.
    """
    body = response.body
    text = isinstance(body, str)
    if text:
        body = body.encode("utf-8")  # type: ignore[union-attr]
    elif body is None:
        body = b""
    streamed = not isinstance(body, (bytes, bytearray, memoryview))
    headers = response_headers(response.headers, text)
    if headers:
        fields = ",".join([f"{_json_str(name)}:{_json_str(value)}" for name, value in headers.items()])
    else:
        fields = ""
    has_body = "true" if streamed or len(body) > 0 else "false"  # type: ignore[arg-type]
    head = (
        f'{{"response":{{"requestId":{_json_str(request_id)},"statusCode":{int(response.status)},'
        f'"responseHeaders":{{{fields}}},"body":{has_body},'
        f'"statusDescription":{_status_json(response.status, response.reason)}}}}}'
    )
    return head, body, streamed


class HandlerDeadlines:
    """Deadlines for request handlers, with one loop timer for all of them.

    :meth:`run` awaits a handler in the current task; when its time is up the task is cancelled
    and the cancellation becomes :class:`TimeoutError` (a cancellation anybody else asked for
    stays a cancellation), as ``asyncio.timeout`` does. Instead of a timer handle per request
    (``call_at`` + ``cancel``, and cancelled handles left in the loop's heap), the running
    handlers sit in a dict and one timer fires at the earliest deadline: it cancels what is
    due and re-arms itself at the next one. A listener gives every handler the same timeout,
    so the timer is armed about once per timeout, not once per request.
    """

    __slots__ = ("_running", "_expired", "_handle", "_at", "_loop")

    def __init__(self) -> None:
        self._running: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, awaitable: Any, timeout: float) -> Any:
        task = asyncio.current_task()
        assert task is not None
        loop = self._loop
        if loop is None or task.get_loop() is not loop:
            loop = self._loop = task.get_loop()
            self._handle = None
        deadline = loop.time() + timeout
        running = self._running
        running[task] = deadline
        if self._handle is None or deadline < self._at:
            self._arm(deadline)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if task in self._expired:
                self._expired.discard(task)
                if task.uncancel() == 0:
                    raise TimeoutError from None
            raise
        finally:
            running.pop(task, None)
            if self._expired:
                self._expired.discard(task)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        assert self._loop is not None
        self._at = when
        self._handle = self._loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        assert self._loop is not None
        # Everything due by the time this timer was armed for is expired, even when the loop
        # runs it a little early (asyncio: within its clock resolution; uvloop: milliseconds),
        # as a timer per handler would: no re-arming for the same instant.
        now = max(self._loop.time(), self._at)
        due = [task for task, deadline in self._running.items() if deadline <= now]
        for task in due:
            del self._running[task]
            self._expired.add(task)
            task.cancel()
        if self._running:
            self._arm(min(self._running.values()))


async def _within(awaitable: Any, timeout: float) -> Any:
    """``await awaitable`` in the current task, cancelled with :class:`TimeoutError` after ``timeout`` s
    (a one-off :class:`HandlerDeadlines`)."""
    return await HandlerDeadlines().run(awaitable, timeout)


_STATUS_JSON: dict[int, str] = {}


def _status_json(status: int, reason: str | None) -> str:
    """The status description as a JSON string literal; the standard phrases' literals are kept."""
    if reason is not None:
        return _json_str(reason_phrase(status, reason))
    text = _STATUS_JSON.get(status)
    if text is None:
        text = _json_str(reason_phrase(status, None))
        if len(_STATUS_JSON) < 1000:  # statuses are 100-999
            _STATUS_JSON[status] = text
    return text


async def _chunks(chunks: Any) -> Any:
    """A streamed response body's chunks as bytes (``str`` chunks UTF-8 encoded)."""
    async for chunk in chunks:
        yield chunk.encode("utf-8") if isinstance(chunk, str) else chunk


class RendezvousBody:
    """The request body arriving on a rendezvous, fragment by fragment (one binary message).

    Iterating yields the fragments as they arrive; a message cut off (the rendezvous closed:
    the sender went away, or the service gave up) raises :class:`ConnectionLostError`.
    """

    __slots__ = ("_ws", "_fragments", "done")

    def __init__(self, ws: WebSocket):
        self._ws = ws
        self._fragments: Any = None
        self.done = False

    def __aiter__(self) -> RendezvousBody:
        return self

    async def __anext__(self) -> bytes:
        if self.done:
            raise StopAsyncIteration
        if self._fragments is None:
            self._fragments = self._ws.body_fragments()
        try:
            while True:
                fragment = await self._fragments.__anext__()
                if fragment:
                    return fragment
        except StopAsyncIteration:
            self.done = True
            raise
        except WebSocketClosed as exc:
            self.done = True
            detail = f"{exc.code} {exc.reason}".strip() if exc.code is not None else "no close frame"
            raise ConnectionLostError(f"the request body was cut off: the rendezvous closed ({detail})") from None

    async def drain(self) -> None:
        async for _ in self:
            pass


__all__ = ["HandlerDeadlines", "HttpServing", "RendezvousBody", "encode_response"]
