"""Queue send: ``relay-outbound`` (connection ``BridgeStorage``) → the on-premises listener.

The trigger only translates the host's QueueMessage; the delivery and poison policy is in
:mod:`bridge.outbound`. Raising (transient failures, configuration errors) makes the host retry
and, after host.json ``maxDequeueCount``, move the raw message to ``relay-outbound-poison``; the
app's own failure records (with the reason) go to ``relay-outbound-failed``.
"""

from __future__ import annotations

import logging

import azure.functions as func

from .outbound import process_outbound
from .settings import OUTBOUND_QUEUE, STORAGE_CONNECTION, get_settings

log = logging.getLogger("bridge.queue_send")

bp = func.Blueprint()


@bp.queue_trigger(arg_name="msg", queue_name=OUTBOUND_QUEUE, connection=STORAGE_CONNECTION)
async def relay_queue_send(msg: func.QueueMessage) -> None:
    """Deliver one outbound message; raise to retry, return after delivery or after poisoning it."""
    settings = get_settings()  # a SettingsError raises: retried, then poisoned by the host
    outcome = await process_outbound(
        settings, msg.get_body(), message_id=msg.id or "", dequeue_count=getattr(msg, "dequeue_count", None)
    )
    log.info("message %s: %s %s", msg.id, outcome.result, outcome.status or outcome.error or "")
