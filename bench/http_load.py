"""Worker: the HTTP sender used for every listener, so listeners are compared under identical load.

A plain aiohttp client posting 1 KB bodies to the emulator's HTTPS endpoint with a SAS
token in ServiceBusAuthorization (what the hyco-https samples do), at a given concurrency.
Usage: python -m bench.http_load URL TOKEN CA_FILE SECONDS SIZE CONCURRENCY
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import time

import aiohttp

from .stats import emit, summary


async def main(url: str, token: str, ca: str, seconds: float, size: int, concurrency: int) -> None:
    payload = b"x" * size
    headers = {"ServiceBusAuthorization": token, "Content-Type": "application/octet-stream"}
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=ca), limit=concurrency)
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> float:
            t0 = time.perf_counter()
            async with session.post(url, data=payload, headers=headers) as response:
                body = await response.read()
                if response.status != 200 or len(body) != size:
                    raise RuntimeError(f"{response.status} {response.reason} ({len(body)} bytes)")
            return time.perf_counter() - t0

        for _ in range(100):  # warm-up
            await one()
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                try:
                    latencies.append(await one())
                except Exception as exc:  # counted, and the first one is reported
                    errors += 1
                    if errors == 1:
                        print(f"first error: {exc}", file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    emit(summary(latencies, elapsed, 0.0, concurrency=concurrency, errors=errors))


if __name__ == "__main__":
    url, token, ca, seconds, size, concurrency = sys.argv[1:7]
    asyncio.run(main(url, token, ca, float(seconds), int(size), int(concurrency)))
