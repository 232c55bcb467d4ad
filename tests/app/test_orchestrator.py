"""The listener orchestrator driven through the Durable SDK's own handle() with hand-built histories."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bridge import generation
from bridge.supervisor import overlap_for

from .durable_driver import CALL_ACTIVITY, CONTINUE_AS_NEW, CREATE_TIMER, Execution, Simulation, parse_time

pytestmark = pytest.mark.filterwarnings("ignore:azure.functions df_loads:DeprecationWarning")

T0 = datetime(2026, 11, 29, 10, 0, 0, tzinfo=timezone.utc)
W, O = 300, 30


@pytest.fixture(scope="module")
def handle(app_functions):
    return app_functions["listener_orchestrator"].get_user_function()


def start_input(**extra):
    return {"connection": "inbound", "windowSeconds": W, "overlapSeconds": O, "generation": 0, **extra}


def counts(window_id, stored=3, **extra):
    return {"connection": "inbound", "windowId": window_id, "ok": True, "online": True, "httpRequests": stored,
            "wsStreams": 0, "wsMessages": 0, "stored": stored, "claimChecked": 1, "storeFailures": 0, "lastError": None,
            "seconds": W, **extra}


def test_overlap_defaults():
    assert overlap_for(300) == 30 and overlap_for(1500) == 60  # host.json: maxQueuePollingInterval 10 s
    assert overlap_for(5) == 2 and overlap_for(12) == 5  # too short for the polling rule: just below W/2
    assert all(overlap_for(w) < w / 2 for w in range(3, 2000))


def test_first_generation_step_by_step(handle):
    ex = Execution(handle, "listener_orchestrator", start_input(), now=T0)
    new = ex.episode()
    assert [a["actionType"] for a in new] == [CALL_ACTIVITY, CREATE_TIMER]
    a, timer = new
    assert a["functionName"] == "listener_window"
    assert '"windowId": "g0-a"' in a["input"] and '"report": false' in a["input"]
    assert parse_time(timer["fireAt"]) == T0 + timedelta(seconds=W - O)
    assert ex.custom_status["phase"] == "listening" and ex.custom_status["windowsRunning"] == ["g0-a"]

    ex.fire(timer["_id"])  # W - O: window B starts while A is still running
    new = ex.episode()
    assert [x["actionType"] for x in new] == [CALL_ACTIVITY, CREATE_TIMER]
    b, now_timer = new
    assert '"windowId": "g0-b"' in b["input"] and '"report": true' in b["input"]
    assert parse_time(now_timer["fireAt"]) == T0 + timedelta(seconds=W - O)
    assert ex.custom_status["windowsRunning"] == ["g0-a", "g0-b"]

    ex.fire(now_timer["_id"])
    assert ex.episode() == []  # waiting for A
    ex.at(T0 + timedelta(seconds=W)).complete(a["_id"], counts("g0-a", stored=7))
    new = ex.episode()
    assert [x["actionType"] for x in new] == [CONTINUE_AS_NEW]
    nxt = ex.continued_with
    assert nxt["generation"] == 1 and nxt["totals"]["stored"] == 7 and nxt["totals"]["windows"] == 1
    assert nxt["carry"]["windowId"] == "g0-b"
    assert parse_time(nxt["carry"]["endsAt"]) == T0 + timedelta(seconds=2 * W - O)
    assert ex.custom_status["phase"] == "continuing" and ex.custom_status["online"] is True


def test_second_generation_waits_for_the_carry_and_collects_its_report(handle):
    carry_end = T0 + timedelta(seconds=2 * W - O)
    inp = start_input(generation=1, totals={"windows": 1, "stored": 7},
                      carry={"windowId": "g0-b", "startedAt": "x", "endsAt": carry_end.isoformat()})
    ex = Execution(handle, "listener_orchestrator", inp, now=T0 + timedelta(seconds=W + 1))
    [timer] = ex.episode()
    assert parse_time(timer["fireAt"]) == carry_end - timedelta(seconds=O)  # A starts `overlap` before the carry ends
    assert ex.custom_status["phase"] == "waiting"
    ex.fire(timer["_id"])
    a, t = ex.episode()
    ex.fire(t["_id"])
    b, zero = ex.episode()
    ex.fire(zero["_id"])
    ex.episode()
    ex.at(parse_time(timer["fireAt"]) + timedelta(seconds=W)).complete(a["_id"], counts("g1-a", stored=2))
    [collect] = ex.episode()
    assert collect["functionName"] == "collect_listener_reports" and '"windowIds": ["g0-b"]' in collect["input"]
    ex.complete(collect["_id"], {"reports": {"g0-b": counts("g0-b", stored=5)}, "missing": []})
    ex.episode()
    nxt = ex.continued_with
    assert nxt["totals"]["stored"] == 7 + 2 + 5 and nxt["totals"]["windows"] == 3 and nxt["totals"]["lostWindows"] == 0
    assert nxt["carry"]["windowId"] == "g1-b"


def test_a_window_that_cannot_listen_backs_off_and_the_loop_continues(handle):
    ex = Execution(handle, "listener_orchestrator", start_input(), now=T0)
    a, timer = ex.episode()
    failed = counts("g0-a", stored=0, ok=False, online=False, seconds=0.2,
                    lastError="ForbiddenError: the identity lacks the Azure Relay Listener role")
    ex.at(T0 + timedelta(seconds=1)).complete(a["_id"], failed)
    new = ex.episode()
    assert ex.actions[timer["_id"]]["isCanceled"] is True  # the W - O timer is cancelled
    [backoff] = new
    assert parse_time(backoff["fireAt"]) == T0 + timedelta(seconds=1 + generation.backoff_seconds(1))
    status = ex.custom_status
    assert status["phase"] == "backing-off" and status["online"] is False
    assert "Listener role" in status["lastError"]["message"]
    ex.fire(backoff["_id"])
    ex.episode()
    nxt = ex.continued_with
    assert nxt["consecutiveFailures"] == 1 and nxt["totals"]["failedWindows"] == 1 and nxt["carry"] is None
    # the next failure backs off longer, a success resets the counter
    assert generation.backoff_seconds(2) > generation.backoff_seconds(1)
    assert generation.backoff_seconds(50) == generation.MAX_BACKOFF_SECONDS


def test_an_activity_exception_is_recorded_and_does_not_end_the_loop(handle):
    ex = Execution(handle, "listener_orchestrator", start_input(), now=T0)
    a, timer = ex.episode()
    ex.fire(timer["_id"])
    b, zero = ex.episode()
    ex.fire(zero["_id"])
    ex.episode()
    ex.at(T0 + timedelta(seconds=W)).fail(a["_id"], "Timeout value of 00:30:00 was exceeded")
    ex.episode()
    nxt = ex.continued_with
    assert nxt is not None, ex.state
    assert nxt["totals"]["failedWindows"] == 1 and "Timeout value" in nxt["lastError"]["message"]
    assert nxt["totals"]["lostWindows"] == 1
    assert nxt["carry"]["windowId"] == "g0-b"  # B keeps a listener connected


def test_a_missing_report_is_counted_not_dropped(handle):
    carry_end = T0 + timedelta(seconds=W)
    inp = start_input(generation=3, carry={"windowId": "g2-b", "startedAt": "x", "endsAt": carry_end.isoformat()})
    ex = Execution(handle, "listener_orchestrator", inp, now=carry_end - timedelta(seconds=O))
    a, t = ex.episode()
    ex.fire(t["_id"])
    b, zero = ex.episode()
    ex.fire(zero["_id"])
    ex.episode()
    ex.at(ex.now + timedelta(seconds=O)).complete(a["_id"], counts("g3-a"))
    [collect] = ex.episode()
    ex.complete(collect["_id"], {"reports": {}, "missing": ["g2-b"]})
    ex.episode()
    nxt = ex.continued_with
    assert nxt["totals"]["lostWindows"] == 1 and "g2-b" in nxt["lastError"]["message"]


def test_custom_status_survives_a_full_replay_and_replay_is_deterministic(handle):
    ex = Execution(handle, "listener_orchestrator", start_input(), now=T0)
    a, timer = ex.episode()
    ex.fire(timer["_id"])
    ex.episode()
    first_actions = [dict(x) for x in ex.actions]
    # Replay everything again as a fresh invocation would (all events are old now).
    for event in ex.history:
        event["IsPlayed"] = True
    replayed = Execution(handle, "listener_orchestrator", start_input(), now=T0)
    replayed.history = ex.history
    replayed.actions = []
    replayed.episode()
    assert [(x["actionType"], x.get("functionName"), x.get("fireAt")) for x in replayed.actions[: len(first_actions)]] == [
        (x["actionType"], x.get("functionName"), x.get("fireAt")) for x in first_actions
    ]
    assert replayed.custom_status and replayed.custom_status["windowsRunning"] == ["g0-a", "g0-b"]


def test_input_without_a_connection_fails_clearly(handle):
    ex = Execution(handle, "listener_orchestrator", {}, now=T0)
    with pytest.raises(Exception, match="needs an input like"):
        ex.episode()


def test_several_generations_keep_a_listener_connected_and_count_everything(handle, app_functions):
    """5 generations on a virtual clock: windows overlap, at most two run at once, every window's counts arrive."""
    stored = {}

    def outcome(window_id, inp):
        stored[window_id] = len(stored) + 1
        return "ok", counts(window_id, stored=stored[window_id])

    settings_input = start_input()
    sim = Simulation(handle, settings_input, start=T0, outcome=outcome)
    for _ in range(5):
        assert sim.run_generation() is not None
    windows = sorted(sim.windows, key=lambda w: w["start"])
    assert len(windows) == 10
    for prev, cur in zip(windows, windows[1:]):
        assert cur["start"] <= prev["end"] - timedelta(seconds=O), (prev, cur)  # overlap, never a gap
    for instant in [w["start"] for w in windows] + [w["end"] - timedelta(seconds=1) for w in windows]:
        assert 1 <= sum(1 for x in windows if x["start"] <= instant < x["end"]) <= 2  # never none, at most two
    totals = sim.input["totals"]
    # every window except the last B (still running) has been accounted for
    assert totals["windows"] == 9 and totals["lostWindows"] == 0
    assert totals["stored"] == sum(stored.values()) - stored[windows[-1]["id"]]
    assert all(s is not None for s in sim.statuses)
    assert sim.episodes <= 5 * 6


