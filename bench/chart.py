"""Render a benchmark report as one PNG: throughput and latency, Python vs Node, with the raw floor."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI machines
import matplotlib.pyplot as plt  # noqa: E402

PYTHON, NODE, RAW = "#3572A5", "#8CC84B", "#BBBBBB"


def _color(name: str) -> str:
    if name.startswith("(raw)"):
        return RAW
    return NODE if "node" in name else PYTHON


def _bars(ax, labels, values, title, unit, notes=None):
    """Horizontal bars; ``notes`` (same length) are printed after each value, e.g. CPU per message."""
    colors = [_color(label) for label in labels]
    bars = ax.barh(labels, values, color=colors)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(unit)
    ax.invert_yaxis()
    for index, (bar, value) in enumerate(zip(bars, values)):
        note = f"  ({notes[index]})" if notes and notes[index] else ""
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.0f}{note}", va="center", fontsize=8)
    ax.margins(x=0.6 if notes else 0.25)


def _cpu(result: dict, key: str = "cpu_us_per_message") -> str:
    value = result.get(key)
    return f"{value:,.0f} µs CPU/msg" if value else ""


def render(report: dict, path: Path) -> Path:
    results = report["results"]
    fig, axes = plt.subplots(2, 2, figsize=(13.5, 7))
    ws = results["ws_echo"]
    raw = results["raw"]
    labels = list(ws) + [f"(raw) {k}" for k in raw]
    _bars(axes[0][0], labels, [ws[k]["per_second"] for k in ws] + [raw[k]["per_second"] for k in raw],
          f"WebSocket echo, {report['settings']['size']} B, sequential (raw: no relay)", "round trips / s",
          [_cpu(ws[k]) for k in ws] + [_cpu(raw[k]) for k in raw])
    _bars(axes[0][1], [f"{k} p50" for k in ws] + [f"{k} p99" for k in ws],
          [ws[k]["p50_ms"] * 1000 for k in ws] + [ws[k]["p99_ms"] * 1000 for k in ws],
          "WebSocket echo latency", "microseconds")
    http = results["http"]
    conc = report["settings"]["concurrency"]
    _bars(axes[1][0], [f"{k} c=1" for k in http] + [f"{k} c={conc}" for k in http],
          [http[k]["c1"]["per_second"] for k in http] + [http[k][f"c{conc}"]["per_second"] for k in http],
          f"HTTP request/response, {report['settings']['size']} B, listener compared", "requests / s",
          [""] * len(http) + [_cpu(http[k][f"c{conc}"], "listener_cpu_us_per_request") for k in http])
    _bars(axes[1][1], [f"{k} p50" for k in http] + [f"{k} p99" for k in http],
          [http[k]["c1"]["p50_ms"] * 1000 for k in http] + [http[k]["c1"]["p99_ms"] * 1000 for k in http],
          "HTTP latency at concurrency 1", "microseconds")
    tokens = results.get("tokens", {})
    fig.suptitle(
        f"Azure Relay bridge benchmark, {report['when']} ({report['machine']['cpus']} cores); "
        f"token fetches per {tokens.get('sends', 0):,} sends: {tokens.get('token_fetches', '?')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(report: dict) -> str:
    """The README's benchmark table, from a report (printed by `make bench`)."""
    results, conc = report["results"], report["settings"]["concurrency"]
    lines = [
        "| WebSocket echo, 1 KB, sequential | round trips/s | p50 ms | p99 ms | client CPU µs/msg |",
        "|---|---:|---:|---:|---:|",
    ]
    for group, prefix in (("ws_echo", ""), ("raw", "raw, no relay: ")):
        for name, run in results[group].items():
            lines.append(f"| {prefix}{name} | {run['per_second']:,.0f} | {run['p50_ms']:.2f} | {run['p99_ms']:.2f} "
                         f"| {run['cpu_us_per_message']:,.0f} |")
    lines += [
        "",
        f"| HTTP 1 KB request/response, listener | req/s c=1 | p50 / p99 ms c=1 | req/s c={conc} | p50 / p99 ms c={conc} "
        "| listener CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, run in results["http"].items():
        c1, cn = run["c1"], run[f"c{conc}"]
        lines.append(f"| {name} | {c1['per_second']:,.0f} | {c1['p50_ms']:.2f} / {c1['p99_ms']:.2f} | {cn['per_second']:,.0f} "
                     f"| {cn['p50_ms']:.2f} / {cn['p99_ms']:.2f} | {cn.get('listener_cpu_us_per_request', 0):,.0f} |")
    tokens = results.get("tokens", {})
    lines += ["", f"Token fetches for {tokens.get('sends', 0):,} sends with a one-hour managed-identity token: "
              f"**{tokens.get('token_fetches', '?')}**."]
    return "\n".join(lines)
