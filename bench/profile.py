"""Where each microsecond goes: py-spy on the bench workers and the emulator, per relayed message.

    .venv/bin/pip install py-spy==0.4.3      # a tool, not a dependency of the bench
    python -m bench.profile [--seconds 8] [--out bench/results/profile.md] [--raw-dir DIR] [--loop asyncio|uvloop]

Runs, on plain asyncio by default (the Functions worker's loop), each against one emulator:

* ``ws_echo``: bench.py_ws_echo (this library's listener and sender in one process);
* ``http_listener_c1`` / ``http_listener_c16``: bench.py_http_listener under bench.http_load;
* ``http_sender_c16``: bench.relay_request_load, this library's ``request()``, against the same listener;

and samples, once the worker's measured interval starts (its ``{"mark": "start"}``), the worker
and the emulator with ``py-spy record --pid`` (non-blocking, so the process is not paused).
CPU per message comes from /proc over the same interval (:mod:`bench.cpu`); each function's
share of the samples times that gives its µs per message. Then the same workers once more under
cProfile, for exact call counts per message. Writes ``bench/results/profile.md`` (the tables
bench/PROFILE.md quotes) and keeps the raw stacks in ``--raw-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pstats
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from emulator.launcher import start_emulator
from relay.sas import generate_sas_token

from .cpu import CpuMeter, user_system_seconds
from .relay_figures import bench_config, emulator_pid
from .runner import PY, ROOT

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
RATE = 250  # samples per second per process
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


# ---- sampling -----------------------------------------------------------------------------------
async def record(pid: int, seconds: float, out: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        PY_SPY, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", str(RATE),
        "--nonblocking", "--full-filenames", "--format", "raw", "--output", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )


class Profiled:
    """Start py-spy on ``targets`` (name -> pid) at a worker's start mark; CPU meters over the same span."""

    def __init__(self, name: str, targets: dict[str, int], seconds: float, outdir: Path) -> None:
        self.name, self.targets, self.seconds, self.outdir = name, targets, seconds, outdir
        self.meters = {who: CpuMeter(pid) for who, pid in targets.items()}
        self.split_start: dict[str, tuple[float, float] | None] = {}
        self.split: dict[str, tuple[float, float] | None] = {}
        self.spies: list[asyncio.subprocess.Process] = []
        self.tasks: list[asyncio.Task] = []

    def path(self, who: str) -> Path:
        return self.outdir / f"{self.name}.{who}.txt"

    def on_mark(self, mark: str) -> None:
        if mark == "start":
            for meter in self.meters.values():
                meter.start()
            self.split_start = {who: user_system_seconds(pid) for who, pid in self.targets.items()}
            loop = asyncio.get_running_loop()
            for who, pid in self.targets.items():
                self.tasks.append(loop.create_task(record(pid, self.seconds - 1, self.path(who))))
        elif mark == "stop":
            for meter in self.meters.values():
                meter.stop()
            for who, pid in self.targets.items():
                end, start = user_system_seconds(pid), self.split_start.get(who)
                self.split[who] = None if end is None or start is None else (end[0] - start[0], end[1] - start[1])

    def kernel_share(self, who: str) -> float | None:
        """System time / (user + system) over the measured interval (socket syscalls, epoll, TLS is user)."""
        split = self.split.get(who)
        if not split or split[0] + split[1] <= 0:
            return None
        return split[1] / (split[0] + split[1])

    async def finish(self) -> None:
        for task in self.tasks:
            spy = await task
            await spy.wait()


async def read_worker(process: asyncio.subprocess.Process, on_mark) -> dict:
    last = None
    while line := await process.stdout.readline():
        if line.startswith(b"{"):
            data = json.loads(line)
            if set(data) == {"mark"}:
                on_mark(data["mark"])
            else:
                last = data
    await process.wait()
    if last is None:
        raise RuntimeError(f"worker exited with {process.returncode} without a result")
    return last


async def spawn(*cmd: str, stdin: bool = False) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.PIPE if stdin else None)


