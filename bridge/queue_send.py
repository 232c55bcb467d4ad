"""Queue send: ``relay-outbound`` (connection ``BridgeStorage``) → the on-premises listener.

The trigger only translates the host's QueueMessage; the delivery and poison policy is in
:mod:`bridge.outbound`. Raising (transient failures, configuration errors) makes the host retry
and, after host.json ``maxDequeueCount``, move the raw message to ``relay-outbound-poison``; the
app's own failure records (with the reason) go to ``relay-outbound-failed``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

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
    _outcomes.record(msg.id or "", f"{outcome.result} {outcome.status or outcome.error or ''}".rstrip())


class OutcomeLog:
    """Logs outcomes without a log record per message on a busy queue.

    The first message of each ``interval`` is logged in full at info (``message <id>: delivered
    200``); the others at debug, and counted. The counts are logged at info, as one summary line,
    with the next message logged in full. Poisoned messages also get their own warning with the
    reason (:mod:`bridge.outbound`). An info record per message was ~6 % of the app's CPU per
    queued message.
    """

    def __init__(self, interval: float = 1.0, clock=time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.since = 0.0
        self.next = 0.0

    def record(self, message_id: str, text: str) -> None:
        now = self.clock()
        if now < self.next:
            self.counts[text] += 1
            log.debug("message %s: %s", message_id, text)
            return
        if self.counts:
            summary = ", ".join(f"{count} {what}" for what, count in sorted(self.counts.items()))
            log.info("%s more message(s) in %.1f s: %s", sum(self.counts.values()), now - self.since, summary)
            self.counts.clear()
        log.info("message %s: %s", message_id, text)
        self.since, self.next = now, now + self.interval


_outcomes = OutcomeLog()
