"""Storing received messages: one queue message each, or a blob plus a reference (claim-check).

The inbound message format (JSON, base64-encoded on the queue like the queue trigger expects)::

    {"id": "…",                 # unique per message (the Relay request id, or a UUID for WebSocket messages)
     "kind": "http" | "websocket",
     "connection": "inbound",   # hybrid connection it came through
     "method": "POST",          # HTTP method; "MESSAGE" for WebSocket messages
     "path": "/orders/7",       # relative to the hybrid connection
     "query": "a=1",            # raw query string ("" if none)
     "headers": {…},            # request (or WebSocket connect) headers, credentials removed
     "receivedAt": "2026-11-29T10:00:00.000000Z",
     "traceparent": "00-…-…-01",  # W3C trace context of the sender's request or WebSocket, when it had one
     "body": "text"             # UTF-8 bodies
     | "bodyBase64": "…"        # other bodies
     | "claimCheck": {"container": "relay-claimcheck", "blob": "inbound/2026/11/29/<id>",
                      "size": 102400, "sha256": "<hex>"}}   # when the message would exceed the queue limit

Queue messages are limited to 64 KiB *after* base64, so the decision is made on the encoded
size of the whole message (about 48 KiB of raw JSON).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone

from relay import tracing

from . import storage

QUEUE_MESSAGE_LIMIT = 64 * 1024
"""Largest queue message, counted after base64 encoding (what the service measures)."""


def utc_now_text(now: datetime | None = None) -> str:
    return (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def inbound_message(
    *, id: str, kind: str, connection: str, method: str, path: str, query: str, headers: dict[str, str], received_at: str,
) -> dict:
    """The message envelope without its body (see the module docs for the format)."""
    return {
        "id": id, "kind": kind, "connection": connection, "method": method, "path": path, "query": query,
        "headers": headers, "receivedAt": received_at,
    }


def with_body(message: dict, body: bytes) -> dict:
    """``message`` plus ``body`` (UTF-8 text) or ``bodyBase64`` (anything else)."""
    try:
        return {**message, "body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {**message, "bodyBase64": base64.b64encode(body).decode("ascii")}


def encoded_size(text: str) -> int:
    """Size of ``text`` on the queue after UTF-8 and base64 encoding."""
    raw = len(text.encode("utf-8"))
    return 4 * ((raw + 2) // 3)


def decode_body(message: dict) -> bytes | None:
    """The body bytes of an inline inbound message (``None`` for a claim-check reference)."""
    if "body" in message:
        return message["body"].encode("utf-8")
    if "bodyBase64" in message:
        return base64.b64decode(message["bodyBase64"])
    return None


@dataclass(frozen=True)
class Stored:
    """Where a message went."""

    queue: str
    claim_checked: bool
    blob: str | None = None


def claim_check_blob_name(message: dict) -> str:
    day = message["receivedAt"][:10].replace("-", "/")
    return f"{message['connection']}/{day}/{message['id']}"


async def store(message: dict, body: bytes, *, queue: str, container: str, content_type: str | None = None) -> Stored:
    """Store one received message durably; returns only after storage acknowledged it.

    Raises whatever the storage client raises (the caller answers 503 then).
    """
    inline = json.dumps(with_body(message, body), separators=(",", ":"), ensure_ascii=False)
    queue_client = await storage.queue(queue)
    if encoded_size(inline) <= QUEUE_MESSAGE_LIMIT:
        await queue_client.send_message(inline, time_to_live=-1, client_request_id=storage.client_request_id())
        return Stored(queue, False)
    from azure.storage.blob import ContentSettings  # on first use: the blob SDK is a large import

    blob_name = claim_check_blob_name(message)
    container_client = await storage.container(container)
    with tracing.span(tracing.CLAIM_CHECK_UPLOAD, attributes={"relay.claim_check.blob": blob_name, "relay.claim_check.size": len(body)}):
        await container_client.upload_blob(
            blob_name, body, overwrite=True,
            content_settings=ContentSettings(content_type=content_type or "application/octet-stream"),
            metadata={"connection": message["connection"].replace("/", "_"), "messageid": message["id"]},
            client_request_id=storage.client_request_id(),
        )
    reference = {
        **message,
        "claimCheck": {"container": container, "blob": blob_name, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()},
    }
    await queue_client.send_message(json.dumps(reference, separators=(",", ":"), ensure_ascii=False), time_to_live=-1,
                                    client_request_id=storage.client_request_id())
    return Stored(queue, True, blob_name)
