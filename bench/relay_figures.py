"""The relay figures: this library vs Microsoft's Node clients, side by side on one emulator.

Each client runs in its own process, one after another (the machine has two cores, and the
emulator needs one of them), so the Python and Node numbers come from the same emulator, the
same machine and the same minutes; rounds are interleaved and each figure is the median round.
Beside each client's CPU per message, the emulator's own CPU per relayed message is read from
/proc over the worker's measured interval (:mod:`bench.cpu`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import sys
import uuid

from relay.sas import generate_sas_token

from .cpu import CpuMeter
from .runner import PY, ROOT, median_run, run_worker

RELAY_GROUPS = ("raw", "ws_echo", "http", "tokens")
BRIDGE_OUT, BRIDGE_IN = "bridge-out", "bridge-in"


def bench_config() -> dict:
    """The emulator namespace of a bench run: one hybrid connection per client, one identity (Owner)."""
    principal = str(uuid.uuid4())
    subscription, group = str(uuid.uuid4()), "bench-rg"
    names = ("ws-python", "ws-python-uvloop", "ws-node", "http-python", "http-python-uvloop", "http-node", "tokens",
             BRIDGE_OUT, BRIDGE_IN)
    return {
        "namespace": "bench",
        "tenantId": str(uuid.uuid4()),
        "subscriptionId": subscription,
        "resourceGroup": group,
        "hybridConnections": [{"name": name, "requiresClientAuthorization": True} for name in names],
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


def emulator_pid(emu) -> int | None:
    """The emulator's process id (EmulatorProcess keeps its process private; see the report's hook request)."""
    process = getattr(emu, "_proc", None)
    return getattr(process, "pid", None)


def _meter_marks(meter: CpuMeter):
    def on_mark(name: str) -> None:
        if name == "start":
            meter.start()
        elif name == "stop":
            meter.stop()
    return on_mark


async def _listener_line(process) -> dict:
    while True:
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        if not line:
            raise RuntimeError("the listener worker exited before reporting its CPU")
        if line.startswith(b"{"):
            return json.loads(line)


async def http_listener_run(emu, listener_cmd: list[str], entity: str, args, env: dict | None) -> dict:
    """Start a listener worker, load it with the shared sender at concurrency 1 and N.

    Per concurrency: the sender's figures (rate, latency, sender CPU per request), the
    listener's CPU per request (its own count, warm-up included) and the emulator's CPU per
    request over the sender's measured interval.
    """
    rule = emu.config["sasRules"][0]
    process = await asyncio.create_subprocess_exec(
        *listener_cmd, cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        ready = await asyncio.wait_for(process.stdout.readline(), 30)
        if b"ready" not in ready:
            raise RuntimeError(f"listener {listener_cmd[:3]} did not come online")
        url = f"{emu.info['http']}/{entity}"
        token = generate_sas_token(f"http://127.0.0.1:{emu.port}/{entity}", rule["name"], rule["key"])
        meter = CpuMeter(emulator_pid(emu))
        results = {}
        for concurrency in (1, args.concurrency):
            process.stdin.write(b"mark\n")
            await process.stdin.drain()
            load = await run_worker(
                PY, "-m", "bench.http_load", url, token, emu.info["ca_cert"], str(args.seconds), str(args.size),
                str(concurrency), "--warmup", "20" if args.quick else "100", on_mark=_meter_marks(meter),
            )
            process.stdin.write(b"report\n")
            await process.stdin.drain()
            cpu = await _listener_line(process)
            load["listener_cpu_us_per_request"] = round(cpu["cpu_s"] / max(cpu["requests"], 1) * 1e6, 1)
            load["emulator_cpu_us_per_message"] = meter.per_message_us(load["count"])
            results[f"c{concurrency}"] = load
        process.stdin.write(b"stop\n")
        await process.stdin.drain()
        await asyncio.wait_for(process.wait(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return results


async def echo_run(emu, *cmd: str, env: dict | None = None) -> dict:
    """A WebSocket echo worker, with the emulator's CPU per round trip over its measured interval."""
    meter = CpuMeter(emulator_pid(emu))
    result = await run_worker(*cmd, env=env, on_mark=_meter_marks(meter))
    result["emulator_cpu_us_per_message"] = meter.per_message_us(result["count"])
    return result


