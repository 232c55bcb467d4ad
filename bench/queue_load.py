"""Workers: Azurite's raw rates with the storage SDK the app and devhost use (azure-storage-queue, async).

*Enqueue* is the yardstick for inbound fan-in: the same client options as :mod:`bridge.storage`
(base64 encoding, like the app), the same message (an inbound envelope built by :mod:`bridge.fanin`
around a SIZE-byte body) and the same concurrency, with no Relay in front.

*Drain* is Azurite's ceiling for the queue-driven sends: COUNT envelopes like the bench's
``relay-outbound`` ones are put on QUEUE first (not timed), then drained exactly as devhost's
queue listener drains them with a function that does nothing: one Get Messages request for up to
BATCH messages (leased), the next fetch once no more than THRESHOLD are in flight (host.json
``batchSize`` / ``newBatchThreshold``), one delete per message as soon as it is "processed". The
rate is counted like the drain's (first to last arrival): from the first fetched message to the
last delete. No relay and no app,
so the drain can reach this rate at best; the difference is the app's and the relay's share.

    python -m bench.queue_load CONNECTION_STRING QUEUE SIZE CONCURRENCY SECONDS
    python -m bench.queue_load --drain CONNECTION_STRING QUEUE SIZE BATCH THRESHOLD COUNT
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from bridge import fanin, storage

from .stats import emit, summary

WARMUP = 50


def sample_message(size: int) -> str:
    """An inbound message as the listener stores it (JSON, compact), around a ``size``-byte body."""
    message = fanin.inbound_message(
        id=str(uuid.uuid4()), kind="http", connection="bridge-in", method="POST", path="/fanin", query="",
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)}, received_at=fanin.utc_now_text(),
    )
    return json.dumps(fanin.with_body(message, b"x" * size), separators=(",", ":"), ensure_ascii=False)


async def main(connection_string: str, queue_name: str, size: int, concurrency: int, seconds: float) -> None:
    text = sample_message(size)
    latencies: list[float] = []
    errors = 0
    async with QueueClient.from_connection_string(
        connection_string, queue_name, message_encode_policy=TextBase64EncodePolicy(), **storage.client_options()
    ) as queue:
        try:
            await queue.create_queue()
        except ResourceExistsError:
            pass

        async def one() -> float:
            t0 = time.perf_counter()
            await queue.send_message(text, time_to_live=-1)
            return time.perf_counter() - t0

        for _ in range(WARMUP):
            await one()
        emit({"mark": "start"})
        cpu0, start = time.process_time(), time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                try:
                    latencies.append(await one())
                except Exception as exc:
                    errors += 1
                    if errors == 1:
                        print(f"first error: {exc}", file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        emit({"mark": "stop"})
    emit(summary(latencies, elapsed, cpu, concurrency=concurrency, errors=errors, warmup=WARMUP, message_bytes=len(text)))


def outbound_envelope(number: int, size: int) -> str:
    """A ``relay-outbound`` envelope as the bench's queue_send figure puts it on the queue."""
    return json.dumps({"connection": "bridge-out", "path": f"/queue/{number}", "body": "x" * size})


async def drain(connection_string: str, queue_name: str, size: int, batch: int, threshold: int, count: int) -> None:
    lease = 600  # devhost.queues.LEASE_SECONDS: messages stay invisible while "processed"
    latencies: list[float] = []
    errors = 0
    async with QueueClient.from_connection_string(
        connection_string, queue_name, message_encode_policy=TextBase64EncodePolicy(),
        message_decode_policy=TextBase64DecodePolicy(), **storage.client_options(),
    ) as queue:
        try:
            await queue.create_queue()
        except ResourceExistsError:
            pass
        pending = list(range(count))

        async def fill() -> None:
            while pending:
                await queue.send_message(outbound_envelope(pending.pop(), size))

        await asyncio.gather(*(fill() for _ in range(16)))
        in_flight: set[asyncio.Task] = set()

        async def settle(message) -> None:
            nonlocal errors, last
            t0 = time.perf_counter()
            try:
                await queue.delete_message(message.id, message.pop_receipt)
                last = time.perf_counter()
                latencies.append(last - t0)
            except Exception as exc:
                errors += 1
                if errors == 1:
                    print(f"first error: {exc}", file=sys.stderr)

        emit({"mark": "start"})
        cpu0, start = time.process_time(), time.perf_counter()
        fetched = fetches = 0
        first = last = 0.0
        while fetched < count:
            if len(in_flight) > threshold:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            fetches += 1
            async for page in queue.receive_messages(messages_per_page=batch, max_messages=batch,
                                                     visibility_timeout=lease).by_page():
                messages = [message async for message in page]
                break
            else:
                messages = []
            if not messages:
                break  # nothing visible: every message was fetched
            fetched += len(messages)
            first = first or time.perf_counter()
            for message in messages:
                json.loads(message.content)  # what the function would parse first
                task = asyncio.create_task(settle(message))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        emit({"mark": "stop"})
    result = summary(latencies, elapsed, cpu, messages=count, fetched=fetched, fetches=fetches, batch=batch,
                 threshold=threshold, concurrency=batch, errors=errors, lost=count - len(latencies),
                     sender_cpu_us_per_request=round(cpu / len(latencies) * 1e6, 1) if latencies else None)
    # Like the drain figure (first to last arrival): from the first fetched message to the last delete.
    span = last - first
    result["per_second"] = round((len(latencies) - 1) / span, 1) if span > 0 and len(latencies) > 1 else None
    emit(result)


if __name__ == "__main__":
    if sys.argv[1] == "--drain":
        conn, queue_name, size, batch, threshold, count = sys.argv[2:8]
        asyncio.run(drain(conn, queue_name, int(size), int(batch), int(threshold), int(count)))
    else:
        conn, queue_name, size, concurrency, seconds = sys.argv[1:6]
        asyncio.run(main(conn, queue_name, int(size), int(concurrency), float(seconds)))
