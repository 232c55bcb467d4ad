"""Drive an orchestrator through the Durable SDK's own ``handle()`` with hand-built histories.

History in, actions out: each call to :meth:`Execution.episode` sends the whole history (as the
Durable extension does) to ``handle`` and appends the events for the new actions
(TaskScheduled/TimerCreated); the test then decides what happens next (:meth:`complete`,
:meth:`fail`, :meth:`fire`), each preceded by an OrchestratorStarted event at the virtual time.
:class:`Simulation` automates that over several generations with a virtual clock: listener
windows complete ``seconds`` after they were scheduled, timers fire at ``fireAt``, results of
activities still running when the orchestration continues as new are dropped (as the real
host drops them), and windows started with ``report: true`` write a report that the collect
activity reads.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Callable

from devhost.durable.history import (
    CALL_ACTIVITY,
    CONTINUE_AS_NEW,
    CREATE_TIMER,
    EXECUTION_STARTED,
    ORCHESTRATOR_COMPLETED,
    ORCHESTRATOR_STARTED,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_SCHEDULED,
    TIMER_CREATED,
    TIMER_FIRED,
    event,
    flatten,
    parse_time,
)

# The history-event shapes are the local host's (devhost/durable/history.py): one definition of
# what the SDK's HistoryEvent reads, used by the real-time host and by this virtual-clock driver.
ORCH_STARTED, ORCH_COMPLETED = ORCHESTRATOR_STARTED, ORCHESTRATOR_COMPLETED


class Execution:
    """One execution (generation) of an orchestration, driven event by event."""

    def __init__(self, handle: Callable[[str], str], name: str, input: Any, *, now: datetime, instance_id: str = "relay-listener-inbound"):
        self.handle = handle
        self.instance_id = instance_id
        self.input = input
        self.now = now
        self.history: list[dict] = []
        self.actions: list[dict] = []
        self.state: dict = {}
        self._event("OrchestratorStarted", ORCH_STARTED)
        self._event("ExecutionStarted", EXECUTION_STARTED, Name=name, Input=json.dumps(input), Version="")

    def _event(self, _label: str, event_type: int, **fields: Any) -> None:
        self.history.append(event(event_type, fields.pop("EventId", -1), self.now, **fields))

    def context_json(self) -> str:
        return json.dumps({"history": self.history, "instanceId": self.instance_id, "isReplaying": False,
                           "parentInstanceId": None, "input": json.dumps(self.input), "upperSchemaVersion": 1})

    def episode(self) -> list[dict]:
        """Run the orchestrator over the history; returns the new actions (and records their events)."""
        self.state = json.loads(self.handle(self.context_json()))
        actions = flatten(self.state.get("actions") or [])
        new = actions[len(self.actions):]
        self._event("OrchestratorCompleted", ORCH_COMPLETED)
        for index, action in enumerate(new, start=len(self.actions)):
            if action["actionType"] == CALL_ACTIVITY:
                self._event("TaskScheduled", TASK_SCHEDULED, EventId=index, Name=action["functionName"], Input=action.get("input"))
            elif action["actionType"] == CREATE_TIMER:
                self._event("TimerCreated", TIMER_CREATED, EventId=index, FireAt=action["fireAt"])
        self.actions = actions
        for i, action in enumerate(actions):
            action["_id"] = i
        return new

    @property
    def custom_status(self) -> Any:
        return self.state.get("customStatus")

    @property
    def continued_with(self) -> dict | None:
        for action in self.actions:
            if action["actionType"] == CONTINUE_AS_NEW:
                return json.loads(action["input"])
        return None

    def at(self, when: datetime) -> "Execution":
        self.now = max(self.now, when)
        return self

    def complete(self, event_id: int, result: Any) -> None:
        self._event("OrchestratorStarted", ORCH_STARTED)
        self._event("TaskCompleted", TASK_COMPLETED, TaskScheduledId=event_id, Result=json.dumps(result))

    def fail(self, event_id: int, reason: str) -> None:
        self._event("OrchestratorStarted", ORCH_STARTED)
        self._event("TaskFailed", TASK_FAILED, TaskScheduledId=event_id, Reason=reason, Details=reason)

    def fire(self, event_id: int) -> None:
        action = self.actions[event_id]
        self.now = max(self.now, parse_time(action["fireAt"]))
        self._event("OrchestratorStarted", ORCH_STARTED)
        self._event("TimerFired", TIMER_FIRED, TimerId=event_id, FireAt=action["fireAt"])


WindowOutcome = Callable[[str, dict], tuple[str, Any]]
"""(window id, activity input) -> ("ok", counts) | ("fail", reason) | ("early", (seconds, counts))."""


class Simulation:
    """Several generations of the listener orchestration with a virtual clock (see the module docs)."""

    def __init__(self, handle, input: dict, *, start: datetime, outcome: WindowOutcome, report_delay: float = 2.0):
        self.handle = handle
        self.input = input
        self.now = start
        self.outcome = outcome
        self.report_delay = report_delay
        self.windows: list[dict] = []  # {"id", "start", "end", "report"}
        self.reports: dict[str, dict] = {}
        self._report_writes: list[tuple[datetime, str, dict]] = []
        self.statuses: list[dict] = []
        self.episodes = 0

    def _window_result(self, window_id: str, inp: dict) -> tuple[str, Any, float]:
        kind, value = self.outcome(window_id, inp)
        if kind == "early":
            seconds, counts = value
            return "ok", counts, seconds
        return kind, value, float(inp["seconds"])

    def _flush_reports(self) -> None:
        for item in [r for r in self._report_writes if r[0] <= self.now]:
            self._report_writes.remove(item)
            self.reports[item[1]] = item[2]

    def run_generation(self) -> dict | None:
        ex = Execution(self.handle, "listener_orchestrator", self.input, now=self.now)
        pending: dict[int, tuple[datetime, str, Any]] = {}  # id -> (due, kind, payload)
        while True:
            new = ex.episode()
            self.episodes += 1
            self.statuses.append(ex.custom_status)
            for action in new:
                if action["actionType"] == CALL_ACTIVITY:
                    inp = json.loads(action["input"])
                    if action["functionName"] == "listener_window":
                        kind, value, seconds = self._window_result(inp["windowId"], inp)
                        end = ex.now + timedelta(seconds=seconds)
                        self.windows.append({"id": inp["windowId"], "start": ex.now, "end": end, "report": inp["report"]})
                        pending[action["_id"]] = (end, kind, value)
                        if inp["report"] and kind == "ok":
                            self._report_writes.append((end + timedelta(seconds=self.report_delay), inp["windowId"], value))
                    else:  # collect_listener_reports: runs at once, reads the report store
                        pending[action["_id"]] = (ex.now, "collect", inp)
                elif action["actionType"] == CREATE_TIMER and not action.get("isCanceled"):
                    pending[action["_id"]] = (parse_time(action["fireAt"]), "timer", None)
            for action in ex.actions:
                if action.get("isCanceled"):
                    pending.pop(action["_id"], None)
            if ex.continued_with is not None:
                self.now = ex.now
                self.input = ex.continued_with
                return ex.continued_with  # results still pending are dropped, as the host does
            if ex.state.get("isDone"):
                return None
            event_id, (due, kind, value) = min(pending.items(), key=lambda item: (item[1][0], item[0]))
            del pending[event_id]
            ex.at(due)
            self.now = ex.now
            self._flush_reports()
            if kind == "timer":
                ex.fire(event_id)
            elif kind == "fail":
                ex.fail(event_id, value)
            elif kind == "collect":
                reports = {w: self.reports.pop(w) for w in value["windowIds"] if w in self.reports}
                ex.complete(event_id, {"reports": reports, "missing": [w for w in value["windowIds"] if w not in reports]})
            else:
                ex.complete(event_id, value)
