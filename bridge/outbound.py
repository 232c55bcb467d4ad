"""The outbound queue (``relay-outbound``): deliver one message, or decide it is poison.

Policy (the queue function returns normally or raises, nothing is dropped silently):

* delivered: the listener answered 1xx-3xx → done.
* transient (retry): no listener, Relay/listener timeout, lost connection, the identity
  endpoint failing, or the listener answering 408/425/429/5xx → raise :class:`RetryLater`; the
  host makes the message visible again after ``visibilityTimeout``. On the last attempt
  (``maxDequeueCount``, 5) the bridge writes its failure record (with the reason) to
  ``relay-outbound-failed`` and returns, so the record says why.
* permanent (no retry): malformed envelope, connection not in RELAY_OUTBOUND_CONNECTIONS or not
  found by Relay, token refused, missing Sender role, payload too large, or another 4xx from the
  listener, a listener status outside 200-599 → a failure record is written at the first attempt
  and the function returns. Every parse or validation failure of an envelope is permanent.

A failure record is JSON on ``relay-outbound-failed`` (base64-encoded like every app message),
kept apart from the host's own ``relay-outbound-poison``, which holds the raw messages the host
moved after the function *raised* on every attempt (docs/app.md, "Replaying")::

    {"reason": "...", "error": "<code>", "id": "<envelope id, else the queue message id>", "connection": "orders" | null,
     "dequeue_count": 1, "time": "2026-11-29T10:00:00.000000Z",
     "message": "<original text>" | "messageBase64": "<original bytes>"}
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass

from opentelemetry.trace import SpanKind

from relay import tracing

from . import storage
from .envelope import EnvelopeError, parse_message
from .fanin import utc_now_text
from .sender import send_http, SendFailure, unknown_connection
from .settings import OUTBOUND_FAILED_QUEUE, Settings

log = logging.getLogger("bridge.outbound")

MAX_DEQUEUE_COUNT = 5
"""Mirrors host.json ``extensions.queues.maxDequeueCount`` (a test keeps them equal)."""
MAX_DEQUEUE_COUNT_SETTING = "AzureFunctionsJobHost__extensions__queues__maxDequeueCount"
"""The app setting with which the host overrides host.json's value; the bridge follows it too."""


_setting_name: tuple[int, str | None] | None = None
"""(size of os.environ when it was scanned, the spelling of the override setting found then or None)."""


def _override_name(environ) -> str | None:
    """The name under which ``environ`` holds the override setting (any case), or None."""
    wanted = MAX_DEQUEUE_COUNT_SETTING.lower()
    return next((name for name in environ if name.lower() == wanted), None)


def max_dequeue_count(environ=os.environ) -> int:
    """The host's maxDequeueCount: the overriding app setting if set (case-insensitive), else host.json's.

    Called per message. For ``os.environ`` the setting's spelling is looked up by a scan only when
    the environment gained or lost variables since the last scan (app settings change by a worker
    restart in Azure); the value itself is read on every call, so a changed value counts at once.
    """
    global _setting_name
    if environ is os.environ:
        if _setting_name is None or _setting_name[0] != len(environ):
            _setting_name = (len(environ), _override_name(environ))
        name = _setting_name[1]
    else:
        name = _override_name(environ)
    value = environ.get(name) if name is not None else None
    if value is not None:
        try:
            return max(1, int(value))
        except ValueError:
            pass
    return MAX_DEQUEUE_COUNT


TRANSIENT_LISTENER_STATUSES = frozenset({408, 425, 429})


class RetryLater(Exception):
    """A transient failure: raising it makes the host retry the message."""


@dataclass(frozen=True)
class Outcome:
    """What happened to a message: ``delivered`` or ``poisoned`` (with the reason)."""

    result: str
    status: int | None = None
    reason: str | None = None
    error: str | None = None


def poison_record(raw: bytes, *, reason: str, error: str, message_id: str, connection: str | None, dequeue_count: int) -> dict:
    record = {
        "reason": reason, "error": error, "id": message_id, "connection": connection,
        "dequeue_count": dequeue_count, "time": utc_now_text(),
    }
    try:
        record["message"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        record["messageBase64"] = base64.b64encode(raw).decode("ascii")
    return record


async def write_poison(record: dict) -> None:
    """Append ``record`` to ``relay-outbound-failed`` (base64, never expires). Raises on failure."""
    client = await storage.queue(OUTBOUND_FAILED_QUEUE)
    await client.send_message(json.dumps(record, separators=(",", ":"), ensure_ascii=False), time_to_live=-1,
                              client_request_id=storage.client_request_id())


async def process_outbound(settings: Settings, raw: bytes, *, message_id: str, dequeue_count: int | None) -> Outcome:
    """Deliver one ``relay-outbound`` message (see the module docs for the policy)."""
    attempt = dequeue_count or 1
    last_attempt = max_dequeue_count()
    connection: str | None = None
    record_id = message_id  # the envelope's id once parsed: the Idempotency-Key the listener would have seen

    async def poison(reason: str, error: str, status: int | None = None) -> Outcome:
        log.warning("message %s goes to %s: %s", message_id, OUTBOUND_FAILED_QUEUE, reason)
        await write_poison(poison_record(raw, reason=reason, error=error, message_id=record_id,
                                         connection=connection, dequeue_count=attempt))
        return Outcome("poisoned", status, reason, error)

    try:
        message = parse_message(raw, message_id=message_id, default_connection=settings.default_connection)
        connection, record_id = message.connection, message.id
        if connection not in settings.outbound_connections:  # only exact names in envelopes
            raise unknown_connection(settings, connection)
    except EnvelopeError as exc:
        return await poison(f"malformed envelope: {exc}", "malformed_envelope")
    except SendFailure as failure:
        return await poison(failure.message, failure.code)
    except (ValueError, TypeError, RecursionError) as exc:  # any other parse failure is as permanent
        return await poison(f"malformed envelope: {type(exc).__name__}: {exc}"[:500], "malformed_envelope")

    # The function invocation continues the envelope's "traceparent" header (docs/app.md, Tracing).
    with tracing.span(tracing.FUNCTION_INVOCATION, kind=SpanKind.CONSUMER, context=tracing.extract(message.headers),
                      attributes={"faas.trigger": "pubsub", "faas.name": "relay_queue_send", "messaging.message.id": message_id}):
        try:
            reply = await send_http(settings, connection, method=message.method, path=message.path, body=message.body, headers=message.headers)
        except SendFailure as failure:
            if failure.transient and attempt < last_attempt:
                raise RetryLater(f"attempt {attempt}/{last_attempt}: {failure.message}") from failure
            reason = failure.message if not failure.transient else f"gave up after {attempt} attempts: {failure.message}"
            return await poison(reason, failure.code)

        if reply.status < 400:
            return Outcome("delivered", reply.status)
        text = f"the listener on {connection!r} answered {reply.status} {reply.reason}".strip()
        snippet = reply.body[:200].decode("utf-8", "replace").strip()
        if snippet:
            text += f": {snippet}"
        if reply.status >= 500 or reply.status in TRANSIENT_LISTENER_STATUSES:
            if attempt < last_attempt:
                raise RetryLater(f"attempt {attempt}/{last_attempt}: {text}")
            return await poison(f"gave up after {attempt} attempts: {text}", "listener_error", reply.status)
        return await poison(text, "listener_rejected", reply.status)
