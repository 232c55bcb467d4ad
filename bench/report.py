"""From a bench report: ratios to the Node clients, the goal check, the markdown tables, the README.

Ratios are ``this library / Node`` for the same figure in the same run (and ``bridge / direct``
for the bridge), so CPU and p99 ratios below 1 and throughput ratios above 1 are better.
:func:`add_ratios` stores them in the report; :func:`markdown` prints everything;
:func:`update_readme` rewrites the README between ``<!-- bench:table -->`` and
``<!-- /bench:table -->`` from a saved report, so the README never states figures by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

WS_REFERENCE = "node hyco-ws"
HTTP_REFERENCE = "node hyco-https"
README_BEGIN, README_END = "<!-- bench:table -->", "<!-- /bench:table -->"

# (figure, what, the ratio's key path in report["ratios"], comparison, target); issue 14's goals.
GOALS: list[tuple[str, str, tuple, str, float]] = [
    ("WebSocket echo CPU/msg vs hyco-ws", "python relay", ("ws_echo", "python relay", "cpu"), "<=", 0.67),
    ("WebSocket echo round trips/s vs hyco-ws", "python relay", ("ws_echo", "python relay", "throughput"), ">=", 1.0),
    ("WebSocket echo p99 vs hyco-ws", "python relay", ("ws_echo", "python relay", "p99"), "<=", 1.0),
    ("HTTP listener CPU/req vs hyco-https, c=1", "python relay", ("http", "python relay", "c1", "cpu"), "<=", 0.67),
    ("HTTP listener CPU/req vs hyco-https, c=16", "python relay", ("http", "python relay", "c16", "cpu"), "<=", 0.67),
    ("HTTP req/s vs hyco-https, c=1", "python relay", ("http", "python relay", "c1", "throughput"), ">=", 1.0),
    ("HTTP req/s vs hyco-https, c=16", "python relay", ("http", "python relay", "c16", "throughput"), ">=", 1.0),
    ("HTTP p99 vs hyco-https, c=1", "python relay", ("http", "python relay", "c1", "p99"), "<=", 1.0),
    ("HTTP p99 vs hyco-https, c=16", "python relay", ("http", "python relay", "c16", "p99"), "<=", 1.0),
    ("relay_send p50 latency vs request()", "bridge", ("bridge", "relay_send", "c1", "p50"), "<=", 1.2),
    ("relay_send p99 latency vs request()", "bridge", ("bridge", "relay_send", "c1", "p99"), "<=", 1.2),
    ("queue-driven sends/s vs request() loop", "bridge", ("bridge", "queue_send", "throughput"), ">=", 0.8),
    ("inbound fan-in stored/s vs Azurite raw enqueue", "bridge", ("bridge", "fanin", "throughput"), ">=", 0.8),
    ("cold start to first relay_send byte (s)", "bridge", ("bridge", "coldstart", "first_byte_s"), "<", 1.0),
]


def ratio(value, reference) -> float | None:
    if value is None or reference in (None, 0):
        return None
    return round(value / reference, 3)


def _figure_ratios(run: dict, ref: dict, cpu_key: str) -> dict:
    return {
        "cpu": ratio(run.get(cpu_key), ref.get(cpu_key)),
        "throughput": ratio(run.get("per_second"), ref.get("per_second")),
        "p99": ratio(run.get("p99_ms"), ref.get("p99_ms")),
        "emulator_cpu": ratio(run.get("emulator_cpu_us_per_message"), ref.get("emulator_cpu_us_per_message")),
    }


def compute_ratios(results: dict, concurrency: int = 16) -> dict:
    """``{"ws_echo": {client: {cpu, throughput, p99, emulator_cpu}}, "http": {client: {c1: …, cN: …}}, "bridge": …}``."""
    ratios: dict = {}
    ws = results.get("ws_echo") or {}
    if WS_REFERENCE in ws:
        ratios["ws_echo"] = {name: _figure_ratios(run, ws[WS_REFERENCE], "cpu_us_per_message")
                             for name, run in ws.items() if name != WS_REFERENCE}
    http = results.get("http") or {}
    if HTTP_REFERENCE in http:
        ref = http[HTTP_REFERENCE]
        ratios["http"] = {
            name: {key: _figure_ratios(run[key], ref[key], "listener_cpu_us_per_request")
                   for key in ("c1", f"c{concurrency}") if key in run and key in ref}
            for name, run in http.items() if name != HTTP_REFERENCE
        }
    bridge = results.get("bridge") or {}
    out: dict = {}
    send = bridge.get("relay_send")
    if send:
        out["relay_send"] = {
            key: {"p50": ratio(fig["bridge"]["p50_ms"], fig["direct"]["p50_ms"]),
                  "p99": ratio(fig["bridge"]["p99_ms"], fig["direct"]["p99_ms"]),
                  "throughput": ratio(fig["bridge"]["per_second"], fig["direct"]["per_second"])}
            for key, fig in send.items() if isinstance(fig, dict) and "bridge" in fig and "direct" in fig
        }
    queue = bridge.get("queue_send")
    if queue:
        out["queue_send"] = {"throughput": ratio(queue["bridge"].get("per_second"), queue["direct"].get("per_second"))}
        if queue.get("azurite"):  # the drain against Azurite's own receive + delete rate (not a goal: the bound)
            out["queue_send"]["vs_azurite_ceiling"] = ratio(queue["bridge"].get("per_second"), queue["azurite"].get("per_second"))
    fanin = bridge.get("fanin")
    if fanin:
        out["fanin"] = {"throughput": ratio(fanin["bridge"].get("per_second"), fanin["azurite"].get("per_second"))}
    cold = bridge.get("coldstart")
    if cold:
        out["coldstart"] = {"first_byte_s": cold.get("first_byte_s")}
    if out:
        ratios["bridge"] = out
    return ratios


def _dig(data: dict, path: tuple):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def goal_check(ratios: dict, concurrency: int = 16) -> list[dict]:
    """Each goal with its measured value and whether it is met (None when not measured in this run)."""
    checks = []
    for figure, client, path, op, target in GOALS:
        path = tuple(f"c{concurrency}" if key == "c16" else key for key in path)
        value = _dig(ratios, path)
        met = None
        if value is not None:
            met = value <= target if op == "<=" else value >= target if op == ">=" else value < target
        checks.append({"goal": figure, "client": client, "value": value, "target": f"{op} {target}", "met": met})
    return checks


def add_ratios(report: dict) -> dict:
    concurrency = report["settings"].get("concurrency", 16)
    report["ratios"] = compute_ratios(report["results"], concurrency)
    report["goals"] = goal_check(report["ratios"], concurrency)
    return report


# ---- markdown ----------------------------------------------------------------------------------
def _n(value, fmt: str = ",.0f", none: str = "–") -> str:
    return none if value is None else format(value, fmt)


def _x(value) -> str:
    return "–" if value is None else f"{value:.2f}×"


def relay_tables(report: dict) -> list[str]:
    results, ratios = report["results"], report.get("ratios", {})
    conc = report["settings"]["concurrency"]
    lines: list[str] = []
    ws, raw = results.get("ws_echo") or {}, results.get("raw") or {}
    if ws or raw:
        lines += [
            "| WebSocket echo, 1 KB, sequential | round trips/s | p50 ms | p99 ms | client CPU µs/msg (listener + sender) "
            "| emulator CPU µs/msg | vs hyco-ws: CPU / rate / p99 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for group, prefix in (("ws_echo", ""), ("raw", "raw, no relay: ")):
            for name, run in (results.get(group) or {}).items():
                r = (ratios.get("ws_echo") or {}).get(name) if group == "ws_echo" else None
                versus = f"{_x(r['cpu'])} / {_x(r['throughput'])} / {_x(r['p99'])}" if r else ""
                lines.append(f"| {prefix}{name} | {_n(run['per_second'])} | {run['p50_ms']:.2f} | {run['p99_ms']:.2f} "
                             f"| {_n(run.get('cpu_us_per_message'))} | {_n(run.get('emulator_cpu_us_per_message'))} | {versus} |")
        lines.append("")
    http = results.get("http") or {}
    if http:
        lines += [
            "| HTTP 1 KB request/response, listener | concurrency | req/s | p50 / p99 ms | listener CPU µs/req "
            "| sender CPU µs/req | emulator CPU µs/req | vs hyco-https: CPU / rate / p99 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, run in http.items():
            for key in ("c1", f"c{conc}"):
                fig = run.get(key)
                if not fig:
                    continue
                r = ((ratios.get("http") or {}).get(name) or {}).get(key)
                versus = f"{_x(r['cpu'])} / {_x(r['throughput'])} / {_x(r['p99'])}" if r else ""
                lines.append(
                    f"| {name} | {key[1:]} | {_n(fig['per_second'])} | {fig['p50_ms']:.2f} / {fig['p99_ms']:.2f} "
                    f"| {_n(fig.get('listener_cpu_us_per_request'))} | {_n(fig.get('sender_cpu_us_per_request'))} "
                    f"| {_n(fig.get('emulator_cpu_us_per_message'))} | {versus} |")
        lines.append("")
    tokens = results.get("tokens")
    if tokens:
        lines += [f"Token fetches for {tokens.get('sends', 0):,} sends with a one-hour managed-identity token: "
                  f"**{tokens.get('token_fetches', '?')}**.", ""]
    return lines


def _cpus(run: dict, *names: str) -> str:
    """``a / b / c`` of ``{name}_cpu_us_per_message`` (or the sender's own figure) for a bridge run."""
    def one(name: str):
        key = "sender_cpu_us_per_request" if name == "sender" else f"{name}_cpu_us_per_message"
        return _n(run.get(key))
    return " / ".join(one(name) for name in names)


def bridge_tables(report: dict) -> list[str]:
    bridge = report["results"].get("bridge") or {}
    ratios = (report.get("ratios") or {}).get("bridge") or {}
    lines: list[str] = []
    send = bridge.get("relay_send")
    if send:
        lines += ["| relay_send (HTTP function → relay → on-prem service) vs request() to the same listener | concurrency "
                  "| req/s | p50 / p99 ms | CPU µs/req: app / emulator / on-prem listener / sender "
                  "| added p50 / p99 ms | bridge ÷ direct: p50 / p99 / rate |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for key, fig in send.items():
            if not isinstance(fig, dict) or "bridge" not in fig:
                continue
            r = ratios.get("relay_send", {}).get(key) or {}
            for label, run in (("bridge (relay_send)", fig["bridge"]), ("direct (request())", fig["direct"])):
                extra = (f"{fig['added_p50_ms']:+.2f} / {fig['added_p99_ms']:+.2f} | "
                         f"{_x(r.get('p50'))} / {_x(r.get('p99'))} / {_x(r.get('throughput'))}"
                         if label.startswith("bridge") else " | ")
                lines.append(f"| {label} | {key[1:]} | {_n(run['per_second'])} | {run['p50_ms']:.2f} / {run['p99_ms']:.2f} "
                             f"| {_cpus(run, 'app', 'emulator', 'onprem_listener', 'sender')} | {extra} |")
        lines.append("")
    queue = bridge.get("queue_send")
    if queue:
        r = ratios.get("queue_send") or {}
        ceiling = queue.get("azurite")
        lines += ["| queue-driven sends, `relay-outbound` → relay → on-prem | messages | concurrency | messages/s | lost "
                  "| CPU µs/msg: app / emulator / on-prem listener / Azurite / sender | vs request() loop"
                  + (" / vs Azurite ceiling |" if ceiling else " |"),
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines.append(f"| bridge (queue trigger) | {queue['bridge']['messages']} | {queue['bridge']['concurrency']} "
                     f"| {_n(queue['bridge'].get('per_second'))} | {queue['bridge'].get('lost')} "
                     f"| {_cpus(queue['bridge'], 'app', 'emulator', 'onprem_listener', 'azurite', 'sender')} "
                     f"| {_x(r.get('throughput'))}" + (f" / {_x(r.get('vs_azurite_ceiling'))} |" if ceiling else " |"))
        lines.append(f"| direct (request() loop) | {queue['direct']['messages']} | {queue['direct']['concurrency']} "
                     f"| {_n(queue['direct'].get('per_second'))} | {queue['direct'].get('lost')} "
                     f"| {_cpus(queue['direct'], 'app', 'emulator', 'onprem_listener', 'azurite', 'sender')} | |")
        if ceiling:
            lines.append(f"| Azurite ceiling: fetch {ceiling.get('batch')} + delete each, no app or relay | {ceiling.get('messages')} "
                         f"| {ceiling.get('concurrency')} | {_n(ceiling.get('per_second'))} | {ceiling.get('lost')} "
                         f"| {_cpus(ceiling, 'app', 'emulator', 'onprem_listener', 'azurite', 'sender')} | |")
        lines.append("")
    fanin, scale = bridge.get("fanin"), bridge.get("scaleout")
    if fanin or scale:
        lines += ["| inbound fan-in, relayed HTTP senders → stored queue messages | listeners asked / seen online "
                  "| concurrency | messages/s | p99 ms | accepted / stored / lost | CPU µs/msg: app / emulator / Azurite "
                  "| vs Azurite raw enqueue |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        runs = []
        if fanin:
            runs.append(("bridge, K=1", fanin["bridge"]))
        for k, run in (scale or {}).items():
            if k != "1" or not fanin:
                runs.append((f"bridge, K={k}", run))
        for label, run in runs:
            r = ratio(run.get("per_second"), fanin["azurite"].get("per_second")) if fanin else None
            lines.append(f"| {label} | {run.get('listeners_requested')} / {run.get('listeners_seen')} | {run.get('concurrency')} "
                         f"| {_n(run.get('per_second'))} | {_n(run.get('p99_ms'), '.2f')} "
                         f"| {run.get('accepted')} / {run.get('stored')} / {run.get('lost')} "
                         f"| {_cpus(run, 'app', 'emulator', 'azurite')} | {_x(r)} |")
        if fanin:
            raw = fanin["azurite"]
            lines.append(f"| Azurite raw enqueue (azure-storage-queue async) | | {raw.get('concurrency')} "
                         f"| {_n(raw.get('per_second'))} | {_n(raw.get('p99_ms'), '.2f')} | "
                         f"| – / – / {_n(raw.get('azurite_cpu_us_per_message'))} | |")
        lines.append("")
    cold = bridge.get("coldstart")
    if cold:
        lines += ["| cold start (fresh devhost process) | import function_app s | process start → listening s "
                  "| first relay_send: first byte s | spawn → first byte s |", "|---|---:|---:|---:|---:|",
                  f"| median of {len(cold.get('runs', []))} | {_n(cold.get('import_s'), '.3f')} | {_n(cold.get('ready_s'), '.3f')} "
                  f"| {_n(cold.get('first_request_s'), '.3f')} | {_n(cold.get('first_byte_s'), '.3f')} |", ""]
    return lines


def goal_table(report: dict, others: list[dict] | None = None) -> list[str]:
    """The goal check; with ``others`` (earlier reports, ratios added) a column with the range over all runs."""
    goals = report.get("goals") or []
    measured = [g for g in goals if g["value"] is not None]
    if not measured:
        return []
    runs = [report, *(others or [])]
    ranged = len(runs) > 1
    header = "| goal (issue 14) | latest run | " + (f"range over {len(runs)} runs | " if ranged else "") + "target | met |"
    lines = [header, "|---|---:|" + ("---:|" if ranged else "") + "---:|:---:|"]
    for g in measured:
        row = f"| {g['goal']} | {g['value']:.2f} | "
        if ranged:
            values = [v["value"] for run in runs for v in run.get("goals") or []
                      if v["goal"] == g["goal"] and v["value"] is not None]
            row += f"{min(values):.2f}–{max(values):.2f} | "
        lines.append(row + f"{g['target']} | {'yes' if g['met'] else '**no**'} |")
    return lines + [""]


def markdown(report: dict, others: list[dict] | None = None) -> str:
    """Every table of a report: goals (with the range over ``others`` too), relay figures, bridge figures."""
    s = report["settings"]
    load = report["machine"].get("load_average")
    head = (f"Run {report['when']} ({report['machine']['cpus']} cores"
            f"{f', load average {load[0]:.1f} at the end' if load else ''}, Python {report['machine']['python']}, "
            f"{s['seconds']:g} s per figure, median of {s['rounds']} interleaved round(s){', quick mode' if s.get('quick') else ''}).")
    if others:
        head += " Ranges: " + ", ".join(run["when"] for run in others) + " and this run."
    return "\n".join([head, "", *goal_table(report, others), *relay_tables(report), *bridge_tables(report)]).rstrip() + "\n"


def update_readme(readme: Path, report: dict, others: list[dict] | None = None) -> bool:
    """Replace the text between the bench markers with :func:`markdown`; False when the markers are missing."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_BEGIN) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        return False
    block = f"{README_BEGIN}\n<!-- written by `python -m bench --update-readme` from bench/results/latest.json; do not edit -->\n\n"
    block += markdown(report, others) + "\n" + README_END
    readme.write_text(pattern.sub(lambda _: block, text, count=1))
    return True
