"""The on-premises agent's idle memory and its forwarding overhead.

    .venv/bin/python -m bench.agent_overhead [--requests 300] [--rounds 3]

Starts the emulator, a small aiohttp service on 127.0.0.1, and ``python -m relay agent`` with two
connections (the layout of tests/agent). It then measures, in interleaved rounds of sequential
1 KiB GET requests:

* ``direct``: client → local service (no Relay at all);
* ``relay_inprocess``: client → emulator → a listener in this process that answers the same
  bytes itself (the cost of the relay path alone);
* ``relay_agent``: client → emulator → agent → local service.

It prints one JSON line: the p50/p99 of each, the p50 the agent adds over calling the service
directly (``added_vs_direct_ms``) and over a listener that answers in process
(``agent_forward_ms``, the agent's own share), and the agent's RSS when idle (connected, no
traffic) and after the load. Numbers depend on the machine; run it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.stats import percentile
from emulator.launcher import start_emulator
from relay import AzureNamedKeyCredential, HybridConnectionClient, HybridConnectionListener, RelayedHttpResponse

REPO_ROOT = Path(__file__).resolve().parent.parent
ROOT_RULE = "RootManageSharedAccessKey"
PAYLOAD = b"x" * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


async def local_service() -> tuple[web.AppRunner, int]:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=PAYLOAD, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


async def timed(n: int, call) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        out.append(time.perf_counter() - start)
    return out


async def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300, help="sequential requests per path per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    async with start_emulator() as emu:
        runner, port = await local_service()
        key = AzureNamedKeyCredential(ROOT_RULE, emu.sas_key(ROOT_RULE))
        cs = emu.connection_string(ROOT_RULE, "orders") + f";UseDevelopmentEmulator=true;TrustedCaFile={emu.ca_cert}"
        cs_echo = emu.connection_string(ROOT_RULE, "echo") + f";UseDevelopmentEmulator=true;TrustedCaFile={emu.ca_cert}"
        tmp = Path(tempfile.mkdtemp(prefix="agent-bench-"))
        connections = "".join(f"""
[[connections]]
name = "{name}"
target = "http://127.0.0.1:{port}"
[connections.credential]
type = "connection_string"
connection_string_env = "{var}"
""" for name, var in (("orders", "BENCH_ORDERS_CS"), ("echo", "BENCH_ECHO_CS")))
        (tmp / "agent.toml").write_text('[health]\nenabled = true\nport = 0\n' + connections)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "agent", "--config", str(tmp / "agent.toml"), "--log-format", "json",
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "BENCH_ORDERS_CS": cs, "BENCH_ECHO_CS": cs_echo},
            cwd=str(REPO_ROOT),
        )
        health = None
        while health is None:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            if not line:
                raise SystemExit("the agent exited")
            record = json.loads(line)
            if record.get("event") == "health_listening":
                health = record["url"]
        asyncio.ensure_future(_drain(proc.stderr, os.environ.get("BENCH_AGENT_LOG")))
        async with aiohttp.ClientSession() as session:
            while True:
                async with session.get(health + "/readyz") as resp:
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)
            idle_rss = rss_kib(proc.pid)

            async def in_process(request):
                return RelayedHttpResponse(200, {"Content-Type": "application/octet-stream"}, PAYLOAD)

            results: dict[str, list[float]] = {"direct": [], "relay_inprocess": [], "relay_agent": []}
            listener = HybridConnectionListener(emu.address("inbound"), key, connection_verify=emu.ca_cert,
                                                request_handler=in_process)
            async with listener, \
                    HybridConnectionClient(emu.address("orders"), key, connection_verify=emu.ca_cert) as via_agent, \
                    HybridConnectionClient(emu.address("inbound"), key, connection_verify=emu.ca_cert) as via_inproc:
                async def direct():
                    async with session.get(f"http://127.0.0.1:{port}/x") as r:
                        await r.read()

                async def agent_call():
                    async with await via_agent.request("GET", "/x") as r:
                        assert r.status == 200
                        await r.read()

                async def inproc_call():
                    async with await via_inproc.request("GET", "/x") as r:
                        assert r.status == 200
                        await r.read()

                for call in (direct, agent_call, inproc_call):  # warm up connections and token caches
                    await timed(20, call)
                for _ in range(args.rounds):
                    results["direct"] += await timed(args.requests, direct)
                    results["relay_inprocess"] += await timed(args.requests, inproc_call)
                    results["relay_agent"] += await timed(args.requests, agent_call)
            loaded_rss = rss_kib(proc.pid)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        await runner.cleanup()

    out: dict = {"requests_per_path": args.requests * args.rounds, "payload_bytes": len(PAYLOAD)}
    for name, values in results.items():
        values.sort()
        out[name] = {"p50_ms": round(percentile(values, 0.5) * 1000, 3), "p99_ms": round(percentile(values, 0.99) * 1000, 3),
                     "mean_ms": round(statistics.fmean(values) * 1000, 3)}
    out["added_vs_direct_ms"] = round(out["relay_agent"]["p50_ms"] - out["direct"]["p50_ms"], 3)
    out["agent_forward_ms"] = round(out["relay_agent"]["p50_ms"] - out["relay_inprocess"]["p50_ms"], 3)
    out["agent_idle_rss_mib"] = round(idle_rss / 1024, 1)
    out["agent_rss_after_load_mib"] = round(loaded_rss / 1024, 1)
    return out


async def _drain(stream: asyncio.StreamReader, path: str | None) -> None:
    """Read the agent's log (so it never blocks on a full pipe); keep it in ``path`` when given."""
    out = open(path, "wb") if path else None
    try:
        while line := await stream.readline():
            if out:
                out.write(line)
    finally:
        if out:
            out.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
