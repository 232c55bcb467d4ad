"""Latency/throughput summaries shared by the Python bench workers (the Node workers compute the same fields)."""

from __future__ import annotations

import json
import sys


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
