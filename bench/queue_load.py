"""Worker: Azurite's raw enqueue rate with the storage SDK the app uses (azure-storage-queue, async).

The yardstick for inbound fan-in: the same client options as :mod:`bridge.storage` (base64
encoding, like the app), the same message (an inbound envelope built by :mod:`bridge.fanin`
around a SIZE-byte body) and the same concurrency, with no Relay in front.

    python -m bench.queue_load CONNECTION_STRING QUEUE SIZE CONCURRENCY SECONDS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from bridge import fanin

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
        connection_string, queue_name, message_encode_policy=TextBase64EncodePolicy()
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


if __name__ == "__main__":
    conn, queue_name, size, concurrency, seconds = sys.argv[1:6]
    asyncio.run(main(conn, queue_name, int(size), int(concurrency), float(seconds)))
