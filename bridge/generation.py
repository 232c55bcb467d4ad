"""The eternal listener orchestration, one generation at a time (deterministic, no I/O).

Each generation of ``relay-listener-{connection}``:

1. waits (durable timer) until ``overlap`` seconds before the window carried over from the
   previous generation ends, if there is one;
2. starts window **A** (activity ``listener_window``, ``windowSeconds`` long) and a timer at
   ``A start + window - overlap``;
3. when the timer fires first, starts window **B**, which keeps a listener connected while A
   winds down and while the orchestration continues as new, then waits for A's result;
4. collects the *report* of the previous generation's B (activity ``collect_listener_reports``):
   a window that crosses a continue-as-new boundary cannot deliver its result to the next
   execution, so it writes its counts to a report blob and the next generation reads them;
5. adds A's and the collected counts to the running totals (carried in the input), and
   ``continue_as_new`` with B as the new carry-over.

So at most two windows run at a time, consecutive windows overlap by ``overlap`` seconds, every
window's counts reach the totals (a report that never appears is counted in ``lostWindows``
with ``lastError``, not dropped silently), and the history of one generation stays small.

Failures never end the loop: a window that could not listen (``ok: false``), ended early, or
failed as an activity is recorded in ``lastError``/``failedWindows``; when no window is running
the generation backs off with a durable timer (5 s doubling to 5 min) before continuing as new.
The custom status is set on every episode (never only when not replaying).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Generator

HEARTBEAT_SECONDS = 3.0
"""How often a running window writes its live counts to its heartbeat blob (the admin status route reads them)."""

ACTIVITY = "listener_window"
COLLECT = "collect_listener_reports"
REPORT_GRACE_SECONDS = 20
"""How long after a carried window's end its report is expected (listener close + stream drain)."""
MAX_BACKOFF_SECONDS = 300
TOTAL_KEYS = (
    "windows", "httpRequests", "wsStreams", "wsMessages", "stored", "claimChecked", "storeFailures", "failedWindows", "lostWindows",
)
_SUMMED = ("httpRequests", "wsStreams", "wsMessages", "stored", "claimChecked", "storeFailures")


