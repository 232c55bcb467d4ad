"""The bench's pure parts: ratios, the goal check, --only, the README rewrite, /proc CPU, the emulator log."""

import os
import time

import pytest

from bench.__main__ import parse_args, parse_only
from bench.bridge import listeners_online
from bench.cpu import CpuMeter, process_cpu_seconds
from bench.report import README_BEGIN, README_END, add_ratios, markdown, update_readme


def fig(per_second, p99, cpu, key="cpu_us_per_message", emulator=100.0):
    return {"count": 1000, "per_second": per_second, "p50_ms": p99 / 2, "p99_ms": p99, key: cpu,
            "emulator_cpu_us_per_message": emulator, "sender_cpu_us_per_request": 50.0}


def sample_report() -> dict:
    http_key = "listener_cpu_us_per_request"
    direct = fig(1000, 2.0, 80)
    return {
        "when": "2026-12-01T00:00:00Z",
        "machine": {"cpus": 2, "python": "3.11.7"},
        "settings": {"seconds": 5.0, "size": 1024, "concurrency": 16, "rounds": 3, "quick": False},
        "results": {
            "ws_echo": {"python relay": fig(3000, 0.5, 100), "node hyco-ws": fig(2000, 1.0, 200)},
            "http": {
                "python relay": {"c1": fig(900, 4.0, 60, http_key), "c16": fig(3000, 20.0, 70, http_key)},
                "node hyco-https": {"c1": fig(1000, 2.0, 100, http_key), "c16": fig(4000, 10.0, 100, http_key)},
            },
            "bridge": {
                "relay_send": {"c1": {"bridge": fig(800, 3.0, 0), "direct": direct, "added_p50_ms": 0.5, "added_p99_ms": 1.0}},
                "queue_send": {"bridge": {"messages": 500, "concurrency": 16, "per_second": 90.0, "lost": 0},
                               "direct": {"messages": 500, "concurrency": 16, "per_second": 100.0, "lost": 0}},
                "fanin": {"bridge": {"per_second": 50.0, "lost": 0}, "azurite": {"per_second": 100.0}},
                "coldstart": {"import_s": 0.5, "ready_s": 0.8, "first_request_s": 0.1, "first_byte_s": 0.9, "runs": [0.9]},
            },
        },
    }


def test_ratios_are_this_library_over_node_and_bridge_over_direct():
    report = add_ratios(sample_report())
    ws = report["ratios"]["ws_echo"]["python relay"]
    assert ws == {"cpu": 0.5, "throughput": 1.5, "p99": 0.5, "emulator_cpu": 1.0}
    http = report["ratios"]["http"]["python relay"]
    assert http["c1"]["cpu"] == 0.6 and http["c16"]["throughput"] == 0.75 and http["c16"]["p99"] == 2.0
    bridge = report["ratios"]["bridge"]
    assert bridge["relay_send"]["c1"] == {"p50": 1.5, "p99": 1.5, "throughput": 0.8}
    assert bridge["queue_send"]["throughput"] == 0.9 and bridge["fanin"]["throughput"] == 0.5
    met = {goal["goal"]: goal["met"] for goal in report["goals"]}
    assert met["WebSocket echo CPU/msg vs hyco-ws"] is True
    assert met["HTTP req/s vs hyco-https, c=16"] is False
    assert met["relay_send p50 latency vs request()"] is False
    assert met["cold start to first relay_send byte (s)"] is True


def test_missing_figures_give_no_ratio_and_no_verdict():
    report = sample_report()
    del report["results"]["ws_echo"]["node hyco-ws"]
    report = add_ratios(report)
    assert "ws_echo" not in report["ratios"]
    verdict = {goal["goal"]: goal for goal in report["goals"]}["WebSocket echo CPU/msg vs hyco-ws"]
    assert verdict["value"] is None and verdict["met"] is None


def test_markdown_prints_ratios_and_goals():
    text = markdown(add_ratios(sample_report()))
    assert "| WebSocket echo CPU/msg vs hyco-ws | 0.50 | <= 0.67 | yes |" in text
    assert "0.50× / 1.50× / 0.50×" in text  # CPU / rate / p99 vs hyco-ws
    assert "| HTTP req/s vs hyco-https, c=16 | 0.75 | >= 1.0 | **no** |" in text


def test_update_readme_rewrites_only_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README_BEGIN}\nold figures\n{README_END}\nafter\n")
    assert update_readme(readme, add_ratios(sample_report()))
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith(f"{README_END}\nafter\n")
    assert "old figures" not in text and "| goal (issue 14) |" in text
    assert update_readme(readme, add_ratios(sample_report()))  # idempotent: markers kept
    assert text == readme.read_text()


def test_update_readme_without_markers_changes_nothing(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    assert not update_readme(readme, add_ratios(sample_report()))
    assert readme.read_text() == "no markers here\n"


def test_only_accepts_groups_and_aliases_and_names_the_valid_ones():
    assert parse_only("relay") == {"raw", "ws_echo", "http", "tokens"}
    assert parse_only("http, coldstart") == {"http", "coldstart"}
    assert "scaleout" in parse_only(None)
    with pytest.raises(ValueError, match="unknown group 'htp'.*ws_echo"):
        parse_only("htp")


def test_quick_mode_defaults_and_explicit_values_win():
    quick = parse_args(["--quick"])
    assert (quick.seconds, quick.rounds, quick.sends) == (0.3, 1, 300)
    full = parse_args(["--rounds", "2", "--seconds", "4"])
    assert (full.seconds, full.rounds, full.sends, full.quick) == (4.0, 2, 10_000, False)
    assert parse_args(["--repeat", "5"]).rounds == 5  # the old spelling still works


def test_cpu_of_a_process_is_read_from_proc():
    meter = CpuMeter(os.getpid())
    meter.start()
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert meter.stop() > 0.0
    assert meter.per_message_us(10) > 0
    assert process_cpu_seconds(None) is None
    assert CpuMeter(None).per_message_us(10) is None


def test_listeners_online_follows_the_emulator_log(tmp_path):
    log = tmp_path / "emulator.log"
    log.write_text(
        "INFO emulator.server: listener a online on bridge-in (1 listeners)\n"
        "INFO emulator.server: listener b online on bridge-in (2 listeners)\n"
        "INFO emulator.server: listener c online on other (1 listeners)\n"
        "INFO emulator.server: listener a offline on bridge-in\n"
    )
    assert listeners_online(log, "bridge-in") == 1
    assert listeners_online(tmp_path / "missing.log", "bridge-in") == 0


def test_goal_table_gives_the_range_over_several_runs(tmp_path):
    latest, earlier = sample_report(), sample_report()
    earlier["when"] = "2026-11-30T00:00:00Z"
    earlier["results"]["ws_echo"]["python relay"]["cpu_us_per_message"] = 150.0  # 0.75× of hyco-ws's 200
    text = markdown(add_ratios(latest), [add_ratios(earlier)])
    assert "| WebSocket echo CPU/msg vs hyco-ws | 0.50 | 0.50–0.75 | <= 0.67 | yes |" in text
    assert "2026-11-30T00:00:00Z" in text
