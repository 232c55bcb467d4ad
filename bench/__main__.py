"""Run the benchmarks against one emulator; write bench/results/latest.{json,png} and bridge.png.

    make bench                                   # the full run (≈ 8-10 min on 2 cores)
    make bench BENCH_ARGS="--quick"              # the smoke run: every figure, tiny counts
    python -m bench [--quick] [--rounds 3] [--seconds 5] [--only GROUP,...] [--out PATH]
    python -m bench --update-readme [--out PATH] [--range EARLIER.json ...]
                                                 # README tables from saved reports, nothing run

Groups for ``--only`` (comma-separated): relay figures ``raw`` (loopback floor, no relay),
``ws_echo``, ``http``, ``tokens``; bridge figures ``relay_send``, ``queue_send``, ``fanin``,
``scaleout``, ``coldstart``; ``relay`` and ``bridge`` select each half.

Relay figures: each client runs in its own process, one after another, against the same
emulator; rounds are interleaved and each figure is the median round. The emulator's own CPU
per relayed message is read from /proc over each worker's measured interval. Ratios to the
Node clients (and bridge vs direct) are computed into the JSON (``ratios``, ``goals``) and
printed with the tables. See README.md (Benchmarks) for how to read them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

from emulator.launcher import start_emulator

from .bridge import BRIDGE_GROUPS, run_bridge
from .relay_figures import RELAY_GROUPS, bench_config, run_relay
from .runner import ROOT

RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
ALIASES = {"relay": RELAY_GROUPS, "bridge": BRIDGE_GROUPS}


def parse_only(text: str | None) -> set[str]:
    """``--only`` into a set of groups; raises ValueError naming an unknown group and the valid ones."""
    if not text:
        return set(RELAY_GROUPS) | set(BRIDGE_GROUPS)
    groups: set[str] = set()
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        if name in ALIASES:
            groups.update(ALIASES[name])
        elif name in RELAY_GROUPS or name in BRIDGE_GROUPS:
            groups.add(name)
        else:
            valid = ", ".join([*RELAY_GROUPS, *BRIDGE_GROUPS, *ALIASES])
            raise ValueError(f"--only: unknown group {name!r}; choose from {valid}")
    return groups


async def main(args) -> dict:
    groups = parse_only(args.only)
    results: dict = {}
    started = time.monotonic()
    async with start_emulator(bench_config()) as emu:
        relay_groups, bridge_groups = groups & set(RELAY_GROUPS), groups & set(BRIDGE_GROUPS)
        if args.quick and relay_groups and bridge_groups:
            # A smoke run's numbers are not figures: run both halves side by side to keep it short.
            relay, bridge = await asyncio.gather(run_relay(emu, args, relay_groups), run_bridge(emu, args, bridge_groups))
            results.update(relay)
            results["bridge"] = bridge
        else:
            if relay_groups:
                results.update(await run_relay(emu, args, relay_groups))
            if bridge_groups:
                results["bridge"] = await run_bridge(emu, args, bridge_groups)
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"seconds": args.seconds, "size": args.size, "concurrency": args.concurrency, "sends": args.sends,
                     "rounds": args.rounds, "quick": args.quick, "only": sorted(groups)},
        "wall_seconds": round(time.monotonic() - started, 1),
        "results": results,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 0.3 s figures, 1 round, no uvloop/raw variants, K = 1, 2, relay and bridge "
                             "halves side by side (it checks that everything runs; its numbers are not figures)")
    parser.add_argument("--seconds", type=float, help="measured seconds per figure (default 5; quick 0.3)")
    parser.add_argument("--rounds", "--repeat", dest="rounds", type=int,
                        help="interleaved rounds; each figure is the median round (default 3; quick 1)")
    parser.add_argument("--only", help="comma-separated groups to run (see above); default all")
    parser.add_argument("--size", type=int, default=1024, help="message/body size in bytes (default 1024)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrency of the throughput runs (default 16)")
    parser.add_argument("--sends", type=int, help="sends for the token-fetch count (default 10000; quick 300)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="the JSON report (PNGs go beside it)")
    parser.add_argument("--update-readme", action="store_true",
                        help="rewrite README.md's bench tables from --out (run nothing)")
    parser.add_argument("--range", nargs="+", type=Path, default=[], metavar="REPORT",
                        help="with --update-readme: earlier reports whose goal ratios give the range column")
    args = parser.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds if args.seconds is not None else (0.3 if quick else 5.0)
    args.rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    args.sends = args.sends if args.sends is not None else (300 if quick else 10_000)
    try:
        parse_only(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds positive")
    return args


def cli(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from .report import add_ratios, markdown, update_readme

    if args.update_readme:
        try:
            report = json.loads(args.out.read_text())
            others = [add_ratios(json.loads(path.read_text())) for path in args.range]
        except (OSError, ValueError) as exc:
            print(f"--update-readme: cannot read a report: {exc}; run `make bench` first", file=sys.stderr)
            return 2
        if not update_readme(README, add_ratios(report), others):
            print("--update-readme: README.md has no <!-- bench:table --> ... <!-- /bench:table --> markers", file=sys.stderr)
            return 2
        print(f"README.md tables rewritten from {args.out}", file=sys.stderr)
        return 0
    report = add_ratios(asyncio.run(main(args)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    from .chart import render, render_bridge

    written = [args.out]
    if report["results"].keys() - {"bridge"}:
        written.append(render(report, args.out.with_suffix(".png")))
    bridge_png = render_bridge(report, args.out.with_name("bridge.png") if args.out.name == "latest.json"
                               else args.out.with_name(args.out.stem + "-bridge.png"))
    if bridge_png:
        written.append(bridge_png)
    print(markdown(report))
    print(f"wrote {', '.join(str(p) for p in written)} in {report['wall_seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
