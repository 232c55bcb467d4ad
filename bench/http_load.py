"""Worker: the HTTP sender used for every listener, so listeners are compared under identical load.

A plain aiohttp client posting bodies of SIZE bytes at a given concurrency for SECONDS, after
``--warmup`` (default 100) warm-up requests. Relay figures: the emulator's HTTPS endpoint with a SAS token in
ServiceBusAuthorization (what the hyco-https samples do). Bridge figures: the Functions app's
``relay_send`` route with ``x-functions-key``, or the inbound hybrid connection (expects 202).

    python -m bench.http_load URL TOKEN CA_FILE SECONDS SIZE CONCURRENCY
        [--header NAME] [--status 200] [--any-body] [--warmup 100]

TOKEN goes into header NAME (default ServiceBusAuthorization); CA_FILE "-" means plain HTTP.
Prints ``{"mark": "start"}`` and ``{"mark": "stop"}`` around the measured interval (the runner
samples the emulator's CPU there), then one summary line with ``sender_cpu_us_per_request``
and ``warmup`` (requests sent before the measured interval, for counting what was stored).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import time

import aiohttp

from .stats import sender_load


async def main(args: argparse.Namespace) -> None:
    payload = b"x" * args.size
    headers = {args.header: args.token, "Content-Type": "application/octet-stream"}
    ssl_context = ssl.create_default_context(cafile=args.ca) if args.ca != "-" else None
    connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context else False, limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(_key: int | str | None) -> float:
            t0 = time.perf_counter()
            async with session.post(args.url, data=payload, headers=headers) as response:
                body = await response.read()
                if response.status != args.status or (not args.any_body and len(body) != args.size):
                    raise RuntimeError(f"{response.status} {response.reason} ({len(body)} bytes): {body[:200]!r}")
            return time.perf_counter() - t0

        await sender_load(one, concurrency=args.concurrency, warmup=args.warmup, seconds=args.seconds)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.http_load")
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("ca")
    parser.add_argument("seconds", type=float)
    parser.add_argument("size", type=int)
    parser.add_argument("concurrency", type=int)
    parser.add_argument("--header", default="ServiceBusAuthorization")
    parser.add_argument("--status", type=int, default=200, help="the status every answer must have")
    parser.add_argument("--warmup", type=int, default=100, help="requests before the measured interval (default 100)")
    parser.add_argument("--any-body", action="store_true", help="do not require the body to echo the request's size")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
