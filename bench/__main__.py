"""Run every benchmark side by side against one emulator; write bench/results/latest.{json,png}.

    make bench                       # or: .venv/bin/python -m bench [--seconds 5] [--size 1024]

Each client runs in its own process, one after another (the machine has two cores, and the
emulator needs one of them), so the Python and Node numbers come from the same emulator,
the same machine and the same minutes; rounds are interleaved and each figure is the median
round. The emulator bounds every relayed figure: the raw
loopback echoes show the floor without it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import secrets
import sys
import time
import uuid
from pathlib import Path

from emulator.launcher import start_emulator
from relay.sas import generate_sas_token

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PY = sys.executable


def bench_config() -> dict:
    principal = str(uuid.uuid4())
    subscription, group = str(uuid.uuid4()), "bench-rg"
    return {
        "namespace": "bench",
        "tenantId": str(uuid.uuid4()),
        "subscriptionId": subscription,
        "resourceGroup": group,
        "hybridConnections": [
            {"name": name, "requiresClientAuthorization": True}
            for name in ("ws-python", "ws-python-uvloop", "ws-node", "http-python", "http-python-uvloop", "http-node", "tokens")
        ],
        "sasRules": [{"name": "bench", "key": base64.b64encode(secrets.token_bytes(32)).decode(), "rights": ["Manage", "Listen", "Send"], "entity": None}],
        "identities": [{"name": "bench", "clientId": str(uuid.uuid4()), "principalId": principal, "systemAssigned": True}],
        "roleAssignments": [
            {
                "principalId": principal,
                "role": "Azure Relay Owner",
                "scope": f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Relay/namespaces/bench",
            }
        ],
        "tokenLifetimeSeconds": 3600,
    }


async def run_json(*cmd: str, env: dict | None = None, timeout: float = 120) -> dict:
    """Run a worker and parse the last JSON line it prints."""
    process = await asyncio.create_subprocess_exec(
        *cmd, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({process.returncode}): {err.decode()[-2000:]}")
    return json.loads(lines[-1])


def median_run(runs: list[dict], key=lambda run: run["per_second"]) -> dict:
    """The run with the median throughput (runs are interleaved, so drift hits every client alike)."""
    ordered = sorted(runs, key=key)
    chosen = dict(ordered[len(ordered) // 2])
    chosen["runs"] = [round(key(run), 1) for run in runs]
    return chosen


async def http_listener_run(emu, listener_cmd: list[str], entity: str, args, env: dict) -> dict:
    """Start a listener worker, load it with the shared sender at concurrency 1 and N, report listener CPU."""
    rule = emu.config["sasRules"][0]
    process = await asyncio.create_subprocess_exec(
        *listener_cmd, cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    ready = await asyncio.wait_for(process.stdout.readline(), 30)
    if b"ready" not in ready:
        raise RuntimeError(f"listener {listener_cmd[:3]} did not come online")
    url = f"{emu.info['http']}/{entity}"
    token = generate_sas_token(f"http://{emu.config['namespace']}/{entity}", rule["name"], rule["key"])
    results = {}
    for concurrency in (1, args.concurrency):
        process.stdin.write(b"mark\n")
        await process.stdin.drain()
        load = await run_json(
            PY, "-m", "bench.http_load", url, token, emu.info["ca_cert"], str(args.seconds), str(args.size), str(concurrency)
        )
        process.stdin.write(b"stop\n" if concurrency == args.concurrency else b"mark\n")
        await process.stdin.drain()
        if concurrency == args.concurrency:
            cpu = json.loads(await asyncio.wait_for(process.stdout.readline(), 10))
            load["listener_cpu_us_per_request"] = round(cpu["cpu_s"] / max(cpu["requests"], 1) * 1e6, 1)
        results[f"c{concurrency}"] = load
    await asyncio.wait_for(process.wait(), 10)
    return results


async def main(args) -> dict:
    config = bench_config()
    async with start_emulator(config) as emu:
        info = emu.info
        ca, rule = info["ca_cert"], config["sasRules"][0]
        node_env = dict(os.environ, NODE_EXTRA_CA_CERTS=ca, NODE_NO_WARNINGS="1")
        addr = emu.address
        sec, size = str(args.seconds), str(args.size)
        listener_args = [rule["name"], rule["key"], ca]
        common = [rule["name"], rule["key"], ca, sec, size]
        # name -> (group, coroutine factory); every round runs each once, in this order.
        plan = {
            "python websockets": ("raw", lambda: run_json(PY, "-m", "bench.raw_ws_echo", sec, size)),
            "python websockets + uvloop": ("raw", lambda: run_json(PY, "-m", "bench.raw_ws_echo", sec, size, "--uvloop")),
            "node ws": ("raw", lambda: run_json("node", "bench/raw_ws_echo.js", sec, size, env=node_env)),
            "python relay": ("ws_echo", lambda: run_json(PY, "-m", "bench.py_ws_echo", addr("ws-python"), *common)),
            "python relay + uvloop": ("ws_echo", lambda: run_json(
                PY, "-m", "bench.py_ws_echo", addr("ws-python-uvloop"), *common, "--uvloop")),
            "node hyco-ws": ("ws_echo", lambda: run_json(
                "node", "bench/node_ws_echo.js", info["relay"], "ws-node", rule["name"], rule["key"], sec, size, env=node_env)),
            "http python relay": ("http", lambda: http_listener_run(
                emu, [PY, "-m", "bench.py_http_listener", addr("http-python"), *listener_args], "http-python", args, None)),
            "http python relay + uvloop": ("http", lambda: http_listener_run(
                emu, [PY, "-m", "bench.py_http_listener", addr("http-python-uvloop"), *listener_args, "--uvloop"],
                "http-python-uvloop", args, None)),
            "http node hyco-https": ("http", lambda: http_listener_run(
                emu, ["node", "bench/node_http_listener.js", info["relay"], "http-node", rule["name"], rule["key"]],
                "http-node", args, node_env)),
        }
        runs: dict[str, list] = {name: [] for name in plan}
        for round_ in range(args.repeat):
            print(f"round {round_ + 1}/{args.repeat}: raw echo, WebSocket echo, HTTP ...", file=sys.stderr)
            for name, (_, factory) in plan.items():
                runs[name].append(await factory())
        results: dict = {"raw": {}, "ws_echo": {}, "http": {}}
        for name, (group, _) in plan.items():
            if group == "http":
                label = name.removeprefix("http ")
                picked = median_run(runs[name], key=lambda run: run[f"c{args.concurrency}"]["per_second"])
                picked["c1"] = median_run([run["c1"] for run in runs[name]])
                results[group][label] = picked
            else:
                results[group][name] = median_run(runs[name])
        print("token fetches per 10,000 sends ...", file=sys.stderr)
        before = await emu.tokens_issued()
        identity_env = dict(os.environ, IDENTITY_ENDPOINT=info["identity_endpoint"], IDENTITY_HEADER=info["identity_header"])
        tokens_run = await run_json(
            PY, "-m", "bench.token_fetches", addr("tokens"), rule["name"], rule["key"], ca, str(args.sends), "32",
            env=identity_env, timeout=300,
        )
        tokens_run["token_fetches"] = await emu.tokens_issued() - before
        results["tokens"] = tokens_run
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"seconds": args.seconds, "size": args.size, "concurrency": args.concurrency, "sends": args.sends,
                     "repeat": args.repeat},
        "results": results,
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--size", type=int, default=1024, help="message/body size in bytes (default 1024)")
    parser.add_argument("--concurrency", type=int, default=16, help="HTTP concurrency for the throughput run (default 16)")
    parser.add_argument("--sends", type=int, default=10_000, help="sends for the token-fetch count (default 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each figure is the median round (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args()
    report = asyncio.run(main(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    from .chart import markdown_table, render

    png = render(report, args.out.with_suffix(".png"))
    print(markdown_table(report))
    print(f"wrote {args.out} and {png}", file=sys.stderr)


if __name__ == "__main__":
    cli()
