"""Latency/throughput summaries shared by the Python bench workers (the Node workers compute the same fields)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Awaitable, Callable


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def summary(latencies_s: list[float], elapsed_s: float, cpu_s: float, **extra) -> dict:
    """``{count, seconds, per_second, p50_ms, p99_ms, cpu_us_per_message}`` plus ``extra``."""
    values = sorted(latencies_s)
    count = len(values)
    return {
        "count": count,
        "seconds": round(elapsed_s, 3),
        "per_second": round(count / elapsed_s, 1) if elapsed_s else 0.0,
        "p50_ms": round(percentile(values, 0.50) * 1000, 3),
        "p99_ms": round(percentile(values, 0.99) * 1000, 3),
        "cpu_us_per_message": round(cpu_s / count * 1e6, 1) if count else None,
        **extra,
    }


def emit(result: dict) -> None:
    """Workers print exactly one JSON line on stdout; the runner reads it."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


async def sender_load(one: Callable[[int | str | None], Awaitable[float]], *, concurrency: int, warmup: int,
                      seconds: float | None = None, count: int | None = None) -> None:
    """Drive ``one`` (an async request returning its latency in seconds) and emit the sender's summary.

    ``warmup`` requests first, at the measured concurrency, so every connection is open before the
    clock starts (``one("warmup")``); then ``{"mark": "start"}``, requests until ``seconds`` have passed
    (``one(None)``) or exactly ``count`` requests shared by the workers (``one(0)`` ... ``one(count-1)``),
    ``{"mark": "stop"}``, and one summary line with ``sender_cpu_us_per_request`` and ``warmup``.
    Failed requests are counted (``errors``); the first one is reported on stderr.
    """
    latencies: list[float] = []
    errors = 0
    left = [warmup]

    async def warm() -> None:
        while left[0] > 0:
            left[0] -= 1
            await one("warmup")

    await asyncio.gather(*(warm() for _ in range(concurrency)))
    emit({"mark": "start"})
    cpu0, start = time.process_time(), time.perf_counter()
    deadline = start + (seconds or 0.0)
    remaining = list(range(count or 0))[::-1]

    async def worker() -> None:
        nonlocal errors
        while remaining if count else time.perf_counter() < deadline:
            try:
                latencies.append(await one(remaining.pop() if count else None))
            except Exception as exc:  # counted, and the first one is reported
                errors += 1
                if errors == 1:
                    print(f"first error: {type(exc).__name__}: {exc}", file=sys.stderr)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    emit({"mark": "stop"})
    result = summary(latencies, elapsed, cpu, concurrency=concurrency, errors=errors, warmup=warmup)
    result["sender_cpu_us_per_request"] = result.pop("cpu_us_per_message")
    emit(result)