def test_generations_recover_after_consecutive_failures(handle):
    def outcome(window_id, inp):
        if window_id in ("g0-a", "g1-a"):
            return "early", (0.5, counts(window_id, ok=False, online=False, lastError="AuthorizationFailedError: 401"))
        return "ok", counts(window_id)

    sim = Simulation(handle, start_input(), start=T0, outcome=outcome)
    sim.run_generation()
    assert sim.input["consecutiveFailures"] == 1 and sim.input["carry"] is None
    sim.run_generation()
    assert sim.input["consecutiveFailures"] == 2
    sim.run_generation()
    assert sim.input["consecutiveFailures"] == 0 and sim.input["online"] is True
    assert sim.input["totals"]["failedWindows"] == 2
    assert "401" in sim.input["lastError"]["message"]


def test_window_a_failing_before_its_timer_is_recorded_and_replaced_at_once(handle):
    """A fails as an activity before the W - O timer: task_any returns the failed A, whose .result is an exception.

    Before the fix the orchestration went to Failed ("'Exception' object has no attribute 'get'").
    """
    ex = Execution(handle, "listener_orchestrator", start_input(totals={"windows": 4, "stored": 11}), now=T0)
    a, timer = ex.episode()
    ex.at(T0 + timedelta(seconds=12)).fail(a["_id"], "Activity function 'listener_window' failed: worker process exited")
    new = ex.episode()
    assert ex.state.get("error") is None, ex.state
    assert ex.actions[timer["_id"]]["isCanceled"] is True
    b, zero = new  # a crash is not a listen failure: the replacement starts at once, no backoff
    assert b["actionType"] == CALL_ACTIVITY and '"windowId": "g0-b"' in b["input"] and '"report": true' in b["input"]
    assert parse_time(zero["fireAt"]) == T0 + timedelta(seconds=12)
    ex.fire(zero["_id"])
    ex.episode()
    nxt = ex.continued_with
    assert nxt is not None, ex.state
    assert nxt["totals"]["failedWindows"] == 1 and nxt["totals"]["stored"] == 11 and nxt["totals"]["windows"] == 4
    assert nxt["consecutiveFailures"] == 1 and nxt["carry"]["windowId"] == "g0-b"
    assert nxt["totals"]["lostWindows"] == 1  # its counts died with the worker (what it acknowledged is stored)
    assert parse_time(nxt["carry"]["endsAt"]) == T0 + timedelta(seconds=12 + W)
    assert "worker process exited" in nxt["lastError"]["message"] and nxt["lastError"]["windowId"] == "g0-a"
    assert ex.custom_status["phase"] == "continuing"


