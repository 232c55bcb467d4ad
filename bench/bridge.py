"""The bridge end to end: the real Functions app under devhost, with Azurite and the emulator.

Everything runs on loopback, started with the project's own launchers (``devhost.azurite``,
``devhost.run.spawn`` for ``python -m devhost`` and ``python -m relay listen``, the bench's
emulator). The on-premises service is an echo in the runner's process that records when each
numbered request arrives, so queue drains are timed where the messages land.

Figures (each against a yardstick measured the same way, in the same run):

* ``relay_send``: ``POST /api/relay/bridge-out/send`` (HTTP function → relay → ``python -m
  relay listen --forward`` → echo) vs the library's ``request()`` straight to the same
  listener, at concurrency 1 and N: req/s, p50/p99 and the latency the app adds.
* ``queue_send``: M envelopes put on ``relay-outbound`` *before* the host starts, drained by the
  queue trigger into the relay, vs M ``request()`` calls at the trigger's batch size; both rates
  are first-to-last arrival at the echo; ``lost`` counts envelopes that never arrived.
* ``fanin``: relayed HTTP senders (202 only after the message is stored) into the listener
  orchestration, vs Azurite's raw enqueue rate with azure-storage-queue async at the same
  concurrency; ``lost`` = acknowledged minus stored.
* ``scaleout``: the same fan-in with ``RELAY_LISTENERS_PER_CONNECTION`` = K on a fresh host,
  then (full mode) K back to 1 on the last host's durable state after killing it, so its
  orchestrations resume under the new setting; reports how many listeners the emulator saw
  online on the entity (its log) and how many the app's ``GET /api/listeners`` lists.
  Correctness (nothing acknowledged is lost) is the point.
* ``coldstart``: a fresh ``python -m devhost`` process: time to import function_app (separate
  interpreter), to listen, and to the first byte of the first ``relay_send``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from bridge.settings import OUTBOUND_POISON_QUEUE, OUTBOUND_QUEUE
from devhost.azurite import start_azurite
from devhost.run import Child, spawn, wait_for_log
from relay.sas import generate_sas_token

from .cpu import ProcessMeters
from .relay_figures import BRIDGE_IN, BRIDGE_OUT, emulator_pid
from .runner import PY, ROOT, median_run, run_worker

BRIDGE_GROUPS = ("relay_send", "queue_send", "fanin", "scaleout", "coldstart")
FANIN_QUEUE = "bench-inbound"
RAW_QUEUE = "bench-raw"
CEILING_QUEUE = "bench-drain"
LISTENERS_SETTING = "RELAY_LISTENERS_PER_CONNECTION"
_ONLINE = re.compile(r"listener (\S+) online on (\S+) \(")
_OFFLINE = re.compile(r"listener (\S+) offline on (\S+)")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def trigger_batch_size() -> int:
    """host.json ``extensions.queues.batchSize``: how many queue messages the trigger runs at once."""
    host = json.loads((ROOT / "host.json").read_text())
    return int(host.get("extensions", {}).get("queues", {}).get("batchSize", 16))


def trigger_batch_threshold() -> int:
    """host.json ``extensions.queues.newBatchThreshold`` (default batchSize / 2): when the trigger fetches again."""
    host = json.loads((ROOT / "host.json").read_text())
    queues = host.get("extensions", {}).get("queues", {})
    return int(queues.get("newBatchThreshold", trigger_batch_size() // 2))


def listeners_online(emulator_log: Path, entity: str) -> int:
    """Listeners on ``entity`` that the emulator logged online and not (yet) offline."""
    online: set[str] = set()
    try:
        text = emulator_log.read_text(errors="replace")
    except OSError:
        return 0
    for line in text.splitlines():
        if (match := _ONLINE.search(line)) and match.group(2) == entity:
            online.add(match.group(1))
        elif (match := _OFFLINE.search(line)) and match.group(2) == entity:
            online.discard(match.group(1))
    return len(online)


@dataclass
class EchoService:
    """The on-premises service: answers 200 with the request body; records numbered arrivals."""

    port: int = 0
    arrivals: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        async def echo(request: web.Request) -> web.Response:
            body = await request.read()
            parts = request.path.strip("/").split("/")
            if len(parts) == 2 and parts[1] != "warmup":  # /<series>/<number>
                self.arrivals.setdefault(parts[0], []).append((parts[1], time.perf_counter()))
            return web.Response(status=200, body=body, content_type="application/octet-stream")

        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", echo)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def wait_series(self, series: str, count: int, timeout: float) -> dict:
        """Wait for ``count`` distinct numbers in ``series``; rate from first to last arrival."""
        deadline = time.monotonic() + timeout
        while len({n for n, _ in self.arrivals.get(series, [])}) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        seen = self.arrivals.get(series, [])
        distinct = {n for n, _ in seen}
        times = sorted(t for _, t in seen)
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        return {
            "messages": count,
            "arrived": len(distinct),
            "duplicates": len(seen) - len(distinct),
            "lost": count - len(distinct),
            "seconds": round(span, 3),
            "per_second": round((len(times) - 1) / span, 1) if span else None,
        }


async def kill(child: Child) -> None:
    """End a devhost at once: its state dir is thrown away, and a clean stop waits for the listener window."""
    if child.process.returncode is None:
        child.process.kill()
        await child.process.wait()


class BridgeBench:
    """Azurite, the echo service and its relay forwarder; devhost instances on top of them."""

    def __init__(self, emu, args, workdir: Path) -> None:
        self.emu, self.args, self.workdir = emu, args, workdir
        self.rule = emu.config["sasRules"][0]
        self.azurite = None
        self.service = EchoService()
        self.forwarder: Child | None = None
        self.hosts = 0
        self.last_state: str | None = None
        self.warmup = 10 if args.quick else 50

    # -- the fixed parts ----------------------------------------------------------------------
    async def start(self) -> None:
        self.azurite = await start_azurite()
        await self.service.start()
        args = [PY, "-m", "relay", "listen", self.emu.address(BRIDGE_OUT), "--forward", self.service.url,
                "--sas-key-name", self.rule["name"], "--ca-file", self.emu.ca_cert]
        env = {**os.environ, "RELAY_SAS_KEY": self.rule["key"]}
        self.forwarder, _ = await spawn("relay-listen", args, env, stdout_json=False, local=self.workdir)
        await wait_for_log(self.forwarder, "online:", "error:", timeout=30)

    async def stop(self) -> None:
        if self.forwarder is not None:
            await self.forwarder.stop()
        await self.service.stop()
        if self.azurite is not None:
            await self.azurite.stop()

    def queue(self, name: str) -> QueueClient:
        return QueueClient.from_connection_string(self.azurite.connection_string, name,
                                                  message_encode_policy=TextBase64EncodePolicy())

    async def clear(self, name: str) -> None:
        """Empty a queue (no figure calls it: see below).

        Azurite's cost per queue operation grows with every message it stores, in any queue (3,000
        messages elsewhere made a delete ~10x dearer), so one figure's leftovers slow the next. But
        clearing the fan-in and raw-enqueue queues after their figures left Azurite 3.23 in a
        CPU-bound loop a few figures later (twice in full runs, never with the clears removed), so
        the figures leave their messages and the later ones pay for them, as before.
        """
        async with self.queue(name) as queue:
            try:
                await queue.clear_messages()
            except ResourceNotFoundError:
                pass

    async def queue_count(self, name: str) -> int:
        async with self.queue(name) as queue:
            try:
                return (await queue.get_queue_properties()).approximate_message_count
            except ResourceNotFoundError:
                return 0

    # -- the app ------------------------------------------------------------------------------
    def host_env(self, listeners: int) -> dict[str, str]:
        """App settings for devhost (they win over local.settings.json, as in the host)."""
        return {
            **os.environ,
            "AzureWebJobsStorage": self.azurite.connection_string,
            "BridgeStorage": self.azurite.connection_string,
            "RELAY_NAMESPACE": self.emu.host,
            "RELAY_CA_FILE": self.emu.ca_cert or "",
            "RELAY_CLIENT_ID": "",
            "RELAY_OUTBOUND_CONNECTIONS": BRIDGE_OUT,
            "RELAY_DEFAULT_CONNECTION": BRIDGE_OUT,
            "RELAY_INBOUND_CONNECTIONS": BRIDGE_IN,
            "INBOUND_ROUTES": "[]",
            "INBOUND_DEFAULT_QUEUE": FANIN_QUEUE,
            "CLAIM_CHECK_CONTAINER": "bench-claimcheck",
            "LISTENER_WINDOW_SECONDS": "540",  # the maximum: no window handover inside a figure
            LISTENERS_SETTING: str(listeners),
            "PYTHONUNBUFFERED": "1",
            **self.emu.identity_env(),
        }

    async def start_host(self, listeners: int = 1, state: str | None = None) -> tuple[Child, dict, dict]:
        """A devhost on a fresh state dir, or on ``state`` (an earlier host's: its orchestrations resume)."""
        self.hosts += 1
        name = f"devhost-{self.hosts}"
        child, info = await spawn(name, [PY, "-m", "devhost", "--app-dir", str(ROOT), "--port", "0",
                                         "--state-dir", str(self.workdir / (state or name))],
                                  self.host_env(listeners), timeout=60, local=self.workdir)
        self.last_state = state or name
        keys = json.loads(Path(info["keys_file"]).read_text())
        return child, info, keys

    # -- figures ------------------------------------------------------------------------------
    async def prefill_outbound(self, count: int) -> None:
        """Put ``count`` envelopes on relay-outbound (before any host runs, so the drain is timed alone)."""
        body = "x" * self.args.size
        async with self.queue(OUTBOUND_QUEUE) as queue:
            try:
                await queue.create_queue()
            except ResourceExistsError:
                pass
            pending = list(range(count))

            async def worker() -> None:
                while pending:
                    i = pending.pop()
                    await queue.send_message(json.dumps({"connection": BRIDGE_OUT, "path": f"/queue/{i}", "body": body}))

            await asyncio.gather(*(worker() for _ in range(16)))

    async def _meter_series(self, series: str, meters: ProcessMeters, timeout: float) -> None:
        """Start ``meters`` when the first message of ``series`` lands (polled every 20 ms), so start-up is not counted."""
        deadline = time.monotonic() + timeout
        while not self.service.arrivals.get(series) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        meters.on_mark("start")

    async def queue_drain(self, host: Child, count: int, timeout: float) -> dict:
        """The prefilled queue drained by the trigger vs ``count`` request() calls; CPU per message of each part."""
        meters = self.meters(host, azurite=self.azurite.process.pid)
        await self._meter_series("queue", meters, timeout)
        bridge = await self.service.wait_series("queue", count, timeout)
        meters.on_mark("stop")
        meters.record(bridge, bridge["arrived"])
        # A message is deleted after its function succeeded: wait for the queue to empty.
        deadline = time.monotonic() + 15
        while await self.queue_count(OUTBOUND_QUEUE) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        bridge["left_on_queue"] = await self.queue_count(OUTBOUND_QUEUE)
        bridge["poisoned"] = await self.queue_count(OUTBOUND_POISON_QUEUE)
        bridge["concurrency"] = trigger_batch_size()
        meters = self.meters()
        direct_worker = await run_worker(
            PY, "-m", "bench.relay_request_load", self.emu.address(BRIDGE_OUT), self.rule["name"], self.rule["key"],
            self.emu.ca_cert, str(self.args.size), str(bridge["concurrency"]), "--count", str(count), "--path", "/qdirect",
            "--warmup", str(self.warmup), timeout=timeout, on_mark=meters.on_mark,
        )
        direct = await self.service.wait_series("qdirect", count, 10)
        meters.record(direct, direct["arrived"])
        direct["sender_cpu_us_per_request"] = direct_worker.get("sender_cpu_us_per_request")
        direct["concurrency"] = bridge["concurrency"]
        direct["errors"] = direct_worker["errors"]
        return {"bridge": bridge, "direct": direct, "azurite": await self.azurite_drain(count, timeout)}

    async def azurite_drain(self, count: int, timeout: float) -> dict:
        """Azurite's own ceiling for the drain: ``count`` messages fetched and deleted as devhost does, no app, no relay."""
        meters = ProcessMeters({"azurite": self.azurite.process.pid})
        ceiling = await run_worker(PY, "-m", "bench.queue_load", "--drain", self.azurite.connection_string, CEILING_QUEUE,
                                   str(self.args.size), str(trigger_batch_size()), str(trigger_batch_threshold()), str(count),
                                   timeout=timeout, on_mark=meters.on_mark)
        return meters.record(ceiling, ceiling["count"])

    def meters(self, host: Child | None = None, **extra: int | None) -> ProcessMeters:
        """CPU meters for the app (devhost), the emulator, the on-premises listener and ``extra`` processes."""
        pids = {"app": host.process.pid if host else None, "emulator": emulator_pid(self.emu),
                "onprem_listener": self.forwarder.process.pid if self.forwarder else None, **extra}
        return ProcessMeters({name: pid for name, pid in pids.items() if pid is not None})

    async def relay_send(self, host: Child, info: dict, keys: dict, concurrency: int) -> dict:
        """One round: the app's relay_send and request() to the same listener, at ``concurrency``.

        Each side also reports the CPU per request of the app, the emulator and the on-premises
        listener over the sender's measured interval (the sender's own CPU comes from the worker).
        """
        url = f"{info['api']}/relay/{BRIDGE_OUT}/send"
        sec, size = str(self.args.seconds), str(self.args.size)
        meters = self.meters(host)
        # Options first, then "--": a function key may start with "-", which argparse would take for an option.
        bridge = await run_worker(PY, "-m", "bench.http_load", "--header", "x-functions-key", "--warmup", str(self.warmup),
                                  "--", url, keys["functionKeys"]["default"], "-", sec, size, str(concurrency),
                                  on_mark=meters.on_mark)
        meters.record(bridge, bridge["count"])
        meters = self.meters()
        direct = await run_worker(PY, "-m", "bench.relay_request_load", self.emu.address(BRIDGE_OUT), self.rule["name"],
                                  self.rule["key"], self.emu.ca_cert, size, str(concurrency), "--seconds", sec,
                                  "--path", "/send", "--warmup", str(self.warmup), on_mark=meters.on_mark)
        meters.record(direct, direct["count"])
        return {"bridge": bridge, "direct": direct}

    async def start_listeners(self, info: dict, keys: dict, wanted: int, settle: float) -> dict:
        """Ask the app to start the inbound listener; wait until the emulator sees ``wanted`` online (or ``settle`` s)."""
        headers = {"x-functions-key": keys["masterKey"]}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{info['api']}/listeners/start/{BRIDGE_IN}", headers=headers) as response:
                if response.status >= 300:
                    raise RuntimeError(f"listener start: HTTP {response.status}: {await response.text()}")
            started = time.monotonic()
            while listeners_online(self.emu.log_path, BRIDGE_IN) < 1:
                if time.monotonic() - started > 45:
                    raise RuntimeError(f"no listener came online on {BRIDGE_IN} within 45 s")
                await asyncio.sleep(0.2)
            first = time.monotonic() - started
            while listeners_online(self.emu.log_path, BRIDGE_IN) < wanted and time.monotonic() - started < first + settle:
                await asyncio.sleep(0.2)
            async with http.get(f"{info['api']}/listeners", headers=headers) as response:
                listed = (await response.json()).get("listeners", []) if response.status == 200 else []
        mine = [entry for entry in listed if entry.get("connection") == BRIDGE_IN]
        return {
            "listeners_requested": wanted,
            "listeners_seen": listeners_online(self.emu.log_path, BRIDGE_IN),
            "api_listeners": len(mine),
            "api_status": sorted({str(entry.get("runtimeStatus")) for entry in mine}),
            "online_after_s": round(first, 2),
        }

    async def fanin_load(self, host: Child, concurrency: int) -> dict:
        """Relayed HTTP senders into the listener; every 202 must be a stored message.

        Also reports the CPU per stored message of the app, the emulator and Azurite.
        """
        entity = BRIDGE_IN
        token = generate_sas_token(f"http://127.0.0.1:{self.emu.port}/{entity}", self.rule["name"], self.rule["key"])
        before = await self.queue_count(FANIN_QUEUE)
        meters = ProcessMeters({"app": host.process.pid, "emulator": emulator_pid(self.emu),
                                "azurite": self.azurite.process.pid})
        load = await run_worker(PY, "-m", "bench.http_load", f"{self.emu.http}/{entity}/fanin", token, self.emu.ca_cert,
                                str(self.args.seconds), str(self.args.size), str(concurrency), "--status", "202", "--any-body",
                                "--warmup", str(self.warmup), on_mark=meters.on_mark)
        meters.record(load, load["count"])
        accepted = load["count"] + load["warmup"]
        deadline = time.monotonic() + 5
        stored = await self.queue_count(FANIN_QUEUE) - before
        while stored < accepted and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            stored = await self.queue_count(FANIN_QUEUE) - before
        load.update(accepted=accepted, stored=stored, lost=accepted - stored)
        return load

    async def azurite_raw(self, concurrency: int) -> dict:
        meters = ProcessMeters({"azurite": self.azurite.process.pid})
        raw = await run_worker(PY, "-m", "bench.queue_load", self.azurite.connection_string, RAW_QUEUE,
                               str(self.args.size), str(concurrency), str(self.args.seconds), on_mark=meters.on_mark)
        return meters.record(raw, raw["count"])

    async def coldstart_once(self) -> dict:
        """A fresh devhost process: import time, time to listen, time to the first relay_send byte."""
        env = self.host_env(1)
        code = ("import json, time; t = time.perf_counter(); import function_app; "
                "print(json.dumps({'import_s': time.perf_counter() - t}))")
        imported = await run_worker(PY, "-c", code, env=env)
        self.hosts += 1
        name = f"devhost-{self.hosts}-cold"
        t0 = time.perf_counter()
        child, info = await spawn(name, [PY, "-m", "devhost", "--app-dir", str(ROOT), "--port", "0",
                                         "--state-dir", str(self.workdir / name)], env, timeout=60, local=self.workdir)
        ready = time.perf_counter()
        try:
            keys = json.loads(Path(info["keys_file"]).read_text())
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{info['api']}/relay/{BRIDGE_OUT}/cold", data=b"x" * self.args.size,
                                     headers={"x-functions-key": keys["functionKeys"]["default"]}) as response:
                    first_byte = time.perf_counter()
                    body = await response.read()
                    if response.status != 200 or len(body) != self.args.size:
                        raise RuntimeError(f"cold relay_send: HTTP {response.status} ({len(body)} bytes)")
        finally:
            await kill(child)
        return {"import_s": round(imported["import_s"], 3), "ready_s": round(ready - t0, 3),
                "first_request_s": round(first_byte - ready, 3), "first_byte_s": round(first_byte - t0, 3)}


