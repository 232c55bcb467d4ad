"""devhost end to end: a real ``python -m devhost`` subprocess serving sample_app against Azurite."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from contextlib import closing

import pytest

from .helpers import app_copy, start_devhost, storage_env

pytestmark = pytest.mark.slow


async def poll_status(http, url: str, until, timeout: float = 30.0, seen: list | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(url) as response:
            body = await response.json(content_type=None) if response.status != 404 else None
        if body is not None and seen is not None:
            seen.append(body)
        if body is not None and until(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"status never matched; last: {body}")
        await asyncio.sleep(0.2)


async def start_orchestration(http, host, name: str, instance_id: str, payload) -> dict:
    async with http.post(f"{host.url}/api/orchestrators/{name}/{instance_id}",
                         params={"code": host.function_key}, json=payload) as response:
        assert response.status == 202, await response.text()
        assert response.headers["Location"].startswith(host.url)
        return await response.json()


def done(body: dict) -> bool:
    return body["runtimeStatus"] in ("Completed", "Failed", "Terminated")


async def test_http_route_params_methods_and_keys(devhost, http):
    url = f"{devhost.url}/api/items/42/a/b%20c"
    async with http.post(url, params={"x": "1", "code": devhost.function_key}, data=b"payload",
                         headers={"x-sample": "hdr"}) as response:
        assert response.status == 200
        assert response.headers["x-echo"] == "1"
        assert response.content_type == "application/json"
        body = await response.json()
    assert body == {"method": "POST", "route": {"id": "42", "rest": "a/b c"}, "query": {"x": "1", "code": devhost.function_key},
                    "body": "payload", "header": "hdr"}
    async with http.get(url) as response:
        assert response.status == 401
    async with http.get(url, params={"code": "wrong"}) as response:
        assert response.status == 401
    async with http.get(url, headers={"x-functions-key": devhost.master_key}) as response:
        assert response.status == 200
    async with http.get(f"{devhost.url}/api/items/abc/x", params={"code": devhost.function_key}) as response:
        assert response.status == 404  # {id:int} constraint
    async with http.delete(url, params={"code": devhost.function_key}) as response:
        assert response.status == 405
    async with http.get(f"{devhost.url}/api/ping") as response:  # anonymous, async, returns str
        assert response.status == 200 and await response.text() == "pong"
    async with http.post(f"{devhost.url}/api/terminate/x", params={"code": devhost.function_key}) as response:
        assert response.status == 401  # admin level needs the master key


async def test_queue_message_processed_with_output(devhost, queues):
    await queues.send("work-items", "hello queue")
    found = await queues.wait_for("work-done", lambda t: json.loads(t)["text"] == "hello queue")
    assert found, devhost.log()[-3000:]
    message = json.loads(found[0])
    assert message["dequeue_count"] == 1 and message["inserted"] and message["pop_receipt"] and message["id"]
    async with queues.client("work-items") as queue:  # deleted after success
        await asyncio.sleep(0.5)
        assert [m async for m in queue.receive_messages()] == []


async def test_failing_message_retries_then_moves_to_poison(devhost, queues):
    await queues.send("work-items", "fail-please")
    poisoned = await queues.wait_for("work-items-poison", lambda t: t == "fail-please", timeout=30)
    assert poisoned, devhost.log()[-3000:]
    # maxDequeueCount 3 in the sample host.json: three attempts, then the poison queue
    assert devhost.log().count("refusing 'fail-please'") == 3
    assert not await queues.wait_for("work-done", lambda t: "fail-please" in t, timeout=0.1)


async def test_timer_runs_on_startup_and_schedule(devhost, queues):
    ticks = await queues.wait_for("timer-ticks", lambda t: "past_due" in t, count=2, timeout=10)
    assert len(ticks) >= 2


async def test_eternal_orchestration_generations_and_custom_status(devhost, http, queues):
    payload = await start_orchestration(http, devhost, "eternal", "eternal-1", {"generations": 3, "pause": 1})
    assert payload["id"] == "eternal-1"
    seen: list = []
    final = await poll_status(http, payload["statusQueryGetUri"], done, seen=seen)
    assert final["runtimeStatus"] == "Completed", final
    assert final["output"] == {"finished_after": 3}
    assert final["customStatus"] == {"gen": 2, "results": [4, 2]}
    assert {s["customStatus"]["gen"] for s in seen if s["customStatus"]} >= {1, 2}
    assert final["input"]["gen"] == 2  # continue_as_new carried the input
    logged = await queues.wait_for("orchestration-log", lambda t: json.loads(t).get("gen") is not None, count=3)
    assert sorted(json.loads(t)["gen"] for t in logged)[:3] == [0, 1, 2]
    # The SDK's own DurableOrchestrationClient.get_status, through an HTTP function.
    async with http.get(f"{devhost.url}/api/status/eternal-1", params={"code": devhost.function_key}) as response:
        body = await response.json()
    assert body == {"runtime_status": "Completed", "custom_status": {"gen": 2, "results": [4, 2]},
                    "output": {"finished_after": 3}}
    async with http.get(f"{devhost.url}/api/status/nobody", params={"code": devhost.function_key}) as response:
        assert response.status == 404


async def test_task_any_race_timer_and_activity(devhost, http):
    slow = await start_orchestration(http, devhost, "race", "race-timer",
                                     {"activity_seconds": 6, "timeout_seconds": 1})
    fast = await start_orchestration(http, devhost, "race", "race-activity",
                                     {"activity_seconds": 0.2, "timeout_seconds": 30})
    started = time.monotonic()
    fast_final = await poll_status(http, fast["statusQueryGetUri"], done, timeout=10)
    slow_final = await poll_status(http, slow["statusQueryGetUri"], done, timeout=10)
    assert time.monotonic() - started < 5  # neither waited for the loser
    assert (fast_final["output"], fast_final["customStatus"]) == ("activity", "activity won")
    assert (slow_final["output"], slow_final["customStatus"]) == ("timeout", "timer won")


def runs_of(marker_dir) -> list[str]:
    path = marker_dir / "runs.log"
    return path.read_text().splitlines() if path.exists() else []


async def wait_for(predicate, timeout: float, what: str, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log()[-3000:]}"
        await asyncio.sleep(0.1)


def work_items(state_dir) -> list[tuple]:
    with closing(sqlite3.connect(str(state_dir / "durable.sqlite"))) as db:
        return db.execute("SELECT instance_id, event_id, name, state FROM activities").fetchall()


async def test_activity_outliving_its_execution_completes_and_is_discarded(devhost, http, tmp_path):
    marker = tmp_path / "runs"
    payload = await start_orchestration(http, devhost, "overlapping", "overlap-1",
                                        {"generations": 1, "seconds": 3, "dir": str(marker), "pause": 0})
    final = await poll_status(http, payload["statusQueryGetUri"], done, timeout=15)
    assert final["runtimeStatus"] == "Completed" and final["output"] == {"finished": 1, "doubled": 2}
    assert runs_of(marker) == ["start g0"]  # the next generation did not wait for it
    await wait_for(lambda: runs_of(marker) == ["start g0", "end g0"], 10, "g0 to finish", devhost.log)
    await wait_for(lambda: "result of activity tracked_run (task 0" in devhost.log(), 5, "the discard log", devhost.log)
    assert "discarded: instance overlap-1 continued as new" in devhost.log()
    still = await poll_status(http, payload["statusQueryGetUri"], done)
    assert still["output"] == final["output"]  # the late result changed nothing


async def test_orchestrator_and_activity_failures(devhost, http):
    broken = await start_orchestration(http, devhost, "broken", "broken-1", None)
    caught = await start_orchestration(http, devhost, "failing_activity", "caught-1", None)
    final = await poll_status(http, broken["statusQueryGetUri"], done)
    assert final["runtimeStatus"] == "Failed" and "broken on purpose" in final["output"]
    final = await poll_status(http, caught["statusQueryGetUri"], done)
    assert final["runtimeStatus"] == "Completed" and "boom" in final["output"]


async def test_external_event_terminate_and_replace(devhost, http):
    waiting = await start_orchestration(http, devhost, "waiter", "waiter-1", None)
    await poll_status(http, waiting["statusQueryGetUri"], lambda b: b["runtimeStatus"] == "Running")
    raise_url = waiting["sendEventPostUri"].replace("{eventName}", "go")
    async with http.post(raise_url, json=json.dumps({"n": 7})) as response:  # what the SDK sends
        assert response.status == 202
    final = await poll_status(http, waiting["statusQueryGetUri"], done)
    assert final["output"] == {"got": {"n": 7}}
    async with http.post(raise_url, json="{}") as response:
        assert response.status == 410
    # terminate through the SDK client (admin-level route), then start again with the same id
    stuck = await start_orchestration(http, devhost, "waiter", "waiter-2", None)
    async with http.post(f"{devhost.url}/api/terminate/waiter-2", params={"code": devhost.master_key}) as response:
        assert response.status == 202
    final = await poll_status(http, stuck["statusQueryGetUri"], done)
    assert final["runtimeStatus"] == "Terminated" and final["output"] == "stopped by test"
    again = await start_orchestration(http, devhost, "waiter", "waiter-2", None)
    body = await poll_status(http, again["statusQueryGetUri"], lambda b: b["runtimeStatus"] == "Running")
    assert body["output"] is None
    async with http.post(f"{devhost.url}/api/orchestrators/nope/x", params={"code": devhost.function_key}) as response:
        assert response.status == 500  # the SDK raises: unknown orchestrator


async def test_restart_resumes_running_orchestration(azurite, http, tmp_path):
    app_dir = app_copy(tmp_path)
    env = storage_env(azurite, WORK_QUEUE="work-items-restart")
    state = tmp_path / "state"
    host = await start_devhost(app_dir, state, env, tmp_path / "first.log")
    try:
        payload = await start_orchestration(http, host, "eternal", "survivor", {"generations": 4, "pause": 2})
        await poll_status(http, payload["statusQueryGetUri"],
                          lambda b: (b["customStatus"] or {}).get("gen", -1) >= 1)
    finally:
        await host.kill()
    host = await start_devhost(app_dir, state, env, tmp_path / "second.log")
    try:
        status_url = f"{host.url}/runtime/webhooks/durabletask/instances/survivor"
        final = await poll_status(http, status_url, done, timeout=30)
        assert final["runtimeStatus"] == "Completed", host.log()[-3000:]
        assert final["output"] == {"finished_after": 4}
        assert "resumed instance survivor" in host.log()
        assert await host.stop() == 0
    finally:
        await host.kill()


async def test_restart_reruns_activity_of_an_earlier_execution(azurite, http, tmp_path):
    """kill -9 while an activity of a previous execution runs: like the real host's re-delivered
    work item it runs again after the restart and its result is discarded; the current
    execution goes on undisturbed."""
    app_dir = app_copy(tmp_path)
    env = storage_env(azurite, WORK_QUEUE="work-items-orphans")
    state, marker = tmp_path / "state", tmp_path / "runs"
    host = await start_devhost(app_dir, state, env, tmp_path / "first.log")
    try:
        payload = await start_orchestration(http, host, "overlapping", "orphans",
                                            {"generations": 1, "seconds": 6, "dir": str(marker), "pause": 5})
        await poll_status(http, payload["statusQueryGetUri"], lambda b: b["customStatus"] == {"gen": 1})
        await wait_for(lambda: runs_of(marker) == ["start g0"], 10, "g0 to start", host.log)
    finally:
        await host.kill()
    assert runs_of(marker) == ["start g0"]  # killed mid-run
    assert [(i[0], i[1], i[2]) for i in work_items(state)] == [("orphans", 0, "tracked_run")]

    host = await start_devhost(app_dir, state, env, tmp_path / "second.log")
    try:
        status_url = f"{host.url}/runtime/webhooks/durabletask/instances/orphans"
        final = await poll_status(http, status_url, done, timeout=20)
        assert final["runtimeStatus"] == "Completed", host.log()[-3000:]
        assert final["output"] == {"finished": 1, "doubled": 2}  # the new generation proceeded normally
        await wait_for(lambda: runs_of(marker) == ["start g0", "start g0", "end g0"], 15,
                       "g0 to run again", host.log)
        await wait_for(lambda: "result of activity tracked_run (task 0" in host.log(), 5, "the discard log", host.log)
        log = host.log()
        assert "activity tracked_run (task 0) of execution" in log and "running it again" in log
        assert "discarded: instance orphans is Completed" in log or "discarded: instance orphans continued as new" in log
        assert work_items(state) == []
        again = await poll_status(http, status_url, done)
        assert again["output"] == final["output"] and again["lastUpdatedTime"] == final["lastUpdatedTime"]
        assert await host.stop() == 0
    finally:
        await host.kill()


async def test_stop_releases_running_queue_message(azurite, queues, tmp_path):
    env = storage_env(azurite, WORK_QUEUE="work-items-stop")
    host = await start_devhost(app_copy(tmp_path), tmp_path / "state", env, tmp_path / "host.log")
    try:
        await queues.send("work-items-stop", "slow-1")
        deadline = time.monotonic() + 15
        while "working on slow-1" not in host.log():
            assert time.monotonic() < deadline, host.log()[-2000:]
            await asyncio.sleep(0.1)
        started = time.monotonic()
        assert await host.stop() == 0
        assert time.monotonic() - started < 12  # 5 s grace, then the sync function is abandoned
    finally:
        await host.kill()
    async with queues.client("work-items-stop") as queue:  # visible again at once, not after the lease
        messages = [m async for m in queue.receive_messages(visibility_timeout=1)]
    assert len(messages) == 1 and messages[0].dequeue_count == 2
