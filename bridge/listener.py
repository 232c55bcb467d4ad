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
from relay.listener import HybridConnectionListener, RelayedHttpRequest, RelayedHttpResponse
from relay.stream import HybridConnectionStream

from . import fanin, storage
from .credentials import get_credential
from .headers import MESSAGE_ID_HEADER, inbound_headers
from .routing import route
from .settings import Settings

log = logging.getLogger("bridge.listener")

RETRY_AFTER_SECONDS = 5
REPORT_PREFIX = "_listener-reports"
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
        body = await request.read()
        headers = inbound_headers(request.headers.items())
        try:
            with tracing.span(tracing.QUEUE_STORE, kind=SpanKind.PRODUCER, context=tracing.extract(request.headers)):
                stored, message_id = await self._store(
                    kind="http", method=request.method, path=request.path, query=request.query, headers=headers, body=body,
                    trace_headers=tracing.carry(request.headers),
                )
        except Exception:
            return RelayedHttpResponse(
                503,
                headers={"Content-Type": "application/json", "Retry-After": str(RETRY_AFTER_SECONDS)},
                body=json.dumps({"error": "store_failed", "message": "the message was not stored; retry later"}).encode(),
            )
        return RelayedHttpResponse(
            202,
            headers={"Content-Type": "application/json", MESSAGE_ID_HEADER: message_id},
            body=json.dumps({"id": message_id, "queue": stored.queue, "claimCheck": stored.claim_checked}).encode(),
        )

    async def on_stream(self, stream: HybridConnectionStream) -> None:
        self.counts.wsStreams += 1
        url = urlsplit(stream.url or "")
        entity_prefix = "/" + self.connection
        path = url.path[len(entity_prefix):] if url.path.startswith(entity_prefix) else url.path
        headers = {k: v for k, v in inbound_headers(stream.headers.items()).items()
                   if not k.lower().startswith(_WS_HANDSHAKE_PREFIXES)}
        try:
            async for message in stream:
                self.counts.wsMessages += 1
                body = message.encode("utf-8") if isinstance(message, str) else bytes(message)
                try:
                    with tracing.span(tracing.QUEUE_STORE, kind=SpanKind.PRODUCER, context=tracing.extract(stream.headers)):
                        await self._store(kind="websocket", method="MESSAGE", path=path or "/", query=url.query, headers=headers,
                                          body=body, trace_headers=tracing.carry(stream.headers))
                except Exception:
                    await stream.close(1011, "the bridge could not store the message")
                    return
        except Exception as exc:  # the sender went away abruptly: nothing to acknowledge
            log.info("%s: WebSocket stream %s ended: %s", self.connection, stream.id, _error_text(exc))
        finally:
            await stream.close()


async def run_window(settings: Settings, connection: str, seconds: float, *, window_id: str | None = None) -> WindowCounts:
    """Listen on ``connection`` for ``seconds``; store what arrives; return the counts (never raises)."""
    counts = WindowCounts(connection=connection, windowId=window_id or str(uuid.uuid4()), startedAt=fanin.utc_now_text())
    window = _Window(settings, connection, counts)
    started = time.monotonic()

    def went_online() -> None:
        counts.online = True

    listener = HybridConnectionListener(
        settings.relay_address(connection),
        get_credential(settings.relay_client_id),
        connection_verify=settings.connection_verify,
        request_handler=window.on_request,
        on_online=went_online,
    )
    streams: set[asyncio.Task] = set()

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
    counts.seconds = round(time.monotonic() - started, 3)
    counts.endedAt = fanin.utc_now_text()
    return counts


def report_blob_name(connection: str, window_id: str) -> str:
    return f"{REPORT_PREFIX}/{connection}/{window_id}.json"


async def write_report(settings: Settings, counts: WindowCounts) -> None:
    """Persist a window's counts for the generation that could not await it."""
    container = await storage.container(settings.claim_check_container)
    await container.upload_blob(report_blob_name(counts.connection, counts.windowId), json.dumps(counts.to_json()), overwrite=True)


async def collect_reports(settings: Settings, connection: str, window_ids: list[str]) -> dict:
    """Read and delete the report blobs of ``window_ids``: ``{"reports": {id: counts}, "missing": [ids]}``."""
    container = await storage.container(settings.claim_check_container)
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