def _median_pair(runs: list[dict]) -> dict:
    bridge = median_run([run["bridge"] for run in runs])
    direct = median_run([run["direct"] for run in runs])
    return {"bridge": bridge, "direct": direct,
            "added_p50_ms": round(bridge["p50_ms"] - direct["p50_ms"], 3),
            "added_p99_ms": round(bridge["p99_ms"] - direct["p99_ms"], 3)}


async def run_bridge(emu, args, groups: set[str]) -> dict:
    """The bridge figures selected by ``groups`` (see the module docs)."""
    results: dict = {}
    ks = (1, 2) if args.quick else (1, 2, 4)
    drain_count = max(30, int(100 * args.seconds))
    settle = 3.0 if args.quick else 10.0
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp:
        bench = BridgeBench(emu, args, Path(tmp))
        log("bridge: starting Azurite, the on-premises echo and its relay listener ...")
        await bench.start()
        try:
            if groups & {"relay_send", "queue_send", "fanin", "scaleout"}:
                if "queue_send" in groups:
                    log(f"bridge: {drain_count} envelopes onto {OUTBOUND_QUEUE} ...")
                    await bench.prefill_outbound(drain_count)
                host, info, keys = await bench.start_host(1)
                try:
                    if "queue_send" in groups:
                        log("bridge: queue drain vs a request() loop ...")
                        results["queue_send"] = await bench.queue_drain(host, drain_count, timeout=max(60.0, drain_count / 10))
                    if "relay_send" in groups:
                        runs: dict[str, list] = {"c1": [], f"c{args.concurrency}": []}
                        for round_ in range(args.rounds):
                            log(f"bridge: relay_send vs request(), round {round_ + 1}/{args.rounds} ...")
                            for concurrency in (1, args.concurrency):
                                runs[f"c{concurrency}"].append(await bench.relay_send(host, info, keys, concurrency))
                        results["relay_send"] = {key: _median_pair(value) for key, value in runs.items()}
                    if groups & {"fanin", "scaleout"}:
                        log("bridge: inbound fan-in (K=1) vs Azurite raw enqueue ...")
                        seen = await bench.start_listeners(info, keys, 1, settle)
                        fan, raw = [], []
                        for _ in range(args.rounds if "fanin" in groups else 1):
                            fan.append(await bench.fanin_load(host, args.concurrency))
                            if "fanin" in groups:
                                raw.append(await bench.azurite_raw(args.concurrency))
                        picked = median_run(fan)
                        picked.update(seen, lost=sum(run["lost"] for run in fan), accepted=sum(run["accepted"] for run in fan),
                                      stored=sum(run["stored"] for run in fan))
                        if "fanin" in groups:
                            results["fanin"] = {"bridge": picked, "azurite": median_run(raw)}
                        if "scaleout" in groups:
                            results.setdefault("scaleout", {})["1"] = picked
                finally:
                    await kill(host)
            if "scaleout" in groups:
                state = None
                for k in ks[1:]:
                    log(f"bridge: inbound scale-out, {LISTENERS_SETTING}={k} ...")
                    host, info, keys = await bench.start_host(k)
                    try:
                        seen = await bench.start_listeners(info, keys, k, settle)
                        run = await bench.fanin_load(host, args.concurrency)
                        run.update(seen)
                        results.setdefault("scaleout", {})[str(k)] = run
                        state = bench.last_state
                    finally:
                        await kill(host)
                if not args.quick and state is not None:
                    # Scaling down: the host is killed (a crash or recycle) and comes back with K=1 on the
                    # same durable state, so the K-listener orchestrations resume under the new setting.
                    down = f"{ks[-1]}->1"
                    log(f"bridge: inbound scale-down, {LISTENERS_SETTING} {down} on the same state ...")
                    host, info, keys = await bench.start_host(1, state=state)
                    try:
                        seen = await bench.start_listeners(info, keys, 1, settle)
                        run = await bench.fanin_load(host, args.concurrency)
                        run.update(seen)
                        results.setdefault("scaleout", {})[down] = run
                    finally:
                        await kill(host)
            if "coldstart" in groups:
                log("bridge: cold start ...")
                colds = [await bench.coldstart_once() for _ in range(1 if args.quick else min(args.rounds, 3))]
                picked = median_run(colds, key=lambda run: run["first_byte_s"])
                results["coldstart"] = picked
        finally:
            await bench.stop()
    return results
