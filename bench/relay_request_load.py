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
import time

from azure.core.credentials import AzureNamedKeyCredential

from relay import HybridConnectionClient

from .stats import sender_load


async def main(args: argparse.Namespace) -> None:
    payload = b"x" * args.size
    headers = {"Content-Type": "application/octet-stream"}
    credential = AzureNamedKeyCredential(args.key_name, args.key)
    async with HybridConnectionClient(args.address, credential, connection_verify=args.ca) as client:
        async def one(key: int | str | None) -> float:  # "warmup", a request number (--count), or None (--seconds)
            path = args.path if key is None else f"{args.path}/{key}"
            t0 = time.perf_counter()
            response = await client.request("POST", path, body=payload, headers=headers)
            body = await response.read()
            if response.status != 200 or len(body) != args.size:
                raise RuntimeError(f"{response.status} {response.reason} ({len(body)} bytes)")
            return time.perf_counter() - t0

        await sender_load(one, concurrency=args.concurrency, warmup=args.warmup, seconds=args.seconds, count=args.count)


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