def test_window_a_failing_before_its_timer_while_a_carry_runs_still_collects_the_carry(handle):
    """Failed A with a carried window: the replacement starts, the carry's report is still collected."""
    carry_end = T0 + timedelta(seconds=W)
    inp = start_input(generation=2, totals={"windows": 3, "stored": 9},
                      carry={"windowId": "g1-b", "startedAt": "x", "endsAt": carry_end.isoformat()})
    ex = Execution(handle, "listener_orchestrator", inp, now=carry_end - timedelta(seconds=O))
    a, timer = ex.episode()
    ex.at(carry_end - timedelta(seconds=O - 3)).fail(a["_id"], "Activity function 'listener_window' failed: killed")
    b, zero = ex.episode()
    assert ex.state.get("error") is None, ex.state
    ex.fire(zero["_id"])
    [collect_timer] = ex.episode()  # the carry's report is due after it ends
    ex.fire(collect_timer["_id"])
    [collect] = ex.episode()
    ex.complete(collect["_id"], {"reports": {"g1-b": counts("g1-b", stored=4)}, "missing": []})
    ex.episode()
    nxt = ex.continued_with
    assert nxt["totals"]["stored"] == 13 and nxt["totals"]["windows"] == 4 and nxt["totals"]["failedWindows"] == 1
    assert "killed" in nxt["lastError"]["message"] and nxt["carry"]["windowId"] == "g2-b"