def report_grace(window_seconds: int) -> int:
    """Seconds after a carried window's end by which its report blob must exist (at most half a window)."""
    return max(1, min(REPORT_GRACE_SECONDS, window_seconds // 2))


def backoff_seconds(consecutive_failures: int) -> int:
    return min(MAX_BACKOFF_SECONDS, 5 * 2 ** max(0, consecutive_failures - 1))


def _iso(value: datetime) -> str:
    return value.isoformat()


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


def normalize(data: Any) -> dict:
    """The generation input with defaults filled in (raises ValueError without a connection)."""
    if not isinstance(data, dict) or not data.get("connection"):
        raise ValueError("the listener orchestration needs an input like {\"connection\": \"inbound\", \"windowSeconds\": 300}")
    window = int(data.get("windowSeconds") or 300)
    overlap = int(data.get("overlapSeconds") or max(1, window // 10))
    overlap = max(1, min(overlap, window // 2))
    totals = {key: int((data.get("totals") or {}).get(key, 0)) for key in TOTAL_KEYS}
    return {
        "connection": data["connection"],
        "windowSeconds": window,
        "overlapSeconds": overlap,
        "generation": int(data.get("generation") or 0),
        "totals": totals,
        "carry": data.get("carry"),
        "consecutiveFailures": int(data.get("consecutiveFailures") or 0),
        "lastError": data.get("lastError"),
        "lastWindow": data.get("lastWindow"),
        "online": data.get("online"),
        "listener": max(1, int(data.get("listener") or 1)),
    }


def _add(state: dict, counts: dict) -> None:
    totals = state["totals"]
    totals["windows"] += 1
    for key in _SUMMED:
        totals[key] += int(counts.get(key) or 0)
    state["lastWindow"] = {k: counts.get(k) for k in ("windowId", "ok", "online", "stored", "startedAt", "endedAt", "seconds")}


def _error(state: dict, message: str, now: datetime, window_id: str | None = None) -> None:
    state["lastError"] = {"message": message[:500], "at": _iso(now), "windowId": window_id}


def window_prefix(listener: int) -> str:
    """Window ids of listener 1 are ``g{n}-a``/``-b``; listener n > 1 prefixes ``l{n}-`` (report blobs must not clash)."""
    return "" if listener == 1 else f"l{listener}-"


def _status(context: Any, state: dict, phase: str, running: list[str]) -> None:
    context.set_custom_status({
        "connection": state["connection"],
        "listener": state["listener"],
        "generation": state["generation"],
        "phase": phase,
        "online": state["online"],
        "windowsRunning": running,
        "counts": dict(state["totals"]),
        "consecutiveFailures": state["consecutiveFailures"],
        "lastError": state["lastError"],
        "lastWindow": state["lastWindow"],
    })


def _finished(task: Any, window_id: str) -> tuple[dict | None, str | None]:
    """(result, failure) of a task that has finished: a failed task's ``.result`` is its exception."""
    result = task.result
    if isinstance(result, BaseException):
        return None, f"window {window_id} failed: {result}"
    if not isinstance(result, dict):
        return None, f"window {window_id} returned {type(result).__name__}, not its counts"
    return result, None


def run_generation(context: Any) -> Generator[Any, Any, None]:
    """The orchestrator body (``yield from`` it); ends with ``continue_as_new``."""
    state = normalize(context.get_input())
    connection, window, overlap, gen = state["connection"], state["windowSeconds"], state["overlapSeconds"], state["generation"]
    carry = state["carry"]
    running = [carry["windowId"]] if carry else []

    # 1. Start our first window `overlap` seconds before the carried-over window ends.
    if carry and _parse(carry["endsAt"]) - timedelta(seconds=overlap) > context.current_utc_datetime:
        _status(context, state, "waiting", running)
        yield context.create_timer(_parse(carry["endsAt"]) - timedelta(seconds=overlap))

    # 2. Window A and the timer that starts window B.
    prefix = window_prefix(state["listener"])
    a_id = f"{prefix}g{gen}-a"
    a_started = context.current_utc_datetime
    task_a = context.call_activity(ACTIVITY, {"connection": connection, "seconds": window, "windowId": a_id, "report": False})
    next_timer = context.create_timer(a_started + timedelta(seconds=window - overlap))
    running = running + [a_id]
    _status(context, state, "listening", running)
    winner = yield context.task_any([task_a, next_timer])

    new_carry = None
    a_result: dict | None = None
    a_failure: str | None = None
    if winner is next_timer:
        # 3. Window B crosses the generation boundary; A's result is awaited here.
        b_id = f"{prefix}g{gen}-b"
        b_started = context.current_utc_datetime
        task_b = context.call_activity(ACTIVITY, {"connection": connection, "seconds": window, "windowId": b_id, "report": True})
        new_carry = {"windowId": b_id, "startedAt": _iso(b_started), "endsAt": _iso(b_started + timedelta(seconds=window))}
        running = [r for r in running if r != (carry or {}).get("windowId")] + [b_id]
        _status(context, state, "listening", running)
        # Durable Python schedules a task only when it is yielded, and yielding B alone would wait
        # for it: race it against a timer due now, so B starts and the generation moves on.
        yield context.task_any([task_b, context.create_timer(b_started)])
        try:
            yield task_a
        except Exception:  # the activity itself failed (host timeout, crash): recorded below
            pass
        a_result, a_failure = _finished(task_a, a_id)
    else:
        # A ended before its timer. The SDK's task_any returns the finished child even when it
        # *failed*; a failed task's .result is then the exception, not a dict.
        next_timer.cancel()
        a_result, a_failure = _finished(task_a, a_id)
        if a_result is not None and a_result.get("ok", True):
            a_failure = f"window {a_id} ended after {a_result.get('seconds')} s instead of {window} s"
        if a_result is None or a_result.get("ok", True):
            # A could listen (or crashed as an activity: worker died, instance recycled): start the
            # replacement at once instead of backing off, so the outage is only the scheduling lag.
            # A window that could not listen at all (ok: false) backs off below instead.
            b_id = f"{prefix}g{gen}-b"
            b_started = context.current_utc_datetime
            task_b = context.call_activity(ACTIVITY, {"connection": connection, "seconds": window, "windowId": b_id, "report": True})
            new_carry = {"windowId": b_id, "startedAt": _iso(b_started), "endsAt": _iso(b_started + timedelta(seconds=window))}
            running = running + [b_id]
            _status(context, state, "listening", [r for r in running if r != a_id])
            yield context.task_any([task_b, context.create_timer(b_started)])
    now = context.current_utc_datetime
    running = [r for r in running if r != a_id]

    # 4. The previous generation's carried window has ended by now (or soon): collect its report.
    if carry:
        report_due = _parse(carry["endsAt"]) + timedelta(seconds=report_grace(window))
        if report_due > context.current_utc_datetime:
            _status(context, state, "collecting", running)
            yield context.create_timer(report_due)
        collect = context.call_activity(COLLECT, {"connection": connection, "windowIds": [carry["windowId"]],
                                                  "staleSeconds": 3 * window})
        try:
            yield collect
        except Exception:
            pass
        collected = collect.result
        if not isinstance(collected, dict):
            collected = {"reports": {}, "missing": [carry["windowId"]], "error": str(collected)}
        for counts in (collected.get("reports") or {}).values():
            _add(state, counts)
            if counts.get("restarts"):
                state["totals"]["lostWindows"] += 1
                _error(state, f"window {counts.get('windowId')} was interrupted (worker lost) and ran again; its counts "
                              "since its last heartbeat before the interruption are missing", now, counts.get("windowId"))
            if not counts.get("ok", True):
                state["totals"]["failedWindows"] += 1
                _error(state, counts.get("lastError") or "window failed", now, counts.get("windowId"))
        for missing in collected.get("missing") or []:
            state["totals"]["lostWindows"] += 1
            detail = collected.get("error") or "no report blob (host recycled or report write failed)"
            _error(state, f"window {missing} did not report its counts: {detail}", now, missing)
        running = [r for r in running if r != carry["windowId"]]

    # 5. Account for window A.
    if a_result is not None:
        _add(state, a_result)
        state["online"] = bool(a_result.get("online")) and bool(a_result.get("ok", True))
        if a_result.get("lastError"):
            _error(state, a_result["lastError"], now, a_id)
    if a_failure is None and a_result is not None and not a_result.get("ok", True):
        a_failure = a_result.get("lastError") or f"window {a_id} could not listen"
    if a_result is None and a_failure is not None:
        # The activity failed (worker died, instance recycled, timeout): its counts died with it,
        # although what it acknowledged is stored. Count it with the windows whose report is lost.
        state["totals"]["lostWindows"] += 1
    if a_failure is not None:
        state["totals"]["failedWindows"] += 1
        state["consecutiveFailures"] += 1
        state["online"] = False if new_carry is None else state["online"]
        _error(state, a_failure, now, a_id)
    else:
        state["consecutiveFailures"] = 0

    if new_carry is None and a_failure is not None:
        delay = backoff_seconds(state["consecutiveFailures"])
        _status(context, state, "backing-off", running)
        yield context.create_timer(context.current_utc_datetime + timedelta(seconds=delay))

    state["generation"] = gen + 1
    state["carry"] = new_carry
    _status(context, state, "continuing", running)
    context.continue_as_new(state)
