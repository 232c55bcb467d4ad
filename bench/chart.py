"""Render a bench report as PNGs: the relay figures (Python vs Node, with the raw floor) and the bridge."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI machines
import matplotlib.pyplot as plt  # noqa: E402

PYTHON, NODE, RAW, BRIDGE, DIRECT = "#3572A5", "#8CC84B", "#BBBBBB", "#E07B39", "#3572A5"


def _color(name: str) -> str:
    if name.startswith("(raw)"):
        return RAW
    if name.startswith("bridge") or name.startswith("K="):
        return BRIDGE
    return NODE if "node" in name else PYTHON


def _bars(ax, labels, values, title, unit, notes=None):
    """Horizontal bars; ``notes`` (same length) are printed after each value, e.g. CPU per message."""
    values = [value or 0 for value in values]
    colors = [_color(label) for label in labels]
    bars = ax.barh(labels, values, color=colors)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(unit)
    ax.invert_yaxis()
    for index, (bar, value) in enumerate(zip(bars, values)):
        note = f"  ({notes[index]})" if notes and notes[index] else ""
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.0f}{note}", va="center", fontsize=8)
    ax.margins(x=0.95 if notes else 0.25)


def _cpu(result: dict, key: str = "cpu_us_per_message") -> str:
    value = result.get(key)
    emulator = result.get("emulator_cpu_us_per_message")
    text = f"{value:,.0f} µs CPU/msg" if value else ""
    if emulator:
        text += f", emulator {emulator:,.0f}"
    return text


def _machine(report: dict) -> str:
    """Cores and the load average at the end of the run: a loaded machine's figures say so on the chart."""
    machine = report["machine"]
    load = machine.get("load_average")
    return f"{machine['cpus']} cores" + (f", load average {load[0]:.1f}" if load else "")


def _empty(ax, text: str) -> None:
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="#777777")


def render(report: dict, path: Path) -> Path:
    """The relay figures: WebSocket echo and HTTP listener, rate and latency."""
    results = report["results"]
    fig, axes = plt.subplots(2, 2, figsize=(14, 7.5))
    ws, raw = results.get("ws_echo") or {}, results.get("raw") or {}
    size = report["settings"]["size"]
    if ws or raw:
        labels = list(ws) + [f"(raw) {k}" for k in raw]
        _bars(axes[0][0], labels, [ws[k]["per_second"] for k in ws] + [raw[k]["per_second"] for k in raw],
              f"WebSocket echo, {size} B, sequential (raw: no relay)", "round trips / s",
              [_cpu(ws[k]) for k in ws] + [_cpu(raw[k]) for k in raw])
        _bars(axes[0][1], [f"{k} p50" for k in ws] + [f"{k} p99" for k in ws],
              [ws[k]["p50_ms"] * 1000 for k in ws] + [ws[k]["p99_ms"] * 1000 for k in ws],
              "WebSocket echo latency", "microseconds")
    else:
        _empty(axes[0][0], "WebSocket echo not run")
        _empty(axes[0][1], "")
    http = results.get("http") or {}
    conc = report["settings"]["concurrency"]
    if http:
        _bars(axes[1][0], [f"{k} c=1" for k in http] + [f"{k} c={conc}" for k in http],
              [http[k]["c1"]["per_second"] for k in http] + [http[k][f"c{conc}"]["per_second"] for k in http],
              f"HTTP request/response, {size} B, listener compared", "requests / s",
              [_cpu(http[k]["c1"], "listener_cpu_us_per_request") for k in http]
              + [_cpu(http[k][f"c{conc}"], "listener_cpu_us_per_request") for k in http])
        _bars(axes[1][1], [f"{k} p50" for k in http] + [f"{k} p99" for k in http],
              [http[k]["c1"]["p50_ms"] * 1000 for k in http] + [http[k]["c1"]["p99_ms"] * 1000 for k in http],
              "HTTP latency at concurrency 1", "microseconds")
    else:
        _empty(axes[1][0], "HTTP listener not run")
        _empty(axes[1][1], "")
    tokens = results.get("tokens", {})
    fig.suptitle(
        f"Azure Relay bridge benchmark, {report['when']} ({_machine(report)}); "
        f"token fetches per {tokens.get('sends', 0):,} sends: {tokens.get('token_fetches', '?')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_bridge(report: dict, path: Path) -> Path | None:
    """The bridge figures (relay_send, queue drain, fan-in, scale-out, cold start); None when none ran."""
    bridge = report["results"].get("bridge") or {}
    if not bridge:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(14, 7.5))
    send = bridge.get("relay_send") or {}
    if send:
        labels, values, notes = [], [], []
        for key, pair in send.items():
            for name in ("bridge", "direct"):
                run = pair[name]
                labels.append(f"{name} c={key[1:]}")
                values.append(run["per_second"])
                notes.append(f"p50 {run['p50_ms']:.2f} / p99 {run['p99_ms']:.2f} ms")
        _bars(axes[0][0], labels, values, "relay_send (function → relay → on-prem) vs request() direct", "requests / s", notes)
    else:
        _empty(axes[0][0], "relay_send not run")
    queue = bridge.get("queue_send")
    fanin, scale = bridge.get("fanin"), bridge.get("scaleout") or {}
    labels, values, notes = [], [], []
    if queue:
        labels += ["bridge: queue drain", "direct: request() loop"]
        values += [queue["bridge"].get("per_second"), queue["direct"].get("per_second")]
        notes += [f"{queue['bridge']['messages']} msgs, lost {queue['bridge']['lost']}",
                  f"c={queue['direct']['concurrency']}, lost {queue['direct']['lost']}"]
        if queue.get("azurite"):
            labels.append("Azurite ceiling: fetch + delete")
            values.append(queue["azurite"].get("per_second"))
            notes.append(f"batch {queue['azurite'].get('batch')}, no app")
    if fanin:
        labels += ["bridge: fan-in stored", "direct: Azurite raw enqueue"]
        values += [fanin["bridge"]["per_second"], fanin["azurite"]["per_second"]]
        notes += [f"lost {fanin['bridge']['lost']}", f"c={fanin['azurite'].get('concurrency')}"]
    if labels:
        _bars(axes[0][1], labels, values, "queue-driven sends and inbound fan-in", "messages / s", notes)
    else:
        _empty(axes[0][1], "queue figures not run")
    if scale:
        _bars(axes[1][0], [f"K={k}" for k in scale], [run["per_second"] for run in scale.values()],
              "inbound scale-out (RELAY_LISTENERS_PER_CONNECTION = K)", "messages / s",
              [f"{run.get('listeners_seen')} of {run.get('listeners_requested')} listeners online, lost {run.get('lost')}"
               for run in scale.values()])
    else:
        _empty(axes[1][0], "scale-out not run")
    cold = bridge.get("coldstart")
    if cold:
        _bars(axes[1][1], ["import function_app", "process start → listening", "first relay_send", "spawn → first byte"],
              [cold["import_s"] * 1000, cold["ready_s"] * 1000, cold["first_request_s"] * 1000, cold["first_byte_s"] * 1000],
              "cold start of a fresh host process (goal: first byte < 1 s)", "milliseconds")
    else:
        _empty(axes[1][1], "cold start not run")
    fig.suptitle(f"The bridge end to end (devhost + Azurite + emulator), {report['when']} ({_machine(report)})",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
