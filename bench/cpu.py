"""CPU time of another process, read from /proc (Linux; no psutil): the emulator's cost per message.

``process_cpu_seconds(pid)`` sums the on-CPU nanoseconds of every thread of ``pid``
(``/proc/PID/task/*/schedstat``, first field), which is finer than the clock ticks of
``/proc/PID/stat``; where schedstat is missing it falls back to utime + stime from ``stat``.
Returns ``None`` when the process cannot be read (not Linux, or it has exited), so callers
report "unknown" rather than a made-up figure.
"""

from __future__ import annotations

import os
from pathlib import Path


def _from_schedstat(pid: int) -> float | None:
    total, seen = 0, False
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
            seen = True
        except (OSError, ValueError, IndexError):  # a thread that just ended, or no schedstat
            continue
    return total / 1e9 if seen else None


def user_system_seconds(pid: int | None) -> tuple[float, float] | None:
    """(user, system) CPU seconds of ``pid`` from ``/proc/PID/stat`` (clock-tick resolution), or None."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may contain spaces) start after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks  # utime, stime (fields 14 and 15 of stat)


def _from_stat(pid: int) -> float | None:
    split = user_system_seconds(pid)
    return None if split is None else split[0] + split[1]


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds ``pid`` has used so far, or None when it cannot be read."""
    if pid is None:
        return None
    value = _from_schedstat(pid)
    return value if value is not None else _from_stat(pid)


class CpuMeter:
    """``start()`` / ``stop()`` around a measured interval of another process; ``seconds`` in between."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._start: float | None = None
        self.seconds: float | None = None

    def start(self) -> None:
        self._start = process_cpu_seconds(self.pid)
        self.seconds = None

    def stop(self) -> float | None:
        end = process_cpu_seconds(self.pid)
        self.seconds = None if end is None or self._start is None else max(0.0, end - self._start)
        return self.seconds

    def per_message_us(self, count: int) -> float | None:
        """Microseconds of CPU per message over the last interval (None when unknown or no messages)."""
        if self.seconds is None or not count:
            return None
        return round(self.seconds / count * 1e6, 1)


class ProcessMeters:
    """Several processes' CPU over a worker's measured interval: pass :meth:`on_mark` to ``run_worker``.

    ``record(result, count)`` adds ``{name}_cpu_us_per_message`` to a worker's result for each process.
    """

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.meters = {name: CpuMeter(pid) for name, pid in pids.items()}

    def on_mark(self, mark: str) -> None:
        for meter in self.meters.values():
            if mark == "start":
                meter.start()
            elif mark == "stop":
                meter.stop()

    def record(self, result: dict, count: int) -> dict:
        for name, meter in self.meters.items():
            result[f"{name}_cpu_us_per_message"] = meter.per_message_us(count)
        return result