# ---- aggregation --------------------------------------------------------------------------------
def parse_stacks(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """py-spy raw output: ``frame;frame;... COUNT`` per line, root first; frames as (function, file)."""
    stacks = []
    if not path.exists():
        return stacks
    for line in path.read_text().splitlines():
        text, _, count = line.rpartition(" ")
        frames = []
        for frame in text.split(";"):
            match = _FRAME.match(frame.strip())
            frames.append((match.group("func"), match.group("file")) if match else (frame.strip(), ""))
        stacks.append((frames, int(count)))
    return stacks


def module_of(file: str) -> str:
    """A short module label: ``relay/listener.py``, ``websockets/protocol.py``, ``asyncio/sslproto.py``."""
    file = file.replace("\\", "/")
    for marker in ("/site-packages/", "/lib/python3.11/", f"{ROOT}/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file.rsplit("/", 2)[-1] if "/" in file else file


POLL = ("select", "selectors.py")
"""The leaf frame of asyncio's poll (epoll_wait). py-spy skips sleeping threads, but a thread woken and
waiting for a CPU on a busy machine is sampled there too, so these samples are shown apart and left out
of the shares. (uvloop's whole C loop, TLS and socket I/O included, is charged to ``Runner.run``: that
is real work and stays in.)"""


SYSCALL_SITES = {("write", "selector_events.py"), ("_read_ready__get_buffer", "selector_events.py"),
                 ("_read_ready__data_received", "selector_events.py"), ("select", "selectors.py")}
"""Python lines whose self time is a socket syscall (send, recv_into) or epoll_wait: their CPU is the
process's *system* time, measured exactly from /proc; wake-up preemption on loopback also lands here."""


def is_syscall(frame: tuple[str, str]) -> bool:
    func, file = frame
    return (func.rsplit(".", 1)[-1], file.replace("\\", "/").rsplit("/", 1)[-1]) in SYSCALL_SITES


def is_poll(frame: tuple[str, str]) -> bool:
    func, file = frame
    return (func.rsplit(".", 1)[-1], file.replace("\\", "/").rsplit("/", 1)[-1]) == POLL


def tables(stacks, cpu_us_per_message: float | None, top: int = 15, skip=is_poll) -> tuple[list, list, list]:
    """(self time by function, self time by module, inclusive time of this project's functions), ``skip`` left out."""
    total = sum(count for frames, count in stacks if frames and not skip(frames[-1])) or 1
    by_func, by_module, inclusive = Counter(), Counter(), Counter()
    for frames, count in stacks:
        if not frames or skip(frames[-1]):
            continue
        func, file = frames[-1]
        by_func[f"{func} ({module_of(file)})"] += count
        by_module[module_of(file)] += count
        seen = set()
        for func, file in frames:
            label = f"{func} ({module_of(file)})"
            if (module_of(file).startswith(("relay/", "emulator/", "bench/")) and label not in seen
                    and func not in ("<module>", "main", "run")):
                inclusive[label] += count
                seen.add(label)

    def rows(counter: Counter) -> list:
        return [(name, count / total, count / total * cpu_us_per_message if cpu_us_per_message else None)
                for name, count in counter.most_common(top)]

    return rows(by_func), rows(by_module), rows(inclusive)


def render(name: str, who: str, stacks, cpu_us: float | None, count: int, kernel: float | None = None) -> str:
    """One process's tables. With ``kernel`` (system share of its CPU, from /proc) the user-space time is
    split by the samples outside syscall sites, and the system time is one row of its own; without it
    (uvloop: its C loop mixes both) the CPU outside asyncio's poll is split by the samples."""
    samples = sum(c for _, c in stacks) or 1
    if kernel is not None and cpu_us is not None:
        skip = is_syscall
        syscall = sum(c for frames, c in stacks if frames and is_syscall(frames[-1]))
        divided = cpu_us * (1 - kernel)
        note = (f"{samples} samples; CPU {cpu_us} µs per message over {count} messages: **{cpu_us * kernel:.0f} µs in the "
                f"kernel** (system time: socket send/recv and epoll, {syscall / samples:.0%} of the samples, which "
                f"include waiting for a CPU after waking the peer) and **{divided:.0f} µs in user space**, divided "
                "below by the other samples.")
    else:
        skip = is_poll
        poll = sum(c for frames, c in stacks if frames and is_poll(frames[-1]))
        divided = cpu_us * (1 - poll / samples) if cpu_us is not None else None
        note = (f"{samples} samples, {poll / samples:.0%} in asyncio's poll; CPU {cpu_us if cpu_us is not None else '?'} "
                f"µs per message over {count} messages, {divided if divided is None else round(divided, 1)} µs of it "
                "divided below.")
    functions, modules, inclusive = tables(stacks, divided, skip=skip)
    lines = [f"### {name}: {who}", "", note, ""]
    for title, rows in (("self time by module", modules), ("self time by function", functions),
                        ("inclusive time, this project's functions", inclusive)):
        lines += [f"| {title} | share | µs/msg |", "|---|---:|---:|"]
        lines += [f"| `{label}` | {share:.1%} | {us:.1f} |" if us is not None else f"| `{label}` | {share:.1%} | ? |"
                  for label, share, us in rows]
        lines.append("")
    return "\n".join(lines)


# ---- the runs -----------------------------------------------------------------------------------
def kernel_of(prof: Profiled, who: str, args) -> float | None:
    """The system-time share for plain-asyncio processes; None for uvloop ones (the emulator always; devhost never)."""
    return None if who == "emulator" or (args.loop == "uvloop" and who != "app") else prof.kernel_share(who)


async def profile_ws_echo(emu, args, outdir: Path) -> list[str]:
    rule = emu.config["sasRules"][0]
    cmd = [PY, "-m", "bench.py_ws_echo", emu.address("ws-python"), rule["name"], rule["key"], emu.ca_cert,
           str(args.seconds), "1024", *(["--uvloop"] if args.loop == "uvloop" else [])]
    process = await spawn(*cmd)
    prof = Profiled("ws_echo", {"worker": process.pid, "emulator": emulator_pid(emu)}, args.seconds, outdir)
    result = await read_worker(process, prof.on_mark)
    await prof.finish()
    count = result["count"]
    return [render("WebSocket echo (listener + sender, one process)", who, parse_stacks(prof.path(who)),
                   prof.meters[who].per_message_us(count), count, kernel_of(prof, who, args)) for who in prof.targets]


async def profile_http(emu, args, outdir: Path) -> list[str]:
    rule = emu.config["sasRules"][0]
    listener = await spawn(PY, "-m", "bench.py_http_listener", emu.address("http-python"), rule["name"], rule["key"],
                           emu.ca_cert, *(["--uvloop"] if args.loop == "uvloop" else []), stdin=True)
    out = []
    try:
        ready = await asyncio.wait_for(listener.stdout.readline(), 30)
        if b"ready" not in ready:
            raise RuntimeError("the HTTP listener worker did not come online")
        token = generate_sas_token(f"http://127.0.0.1:{emu.port}/http-python", rule["name"], rule["key"])
        for concurrency in (1, 16):
            name = f"http_listener_c{concurrency}"
            load = await spawn(PY, "-m", "bench.http_load", f"{emu.http}/http-python", token, emu.ca_cert,
                               str(args.seconds), "1024", str(concurrency))
            prof = Profiled(name, {"listener": listener.pid, "emulator": emulator_pid(emu)}, args.seconds, outdir)
            result = await read_worker(load, prof.on_mark)
            await prof.finish()
            count = result["count"]
            out += [render(f"HTTP listener, concurrency {concurrency} (sender: aiohttp)", who, parse_stacks(prof.path(who)),
                           prof.meters[who].per_message_us(count), count, kernel_of(prof, who, args)) for who in prof.targets]
        name = "http_sender_c16"
        sender = await spawn(PY, "-m", "bench.relay_request_load", emu.address("http-python"), rule["name"], rule["key"],
                             emu.ca_cert, "1024", "16", "--seconds", str(args.seconds), "--path", "/profile")
        prof = Profiled(name, {"sender": sender.pid}, args.seconds, outdir)
        result = await read_worker(sender, prof.on_mark)
        await prof.finish()
        out.append(render("HTTP sender, this library's request(), concurrency 16", "sender", parse_stacks(prof.path("sender")),
                          prof.meters["sender"].per_message_us(result["count"]), result["count"],
                          kernel_of(prof, "sender", args)))
    finally:
        if listener.returncode is None:
            listener.stdin.write(b"stop\n")
            await listener.stdin.drain()
            try:
                await asyncio.wait_for(listener.wait(), 10)
            except asyncio.TimeoutError:
                listener.kill()
                await listener.wait()
    return out


# ---- cProfile: exact call counts per message ------------------------------------------------------
def cprofile_cmd(out: Path, module: str, *rest: str) -> list[str]:
    return [PY, "-m", "cProfile", "-o", str(out), "-m", module, *rest]


def cprofile_render(title: str, path: Path, messages: int, top: int = 25) -> str:
    """Top self time (wall clock under cProfile, so inflated by its overhead) and calls per message."""
    stats = pstats.Stats(str(path)).stats
    rows = []
    for (file, line, func), (_cc, calls, own, cumulative, _callers) in stats.items():
        label = f"{func} ({module_of(file)}:{line})" if file != "~" else func
        rows.append((own, cumulative, calls, label, module_of(file)))
    poll = sum(own for own, _, _, label, _ in rows if "select.epoll" in label)
    busy = sum(own for own, *_ in rows) - poll
    lines = [f"### cProfile: {title}", "",
             f"{messages} messages (warm-up included); {busy / messages * 1e6:.0f} µs/msg profiled outside the poll "
             f"(epoll: {poll / messages * 1e6:.0f} µs/msg of wall time, mostly waiting).", "",
             "| function (self time) | calls/msg | self µs/msg | cumulative µs/msg | share |", "|---|---:|---:|---:|---:|"]
    for own, cumulative, calls, label, _ in sorted(rows, reverse=True):
        if "select.epoll" in label:
            continue
        lines.append(f"| `{label}` | {calls / messages:.2f} | {own / messages * 1e6:.1f} | "
                     f"{cumulative / messages * 1e6:.1f} | {own / busy:.1%} |")
        if len(lines) >= top + 5:
            break
    ours = sorted((r for r in rows if r[4].startswith(("relay/", "emulator/"))), key=lambda r: -r[1])[:15]
    lines += ["", "| this project's functions (cumulative) | calls/msg | cumulative µs/msg |", "|---|---:|---:|"]
    lines += [f"| `{label}` | {calls / messages:.2f} | {cumulative / messages * 1e6:.1f} |"
              for _own, cumulative, calls, label, _ in ours]
    return "\n".join(lines) + "\n"


async def cprofile_runs(emu, args, outdir: Path) -> list[str]:
    rule = emu.config["sasRules"][0]
    loop = ["--uvloop"] if args.loop == "uvloop" else []
    sections = []
    out = outdir / "ws_echo.cprofile"
    process = await spawn(*cprofile_cmd(out, "bench.py_ws_echo", emu.address("ws-python"), rule["name"], rule["key"],
                                        emu.ca_cert, str(args.seconds), "1024", *loop))
    result = await read_worker(process, lambda mark: None)
    sections.append(cprofile_render("WebSocket echo, listener + sender", out, result["count"] + 200))

    out = outdir / "http_listener_c16.cprofile"
    listener = await spawn(*cprofile_cmd(out, "bench.py_http_listener", emu.address("http-python"), rule["name"],
                                         rule["key"], emu.ca_cert, *loop), stdin=True)
    ready = await asyncio.wait_for(listener.stdout.readline(), 60)
    if b"ready" not in ready:
        raise RuntimeError("the HTTP listener worker did not come online under cProfile")
    listener.stdin.write(b"mark\n")
    await listener.stdin.drain()
    token = generate_sas_token(f"http://127.0.0.1:{emu.port}/http-python", rule["name"], rule["key"])
    load = await spawn(PY, "-m", "bench.http_load", f"{emu.http}/http-python", token, emu.ca_cert, str(args.seconds),
                       "1024", "16")
    await read_worker(load, lambda mark: None)
    listener.stdin.write(b"stop\n")
    await listener.stdin.drain()
    served = await read_worker(listener, lambda mark: None)
    sections.append(cprofile_render("HTTP listener, concurrency 16", out, served["requests"]))

    out = outdir / "http_sender_c16.cprofile"
    listener = await spawn(PY, "-m", "bench.py_http_listener", emu.address("http-python"), rule["name"], rule["key"],
                           emu.ca_cert, *loop, stdin=True)  # the plain listener, for the profiled sender
    await asyncio.wait_for(listener.stdout.readline(), 30)
    sender = await spawn(*cprofile_cmd(out, "bench.relay_request_load", emu.address("http-python"), rule["name"],
                                       rule["key"], emu.ca_cert, "1024", "16", "--seconds", str(args.seconds)))
    result = await read_worker(sender, lambda mark: None)
    listener.stdin.write(b"stop\n")
    await listener.stdin.drain()
    await listener.wait()
    sections.append(cprofile_render("HTTP sender, request(), concurrency 16", out, result["count"] + result["warmup"]))
    return sections


# ---- the bridge: the app under devhost ------------------------------------------------------------
async def profile_bridge(emu, args, outdir: Path) -> list[str]:
    """py-spy on the devhost process while it drains relay-outbound, then while it serves relay_send at c=16."""
    from types import SimpleNamespace

    from .bridge import BRIDGE_OUT, BridgeBench, kill

    options = SimpleNamespace(size=1024, quick=False, seconds=args.seconds, concurrency=16, rounds=1)
    sections = []
    with tempfile.TemporaryDirectory(prefix="bench-profile-bridge-") as tmp:
        bench = BridgeBench(emu, options, Path(tmp))
        await bench.start()
        try:
            count = int(60 * args.seconds)  # about the drain rate seen on 2 cores: the drain outlasts the sampling
            await bench.prefill_outbound(count)
            host, info, keys = await bench.start_host(1)
            try:
                prof = Profiled("bridge_queue_drain", {"app": host.process.pid}, args.seconds, outdir)
                while not bench.service.arrivals.get("queue"):
                    await asyncio.sleep(0.02)
                prof.on_mark("start")
                await asyncio.sleep(args.seconds)
                prof.on_mark("stop")
                await prof.finish()
                drained = len(bench.service.arrivals.get("queue", []))
                sections.append(render("queue-driven sends, relay-outbound drained by the queue trigger (devhost + app)",
                                       "app", parse_stacks(prof.path("app")), prof.meters["app"].per_message_us(drained),
                                       drained, kernel_of(prof, "app", args)))
                await bench.service.wait_series("queue", count, 120)
                prof = Profiled("bridge_relay_send_c16", {"app": host.process.pid}, args.seconds, outdir)
                load = await spawn(PY, "-m", "bench.http_load", "--header", "x-functions-key", "--warmup", "50", "--",
                                   f"{info['api']}/relay/{BRIDGE_OUT}/send", keys["functionKeys"]["default"], "-",
                                   str(args.seconds), "1024", "16")
                result = await read_worker(load, prof.on_mark)
                await prof.finish()
                sections.append(render("relay_send at concurrency 16 (devhost + app)", "app", parse_stacks(prof.path("app")),
                                       prof.meters["app"].per_message_us(result["count"]), result["count"],
                                       kernel_of(prof, "app", args)))
            finally:
                await kill(host)
        finally:
            await bench.stop()
    return sections


async def main(args) -> None:
    if not Path(PY_SPY).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy==0.4.3")
    outdir = args.raw_dir or Path(tempfile.mkdtemp(prefix="bench-profile-"))
    outdir.mkdir(parents=True, exist_ok=True)
    async with start_emulator(bench_config()) as emu:
        if args.bridge:
            sections = await profile_bridge(emu, args, outdir)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(f"# py-spy profile of the app under devhost (plain asyncio, {args.seconds:g} s, {RATE} Hz)\n\n"
                                + "\n".join(sections))
            print(f"wrote {args.out}; raw stacks in {outdir}", file=sys.stderr)
            return
        sections = await profile_ws_echo(emu, args, outdir)
        sections += await profile_http(emu, args, outdir)
        sections += ["## cProfile (exact call counts; times inflated by the profiler, read them as shares)", ""]
        sections += await cprofile_runs(emu, args, outdir)
    head = (f"# py-spy profile ({args.loop}, {args.seconds:g} s per run, {RATE} Hz, 1 KB messages)\n\n"
            "Share = share of the process's samples outside asyncio's poll (epoll_wait); µs/msg = share × the "
            "process's CPU per message over the same interval (/proc) minus the poll's share. Self time is "
            "charged to the innermost Python frame: C code (the ssl module, socket send, uvloop's whole loop "
            "in the emulator, `Runner.run`) is charged to the Python line that called it. On a busy machine "
            "py-spy also samples threads that are runnable but waiting for a CPU, so shares are approximate; "
            "the cProfile call counts below are exact.\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(head + "\n" + "\n".join(sections))
    print(f"wrote {args.out}; raw stacks (py-spy collapsed, cProfile) in {outdir}", file=sys.stderr)


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--out", type=Path, help="the tables (default bench/results/profile.md)")
    parser.add_argument("--raw-dir", type=Path, help="where the raw stacks go (default: a new temporary directory)")
    parser.add_argument("--bridge", action="store_true",
                        help="profile the app under devhost instead (queue drain, relay_send); default --out "
                             "bench/results/profile-bridge.md")
    args = parser.parse_args()
    if args.out is None:
        args.out = ROOT / "bench" / "results" / ("profile-bridge.md" if args.bridge else "profile.md")
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
