"""`make bench` keeps working: a very short run writes the JSON and the chart (no timing asserted)."""

import asyncio
import json
import sys

from emulator.launcher import REPO_ROOT


async def test_short_bench_run_writes_json_and_png(tmp_path):
    out = tmp_path / "result.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench", "--seconds", "0.3", "--repeat", "1", "--sends", "300", "--out", str(out),
        cwd=str(REPO_ROOT), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 150)
    assert process.returncode == 0, err.decode()[-3000:]
    report = json.loads(out.read_text())
    results = report["results"]
    assert set(results["ws_echo"]) == {"python relay", "python relay + uvloop", "node hyco-ws"}
    assert set(results["http"]) == {"python relay", "python relay + uvloop", "node hyco-https"}
    for run in results["ws_echo"].values():
        assert run["count"] > 0 and run["cpu_us_per_message"] > 0
    for run in results["http"].values():
        assert run["c1"]["errors"] == 0 and run["c16"]["errors"] == 0 and run["c16"]["count"] > 0
    # One token for every send of the run: the credential's cache works across requests.
    assert results["tokens"]["token_fetches"] == 1
    assert out.with_suffix(".png").stat().st_size > 10_000