def test_a_failed_collect_activity_counts_the_carry_as_lost(handle):
    carry_end = T0 + timedelta(seconds=W)
    inp = start_input(generation=3, carry={"windowId": "g2-b", "startedAt": "x", "endsAt": carry_end.isoformat()})
    ex = Execution(handle, "listener_orchestrator", inp, now=carry_end - timedelta(seconds=O))
    a, t = ex.episode()
    ex.fire(t["_id"])
    b, zero = ex.episode()
    ex.fire(zero["_id"])
    ex.episode()
    ex.at(carry_end + timedelta(seconds=W)).complete(a["_id"], counts("g3-a"))
    [collect] = ex.episode()
    ex.fail(collect["_id"], "Activity function 'collect_listener_reports' failed: storage down")
    ex.episode()
    nxt = ex.continued_with
    assert nxt is not None, ex.state
    assert nxt["totals"]["lostWindows"] == 1 and "storage down" in nxt["lastError"]["message"]
    assert nxt["totals"]["windows"] == 1 and nxt["totals"]["stored"] == 3


def test_a_report_of_a_window_that_ran_again_counts_it_lost(handle):
    carry_end = T0 + timedelta(seconds=W)
    inp = start_input(generation=3, carry={"windowId": "g2-b", "startedAt": "x", "endsAt": carry_end.isoformat()})
    ex = Execution(handle, "listener_orchestrator", inp, now=carry_end - timedelta(seconds=O))
    a, t = ex.episode()
    ex.fire(t["_id"])
    b, zero = ex.episode()
    ex.fire(zero["_id"])
    ex.episode()
    ex.at(carry_end + timedelta(seconds=W)).complete(a["_id"], counts("g3-a"))
    [collect] = ex.episode()
    ex.complete(collect["_id"], {"reports": {"g2-b": counts("g2-b", stored=4, restarts=1)}, "missing": []})
    ex.episode()
    nxt = ex.continued_with
    assert nxt["totals"]["stored"] == 7 and nxt["totals"]["lostWindows"] == 1 and "g2-b" in nxt["lastError"]["message"]
