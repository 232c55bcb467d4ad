"""Worker: the direct path, this library's ``HybridConnectionClient.request()`` in a loop.

The bridge figures compare the Functions app against it: same listener, same body, same
concurrency, no Functions host in between.

    python -m bench.relay_request_load ADDRESS KEY_NAME KEY CA_FILE SIZE CONCURRENCY
        (--seconds S | --count N) [--path /direct] [--warmup 50]

``--seconds``: time-bounded, like bench.http_load (marks around the measured interval).
``--count``: exactly N requests shared by the workers (the queue-drain comparison), numbered
in the path (``/direct/0`` ...) so the service can see each arrive once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from azure.core.credentials import AzureNamedKeyCredential

from relay import HybridConnectionClient

from .stats import emit, summary


async def main(args: argparse.Namespace) -> None:
    payload = b"x" * args.size
    headers = {"Content-Type": "application/octet-stream"}
    credential = AzureNamedKeyCredential(args.key_name, args.key)
    latencies: list[float] = []
    errors = 0
    async with HybridConnectionClient(args.address, credential, connection_verify=args.ca) as client:
        async def one(path: str) -> float:
            t0 = time.perf_counter()
            response = await client.request("POST", path, body=payload, headers=headers)
            body = await response.read()
            if response.status != 200 or len(body) != args.size:
                raise RuntimeError(f"{response.status} {response.reason} ({len(body)} bytes)")
            return time.perf_counter() - t0

        warmup = [args.warmup]

        async def warm() -> None:  # at the measured concurrency, so every connection is open before the clock starts
            while warmup[0] > 0:
                warmup[0] -= 1
                await one(f"{args.path}/warmup")

        await asyncio.gather(*(warm() for _ in range(args.concurrency)))
        emit({"mark": "start"})
        cpu0, start = time.process_time(), time.perf_counter()
        deadline = start + (args.seconds or 0.0)
        remaining = list(range(args.count or 0))
        remaining.reverse()

        async def worker() -> None:
            nonlocal errors
            while (remaining if args.count else time.perf_counter() < deadline):
                path = f"{args.path}/{remaining.pop()}" if args.count else args.path
                try:
                    latencies.append(await one(path))
                except Exception as exc:  # counted, and the first one is reported
                    errors += 1
                    if errors == 1:
                        print(f"first error: {type(exc).__name__}: {exc}", file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        emit({"mark": "stop"})
    result = summary(latencies, elapsed, cpu, concurrency=args.concurrency, errors=errors, warmup=args.warmup)
    result["sender_cpu_us_per_request"] = result.pop("cpu_us_per_message")
    emit(result)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_request_load")
    for name in ("address", "key_name", "key", "ca"):
        parser.add_argument(name)
    parser.add_argument("size", type=int)
    parser.add_argument("concurrency", type=int)
    bound = parser.add_mutually_exclusive_group(required=True)
    bound.add_argument("--seconds", type=float)
    bound.add_argument("--count", type=int)
    parser.add_argument("--path", default="/direct")
    parser.add_argument("--warmup", type=int, default=50)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
