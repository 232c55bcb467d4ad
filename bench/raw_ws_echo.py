"""Worker: the floor under every comparison, a raw loopback `websockets` echo with no relay in between.

Usage: python -m bench.raw_ws_echo SECONDS SIZE [--uvloop]
"""

from __future__ import annotations

import asyncio
import sys
import time

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from .stats import emit, summary


async def main(seconds: float, size: int) -> None:
    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            payload = b"x" * size
            for _ in range(200):
                await ws.send(payload)
                await ws.recv()
            latencies: list[float] = []
            cpu0, start = time.process_time(), time.perf_counter()
            now, deadline = start, start + seconds
            while now < deadline:
                await ws.send(payload)
                await ws.recv()
                after = time.perf_counter()
                latencies.append(after - now)
                now = after
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    emit(summary(latencies, elapsed, cpu, client="raw python websockets"))


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.install()
    asyncio.run(main(float(sys.argv[1]), int(sys.argv[2])))
