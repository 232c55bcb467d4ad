"""One listener window: the work the Durable listener activity does.

:func:`run_window` opens a :class:`relay.listener.HybridConnectionListener` on an inbound
hybrid connection for ``seconds``, stores every HTTP request and every WebSocket message it
receives into the queue chosen by ``INBOUND_ROUTES`` (claim-check for big payloads, see
:mod:`bridge.fanin`) and returns counts, never payloads.

Acknowledgement rule: an HTTP sender gets ``202`` only after its message is stored; when
storing fails it gets ``503`` (with ``Retry-After``) and must retry, so an acknowledged message
is never lost. WebSocket messages carry no acknowledgement; if storing one fails, the stream is
closed with code 1011 so the sender knows delivery stopped at that point.

Failures of the window itself (token refused, missing Listener role, unknown entity) do not
raise: the result has ``ok: false`` and ``lastError``, and the orchestration backs off. Windows
whose counts cannot be awaited (the one crossing a continue-as-new boundary) write them to a
small report blob that the next generation collects (:func:`write_report` / :func:`collect_reports`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from azure.core.exceptions import ResourceNotFoundError

from opentelemetry.trace import SpanKind

from relay import tracing
from relay.listener import AcceptContext, HybridConnectionListener, RelayedHttpRequest, RelayedHttpResponse
from relay.stream import HybridConnectionStream

from . import fanin, storage, telemetry
from .credentials import get_credential
from .generation import HEARTBEAT_SECONDS
from .headers import MESSAGE_ID_HEADER, inbound_headers, strip_credentials_from_query
from .routing import route
from .settings import Settings

log = logging.getLogger("bridge.listener")

RETRY_AFTER_SECONDS = 5
REPORT_PREFIX = "_listener-reports"
STATUS_PREFIX = "_listener-status"
WS_IDLE_CLOSE_CODE = 1001
"""Close code for a WebSocket stream that sent nothing for INBOUND_WS_IDLE_SECONDS ("going away"; reconnect to send more)."""
WS_TOO_BIG_CLOSE_CODE = 1009
"""Close code for a WebSocket message over INBOUND_MAX_BODY_BYTES (RFC 6455 "message too big"); it is not stored."""
ACCEPT_RESERVATION_SECONDS = 30.0
"""How long an accepted WebSocket sender holds its slot before its stream starts (the accept rendezvous' budget)."""
WS_OVER_LIMIT_STATUS = 503
"""HTTP status with which a WebSocket sender beyond INBOUND_MAX_WS_STREAMS is refused at accept."""
_WS_HANDSHAKE_PREFIXES = ("sec-websocket-", "connection", "upgrade", "host")


@dataclass
class WindowCounts:
    """What one window did (the activity's result; JSON-serialisable through :meth:`to_json`)."""

    connection: str
    windowId: str
    ok: bool = True
    online: bool = False
    httpRequests: int = 0
    wsStreams: int = 0
    wsMessages: int = 0
    stored: int = 0
    claimChecked: int = 0
    storeFailures: int = 0
    restarts: int = 0
    lastError: str | None = None
    startedAt: str = ""
    endedAt: str = ""
    seconds: float = 0.0
    queues: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class _Window:
    def __init__(self, settings: Settings, connection: str, counts: WindowCounts):
        self.settings = settings
        self.connection = connection
        self.counts = counts
        self.in_flight = 0
        self.streams = 0
        self.reserved: dict[str, float] = {}  # accepted senders whose stream has not started yet: id -> since

    async def _store(self, *, kind: str, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
                     trace_headers: dict[str, str] | None = None) -> tuple[fanin.Stored, str]:
        message = fanin.inbound_message(
            id=str(uuid.uuid4()), kind=kind, connection=self.connection, method=method, path=path, query=query,
            headers=headers, received_at=fanin.utc_now_text(),
        )
        message.update(trace_headers or {})  # "traceparent" (and "tracestate"): a consumer continues the trace
        queue = route(self.settings.inbound_routes, self.settings.inbound_default_queue,
                      connection=self.connection, path=path, headers=headers)
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
        try:
            stored = await fanin.store(message, body, queue=queue, container=self.settings.claim_check_container,
                                       content_type=content_type)
        except Exception as exc:
            self.counts.storeFailures += 1
            self.counts.lastError = f"storing into queue {queue} failed: {_error_text(exc)}"
            log.warning("%s: %s", self.connection, self.counts.lastError)
            raise
        self.counts.stored += 1
        self.counts.claimChecked += int(stored.claim_checked)
        self.counts.queues[queue] = self.counts.queues.get(queue, 0) + 1
        return stored, message["id"]

    async def on_request(self, request: RelayedHttpRequest) -> RelayedHttpResponse:
        self.counts.httpRequests += 1
        if self.in_flight >= self.settings.inbound_max_concurrent_requests:
            # The unread body is discarded by the relay listener; nothing is buffered here.
            return _json_response(503, "too_many_requests",
                                  f"more than {self.settings.inbound_max_concurrent_requests} requests in flight; retry later",
                                  {"Retry-After": str(RETRY_AFTER_SECONDS)})
        self.in_flight += 1
        try:
            return await self._serve(request)
        finally:
            self.in_flight -= 1

    async def _serve(self, request: RelayedHttpRequest) -> RelayedHttpResponse:
        limit = self.settings.inbound_max_body_bytes
        body = await _read_at_most(request, limit)
        if body is None:
            return _json_response(413, "payload_too_large",
                                  f"the body exceeds {limit} bytes, the most this bridge stores (INBOUND_MAX_BODY_BYTES); "
                                  "send a smaller body or a reference to the data")
        headers = inbound_headers(request.headers.items())
        try:
            with tracing.span(tracing.QUEUE_STORE, kind=SpanKind.PRODUCER, context=tracing.extract(request.headers)):
                stored, message_id = await self._store(
                    kind="http", method=request.method, path=request.path, query=strip_credentials_from_query(request.query),
                    headers=headers, body=body, trace_headers=tracing.carry(request.headers),
                )
        except Exception:
            return _json_response(503, "store_failed", "the message was not stored; retry later",
                                  {"Retry-After": str(RETRY_AFTER_SECONDS)})
        return RelayedHttpResponse(
            202,
            headers={"Content-Type": "application/json", MESSAGE_ID_HEADER: message_id},
            body=json.dumps({"id": message_id, "queue": stored.queue, "claimCheck": stored.claim_checked}).encode(),
        )

    def on_accept(self, ctx: AcceptContext) -> bool:
        """Refuse a WebSocket sender beyond INBOUND_MAX_WS_STREAMS at the handshake (503), before a stream exists.

        An accepted sender holds a reservation until its stream starts (``on_stream``), so a burst
        of handshakes cannot all pass the check before the first stream is counted. Reservations
        whose stream never arrived (the accept rendezvous failed) lapse after
        :data:`ACCEPT_RESERVATION_SECONDS`.
        """
        now = time.monotonic()
        for key, since in list(self.reserved.items()):
            if now - since > ACCEPT_RESERVATION_SECONDS:
                del self.reserved[key]
        if self.streams + len(self.reserved) >= self.settings.inbound_max_ws_streams:
            ctx.status_code = WS_OVER_LIMIT_STATUS
            ctx.status_description = f"Too many WebSocket streams on this listener (at most {self.settings.inbound_max_ws_streams}); retry later"
            return False
        self.reserved[ctx.id] = now
        return True

    async def on_stream(self, stream: HybridConnectionStream) -> None:
        self.counts.wsStreams += 1
        self.reserved.pop(stream.id, None)
        if self.streams >= self.settings.inbound_max_ws_streams:  # a lapsed reservation's stream arrived after all
            await stream.close(1013, "too many WebSocket streams; retry later")
            return
        self.streams += 1
        try:
            await self._serve_stream(stream)
        finally:
            self.streams -= 1

    async def _serve_stream(self, stream: HybridConnectionStream) -> None:
        url = urlsplit(stream.url or "")
        entity_prefix = "/" + self.connection
        path = url.path[len(entity_prefix):] if url.path.startswith(entity_prefix) else url.path
        headers = {k: v for k, v in inbound_headers(stream.headers.items()).items()
                   if not k.lower().startswith(_WS_HANDSHAKE_PREFIXES)}
        query = strip_credentials_from_query(url.query)
        idle = self.settings.inbound_ws_idle_seconds
        limit = self.settings.inbound_max_body_bytes
        try:
            while True:
                try:
                    message = await asyncio.wait_for(stream.receive(), idle)
                except asyncio.TimeoutError:
                    await stream.close(WS_IDLE_CLOSE_CODE, f"idle for {idle} s (INBOUND_WS_IDLE_SECONDS); reconnect to send more")
                    return
                if message is None:
                    break
                self.counts.wsMessages += 1
                body = message.encode("utf-8") if isinstance(message, str) else bytes(message)
                if len(body) > limit:
                    await stream.close(WS_TOO_BIG_CLOSE_CODE, f"message over {limit} bytes (INBOUND_MAX_BODY_BYTES) not stored")
                    return
                try:
                    with tracing.span(tracing.QUEUE_STORE, kind=SpanKind.PRODUCER, context=tracing.extract(stream.headers)):
                        await self._store(kind="websocket", method="MESSAGE", path=path or "/", query=query, headers=headers,
                                          body=body, trace_headers=tracing.carry(stream.headers))
                except Exception:
                    await stream.close(1011, "the bridge could not store the message")
                    return
        except Exception as exc:  # the sender went away abruptly: nothing to acknowledge
            log.info("%s: WebSocket stream %s ended: %s", self.connection, stream.id, _error_text(exc))
        finally:
            await stream.close()


def _json_response(status: int, error: str, message: str, headers: dict[str, str] | None = None) -> RelayedHttpResponse:
    return RelayedHttpResponse(status, headers={"Content-Type": "application/json", **(headers or {})},
                               body=json.dumps({"error": error, "message": message}).encode())


async def _read_at_most(request: RelayedHttpRequest, limit: int) -> bytes | None:
    """The whole body, or ``None`` as soon as it exceeds ``limit`` bytes (the rest is never buffered)."""
    declared = request.headers.get("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > limit:
        return None
    parts: list[bytes] = []
    size = 0
    async for chunk in request.iter_chunks():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


async def run_window(settings: Settings, connection: str, seconds: float, *, window_id: str | None = None) -> WindowCounts:
    """Listen on ``connection`` for ``seconds``; store what arrives; return the counts (never raises)."""
    counts = WindowCounts(connection=connection, windowId=window_id or str(uuid.uuid4()), startedAt=fanin.utc_now_text())
    window = _Window(settings, connection, counts)
    started = time.monotonic()
    window_span = telemetry.start_window_span(connection, counts.windowId)

    beat_now = asyncio.Event()

    def went_online() -> None:
        counts.online = True
        beat_now.set()  # the status route shows "online" within moments, not a heartbeat later

    listener = HybridConnectionListener(
        settings.relay_address(connection),
        get_credential(settings.relay_client_id),
        connection_verify=settings.connection_verify,
        request_handler=window.on_request,
        accept_handler=window.on_accept,
        stream_request_body=True,  # bodies are counted as they arrive: INBOUND_MAX_BODY_BYTES holds before buffering
        on_online=went_online,
    )
    streams: set[asyncio.Task] = set()
    await _resume_counts(settings, counts)
    heartbeat = asyncio.get_running_loop().create_task(_heartbeat(settings, counts, seconds, beat_now))

    async def accept_loop() -> None:
        async for stream in listener:
            task = asyncio.get_running_loop().create_task(window.on_stream(stream))
            streams.add(task)
            task.add_done_callback(streams.discard)

    try:
        async with listener:
            counts.online = counts.online or listener.is_online
            acceptor = asyncio.get_running_loop().create_task(accept_loop())
            try:
                await asyncio.wait_for(asyncio.shield(acceptor), timeout=seconds)
            except asyncio.TimeoutError:
                pass
            if listener.last_error is not None:
                counts.lastError = _error_text(listener.last_error)
        # Closing the listener let in-flight HTTP requests finish; now end the WebSocket streams.
        acceptor.cancel()
        if streams:
            _done, pending = await asyncio.wait(list(streams), timeout=5.0)
            for task in pending:
                task.cancel()
    except Exception as exc:  # could not listen at all (token refused, no Listener role, unknown entity...)
        counts.ok = False
        counts.lastError = _error_text(exc)
        log.warning("listener window on %s failed: %s", connection, counts.lastError)
    finally:
        heartbeat.cancel()  # a crashed worker leaves its last heartbeat behind; it goes stale
    counts.seconds = round(time.monotonic() - started, 3)
    counts.endedAt = fanin.utc_now_text()
    await _end_heartbeat(settings, counts)
    telemetry.end_window_span(window_span, counts)
    return counts


def heartbeat_blob_name(connection: str, window_id: str) -> str:
    return f"{STATUS_PREFIX}/{connection}/{window_id}.json"


async def _heartbeat(settings: Settings, counts: WindowCounts, seconds: float, wake: asyncio.Event) -> None:
    """Write the window's live counts every HEARTBEAT_SECONDS (best effort: never disturbs the window)."""
    name = heartbeat_blob_name(counts.connection, counts.windowId)
    while True:
        try:
            container = await storage.container(settings.claim_check_container)
            await container.upload_blob(name, json.dumps({**counts.to_json(), "updatedAt": fanin.utc_now_text(),
                                                          "plannedSeconds": seconds}), overwrite=True)
        except Exception as exc:
            log.debug("%s: heartbeat of window %s not written: %s", counts.connection, counts.windowId, _error_text(exc))
        try:
            await asyncio.wait_for(wake.wait(), HEARTBEAT_SECONDS)
        except asyncio.TimeoutError:
            pass
        wake.clear()


async def _resume_counts(settings: Settings, counts: WindowCounts) -> None:
    """A heartbeat left by this very window id means an earlier delivery died (work items are at least once):
    continue from its counts and say so (``restarts``), so the orchestration counts the window as lost."""
    try:
        container = await storage.container(settings.claim_check_container)
        data = await (await container.get_blob_client(heartbeat_blob_name(counts.connection, counts.windowId)).download_blob()).readall()
        earlier = json.loads(data)
    except Exception:  # none (the normal case) or unreadable
        return
    for key in ("httpRequests", "wsStreams", "wsMessages", "stored", "claimChecked", "storeFailures", "restarts"):
        setattr(counts, key, int(earlier.get(key) or 0))
    counts.restarts += 1
    counts.queues = dict(earlier.get("queues") or {})
    log.warning("%s: window %s runs again after its worker was lost (restart %d)", counts.connection, counts.windowId, counts.restarts)


async def _end_heartbeat(settings: Settings, counts: WindowCounts) -> None:
    try:
        container = await storage.container(settings.claim_check_container)
        await container.delete_blob(heartbeat_blob_name(counts.connection, counts.windowId))
    except Exception:  # not written yet, or storage down: it goes stale and is cleaned up later
        pass


async def read_heartbeats(settings: Settings, connection: str) -> list[dict]:
    """The heartbeat blobs of ``connection``'s windows (each with ``updatedAt``), oldest first."""
    container = await storage.container(settings.claim_check_container)
    prefix = f"{STATUS_PREFIX}/{connection}/"
    beats = []
    async for item in container.list_blobs(name_starts_with=prefix):
        if "/" in item.name[len(prefix):]:
            continue  # a longer connection name ("orders/eu" under "orders")
        try:
            data = await (await container.get_blob_client(item.name).download_blob()).readall()
            beats.append(json.loads(data))
        except (ResourceNotFoundError, ValueError):
            continue
    return sorted(beats, key=lambda b: b.get("startedAt") or "")


def report_blob_name(connection: str, window_id: str) -> str:
    return f"{REPORT_PREFIX}/{connection}/{window_id}.json"


async def write_report(settings: Settings, counts: WindowCounts) -> None:
    """Persist a window's counts for the generation that could not await it."""
    container = await storage.container(settings.claim_check_container)
    await container.upload_blob(report_blob_name(counts.connection, counts.windowId), json.dumps(counts.to_json()), overwrite=True)


async def collect_reports(settings: Settings, connection: str, window_ids: list[str], stale_seconds: float | None = None) -> dict:
    """Read and delete the report blobs of ``window_ids``: ``{"reports": {id: counts}, "missing": [ids]}``.

    Also deletes the heartbeats those windows may have left (a crashed worker leaves its last one) and,
    with ``stale_seconds``, every heartbeat of the connection not updated for that long.
    """
    container = await storage.container(settings.claim_check_container)
    for window_id in window_ids:
        try:
            await container.delete_blob(heartbeat_blob_name(connection, window_id))
        except ResourceNotFoundError:
            pass
    if stale_seconds:
        prefix = f"{STATUS_PREFIX}/{connection}/"
        cutoff = time.time() - stale_seconds
        async for item in container.list_blobs(name_starts_with=prefix):
            if "/" not in item.name[len(prefix):] and item.last_modified and item.last_modified.timestamp() < cutoff:
                try:
                    await container.delete_blob(item.name)
                except ResourceNotFoundError:
                    pass
    reports, missing = {}, []
    for window_id in window_ids:
        blob = container.get_blob_client(report_blob_name(connection, window_id))
        try:
            data = await (await blob.download_blob()).readall()
        except ResourceNotFoundError:
            missing.append(window_id)
            continue
        reports[window_id] = json.loads(data)
        try:
            await blob.delete_blob()
        except ResourceNotFoundError:
            pass
    return {"reports": reports, "missing": missing}