def relay_plan(emu, args, groups: set[str]) -> dict:
    """name -> (group, coroutine factory); every round runs each once, in this order."""
    info = emu.info
    ca, rule = info["ca_cert"], emu.config["sasRules"][0]
    node_env = dict(os.environ, NODE_EXTRA_CA_CERTS=ca, NODE_NO_WARNINGS="1")
    addr = emu.address
    sec, size = str(args.seconds), str(args.size)
    listener_args = [rule["name"], rule["key"], ca]
    common = [rule["name"], rule["key"], ca, sec, size]
    plan = {
        "python websockets": ("raw", lambda: run_worker(PY, "-m", "bench.raw_ws_echo", sec, size)),
        "python websockets + uvloop": ("raw", lambda: run_worker(PY, "-m", "bench.raw_ws_echo", sec, size, "--uvloop")),
        "node ws": ("raw", lambda: run_worker("node", "bench/raw_ws_echo.js", sec, size, env=node_env)),
        "python relay": ("ws_echo", lambda: echo_run(emu, PY, "-m", "bench.py_ws_echo", addr("ws-python"), *common)),
        "python relay + uvloop": ("ws_echo", lambda: echo_run(
            emu, PY, "-m", "bench.py_ws_echo", addr("ws-python-uvloop"), *common, "--uvloop")),
        "node hyco-ws": ("ws_echo", lambda: echo_run(
            emu, "node", "bench/node_ws_echo.js", info["relay"], "ws-node", rule["name"], rule["key"], sec, size, env=node_env)),
        "http python relay": ("http", lambda: http_listener_run(
            emu, [PY, "-m", "bench.py_http_listener", addr("http-python"), *listener_args], "http-python", args, None)),
        "http python relay + uvloop": ("http", lambda: http_listener_run(
            emu, [PY, "-m", "bench.py_http_listener", addr("http-python-uvloop"), *listener_args, "--uvloop"],
            "http-python-uvloop", args, None)),
        "http node hyco-https": ("http", lambda: http_listener_run(
            emu, ["node", "bench/node_http_listener.js", info["relay"], "http-node", rule["name"], rule["key"]],
            "http-node", args, node_env)),
    }
    if args.quick:  # the smoke test: plain asyncio against Node only, no floor
        plan = {name: entry for name, entry in plan.items() if entry[0] != "raw" and "uvloop" not in name}
    return {name: entry for name, entry in plan.items() if entry[0] in groups}


async def run_relay(emu, args, groups: set[str]) -> dict:
    """The raw floor, WebSocket echo, HTTP listener and token-count figures selected by ``groups``."""
    plan = relay_plan(emu, args, groups)
    runs: dict[str, list] = {name: [] for name in plan}
    for round_ in range(args.rounds if plan else 0):
        print(f"round {round_ + 1}/{args.rounds}: {', '.join(dict.fromkeys(g for g, _ in plan.values()))} ...", file=sys.stderr)
        for name, (_, factory) in plan.items():
            runs[name].append(await factory())
    results: dict = {}
    for name, (group, _) in plan.items():
        if group == "http":
            label = name.removeprefix("http ")
            picked = median_run(runs[name], key=lambda run: run[f"c{args.concurrency}"]["per_second"])
            picked["c1"] = median_run([run["c1"] for run in runs[name]])
            results.setdefault(group, {})[label] = picked
        else:
            results.setdefault(group, {})[name] = median_run(runs[name])
    if "tokens" in groups:
        print(f"token fetches per {args.sends:,} sends ...", file=sys.stderr)
        rule = emu.config["sasRules"][0]
        before = await emu.tokens_issued()
        identity_env = dict(os.environ, **emu.identity_env())
        tokens_run = await run_worker(
            PY, "-m", "bench.token_fetches", emu.address("tokens"), rule["name"], rule["key"], emu.ca_cert,
            str(args.sends), "32", env=identity_env, timeout=300,
        )
        tokens_run["token_fetches"] = await emu.tokens_issued() - before
        results["tokens"] = tokens_run
    return results
