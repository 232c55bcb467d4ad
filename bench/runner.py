"""Running bench workers: one JSON summary line each, with marks around the measured interval."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


async def run_worker(*cmd: str, env: dict | None = None, timeout: float = 120,
                     on_mark: Callable[[str], None] | None = None) -> dict:
    """Run a worker; return the last JSON line it prints (its summary).

    Lines ``{"mark": NAME}`` are not results: ``on_mark(NAME)`` is called as each arrives, so
    the runner can sample another process's CPU (the emulator's) at the start and stop of the
    worker's measured interval.
    """
    process = await asyncio.create_subprocess_exec(
        *cmd, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    errors = asyncio.get_running_loop().create_task(process.stderr.read())

    async def read() -> dict | None:
        last = None
        while line := await process.stdout.readline():
            if not line.startswith(b"{"):
                continue
            data = json.loads(line)
            if set(data) == {"mark"}:
                if on_mark is not None:
                    on_mark(data["mark"])
                continue
            last = data
        return last

    try:
        last = await asyncio.wait_for(read(), timeout)
        await asyncio.wait_for(process.wait(), 10)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        errors.cancel()
        raise RuntimeError(f"{' '.join(cmd[:4])} did not finish within {timeout:.0f} s") from None
    err = await errors
    if process.returncode != 0 or last is None:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({process.returncode}): {err.decode(errors='replace')[-2000:]}")
    return last


def median_run(runs: list[dict], key=lambda run: run["per_second"]) -> dict:
    """The run with the median throughput (runs are interleaved, so drift hits every client alike)."""
    ordered = sorted(runs, key=key)
    chosen = dict(ordered[len(ordered) // 2])
    chosen["runs"] = [round(key(run), 1) for run in runs]
    return chosen
