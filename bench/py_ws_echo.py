"""Worker: this library's listener echoes; this library's sender does sequential 1 KB round trips.

Usage: python -m bench.py_ws_echo ADDRESS KEY_NAME KEY CA_FILE SECONDS SIZE
Prints one JSON line (see bench.stats.summary), after ``{"mark": "start"}`` / ``{"mark": "stop"}`` around
the measured interval. CPU covers listener and sender, both in this process.
"""

from __future__ import annotations

import asyncio
import sys
import time

from azure.core.credentials import AzureNamedKeyCredential

from relay import HybridConnectionClient, HybridConnectionListener

from .stats import emit, summary


async def echo(listener: HybridConnectionListener) -> None:
    async for stream in listener:
        asyncio.create_task(_echo_stream(stream))


async def _echo_stream(stream) -> None:
    try:
        async for message in stream:
            await stream.send(message)
    except Exception:  # the sender closing ends the loop either way
        pass


async def main(address: str, key_name: str, key: str, ca: str, seconds: float, size: int) -> None:
    credential = AzureNamedKeyCredential(key_name, key)
    payload = b"x" * size
    async with HybridConnectionListener(address, credential, connection_verify=ca) as listener:
        server = asyncio.create_task(echo(listener))
        async with HybridConnectionClient(address, credential, connection_verify=ca) as client:
            stream = await client.connect()
            for _ in range(200):  # warm-up
                await stream.send(payload)
                await stream.receive()
            latencies: list[float] = []
            emit({"mark": "start"})  # the runner samples the emulator's CPU here and at "stop"
            cpu0, start = time.process_time(), time.perf_counter()
            deadline = start + seconds
            now = start
            while now < deadline:
                await stream.send(payload)
                reply = await stream.receive()
                after = time.perf_counter()
                latencies.append(after - now)
                now = after
                if len(reply) != size:
                    raise RuntimeError(f"echo returned {len(reply)} bytes, expected {size}")
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
            emit({"mark": "stop"})
            await stream.close()
        server.cancel()
    emit(summary(latencies, elapsed, cpu, client="python relay", loop=type(asyncio.get_running_loop()).__module__))


if __name__ == "__main__":
    address, key_name, key, ca, seconds, size = sys.argv[1:7]
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.install()
    asyncio.run(main(address, key_name, key, ca, float(seconds), int(size)))
