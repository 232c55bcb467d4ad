"""`make bench` keeps working: a quick run writes the JSON and both charts (no timing asserted).

One run covers the relay figures (Python vs Node, emulator CPU, ratios) and the bridge figures
(the real app under devhost with Azurite and the emulator); quick mode runs the two halves side
by side to stay short. Scale-out and cold start restart the host several times, so they are
left to the full `make bench` (their code paths are the fan-in's and relay_send's).
"""

import asyncio
import json
import sys

from emulator.launcher import REPO_ROOT

GROUPS = "ws_echo,http,tokens,relay_send,queue_send,fanin"


async def test_quick_run_reports_every_figure_and_loses_nothing(tmp_path):
    out = tmp_path / "result.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench", "--quick", "--only", GROUPS, "--out", str(out),
        cwd=str(REPO_ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, err = await asyncio.wait_for(process.communicate(), 110)
    assert process.returncode == 0, err.decode()[-3000:]
    assert "| goal (issue 14) |" in stdout.decode()
    report = json.loads(out.read_text())
    results = report["results"]

    # Relay figures: every client measured, with the emulator's CPU beside its own.
    assert set(results["ws_echo"]) == {"python relay", "node hyco-ws"}
    assert set(results["http"]) == {"python relay", "node hyco-https"}
    for run in results["ws_echo"].values():
        assert run["count"] > 0 and run["cpu_us_per_message"] > 0 and run["emulator_cpu_us_per_message"] > 0
    for run in results["http"].values():
        for key in ("c1", "c16"):
            assert run[key]["errors"] == 0 and run[key]["count"] > 0
            assert run[key]["listener_cpu_us_per_request"] > 0 and run[key]["sender_cpu_us_per_request"] > 0
            assert run[key]["emulator_cpu_us_per_message"] > 0
    ratios = report["ratios"]
    assert set(ratios["ws_echo"]["python relay"]) == {"cpu", "throughput", "p99", "emulator_cpu"}
    assert ratios["http"]["python relay"]["c16"]["cpu"] > 0
    # One token for every send of the run: the credential's cache works across requests.
    assert results["tokens"]["token_fetches"] == 1

    # Bridge figures: both paths answered every request, and nothing acknowledged was lost.
    bridge = results["bridge"]
    for key in ("c1", "c16"):
        for side in ("bridge", "direct"):
            assert bridge["relay_send"][key][side]["count"] > 0 and bridge["relay_send"][key][side]["errors"] == 0
    queue = bridge["queue_send"]
    assert queue["bridge"]["lost"] == 0 and queue["bridge"]["poisoned"] == 0 and queue["direct"]["lost"] == 0
    fanin = bridge["fanin"]
    assert fanin["bridge"]["lost"] == 0 and fanin["bridge"]["accepted"] > 0 and fanin["bridge"]["listeners_seen"] >= 1
    assert fanin["azurite"]["count"] > 0
    assert set(ratios["bridge"]) == {"relay_send", "queue_send", "fanin"}
    assert {goal["goal"] for goal in report["goals"] if goal["value"] is not None} >= {
        "WebSocket echo CPU/msg vs hyco-ws", "HTTP req/s vs hyco-https, c=16", "inbound fan-in stored/s vs Azurite raw enqueue"}

    assert (tmp_path / "result.png").stat().st_size > 10_000
    assert (tmp_path / "result-bridge.png").stat().st_size > 10_000
