"""One orchestrator episode: history in, the SDK's OrchestratorState out, turned into decisions.

The orchestrator callable is the SDK's ``handle(context)`` (what ``@app.orchestration_trigger``
stores); it replays the user's generator over the whole history and returns the state JSON, or
raises ``Exception("<message>\\n\\n$OutOfProcData$:<state>")`` when the orchestrator failed.
No I/O here: the caller persists the outcome, then starts activities and timers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from . import history as h
from .store import Instance

OUT_OF_PROC = "\n\n$OutOfProcData$:"
SCHEMA_VERSION = 1  # V2: one append-only action list per execution


@dataclass
class Decision:
    """What the episode decided: new history, work to start, and the instance's new state."""

    history: list
    activities: list[tuple[int, str, str | None]] = field(default_factory=list)  # (id, name, input)
    timers: list[tuple[int, str]] = field(default_factory=list)  # (id, fireAt)
    canceled_timers: list[int] = field(default_factory=list)
    actions_seen: int = 0
    status: str = "Running"
    output: str | None = None  # JSON text
    custom_status: str | None = None  # JSON text
    continue_as_new: str | None = None  # new input JSON text when continuing
    continued: bool = False


def build_context(inst: Instance, history: list) -> str:
    return json.dumps({
        "history": history,
        "instanceId": inst.instance_id,
        "isReplaying": False,
        "parentInstanceId": None,
        "input": inst.input,
        "upperSchemaVersion": SCHEMA_VERSION,
    })


def run_handle(handle, context_json: str) -> tuple[dict, str | None]:
    """Call the SDK's handle: (state dict, error message or None)."""
    try:
        return json.loads(handle(context_json)), None
    except Exception as exc:  # the SDK reports orchestrator failures this way
        text = str(exc)
        if OUT_OF_PROC in text:
            message, _, state = text.partition(OUT_OF_PROC)
            try:
                return json.loads(state), message
            except json.JSONDecodeError:
                pass
        return {"isDone": False, "actions": [], "customStatus": None}, f"{type(exc).__name__}: {text}"


def decide(inst: Instance, history: list, state: dict, error: str | None) -> Decision:
    """Turn the state returned for ``history`` into new history events and work."""
    flat = h.flatten(state.get("actions"))
    next_id = sum(1 for e in history if e["EventType"] in (h.TASK_SCHEDULED, h.TIMER_CREATED))
    new_history = list(history)
    decision = Decision(history=new_history, actions_seen=len(flat))
    custom = state.get("customStatus")
    decision.custom_status = None if custom is None else json.dumps(custom)

    # Ids of already-scheduled actions follow the same sequence: find newly canceled timers.
    seq = 0
    for index, action in enumerate(flat):
        kind = action.get("actionType")
        if kind in h.ID_CONSUMING:
            if index < inst.actions_seen and kind == h.CREATE_TIMER and action.get("isCanceled"):
                decision.canceled_timers.append(seq)
            seq += 1

    new_history.append(h.orchestrator_completed())
    for action in flat[inst.actions_seen:]:
        kind = action.get("actionType")
        if kind in (h.CALL_ACTIVITY, h.CALL_ACTIVITY_WITH_RETRY):
            new_history.append(h.task_scheduled(next_id, action["functionName"], action.get("input")))
            decision.activities.append((next_id, action["functionName"], action.get("input")))
            next_id += 1
        elif kind == h.CREATE_TIMER:
            new_history.append(h.timer_created(next_id, action["fireAt"]))
            if action.get("isCanceled"):
                decision.canceled_timers.append(next_id)
            else:
                decision.timers.append((next_id, action["fireAt"]))
            next_id += 1
        elif kind == h.CONTINUE_AS_NEW:
            decision.continue_as_new = action.get("input")
        elif kind == h.WAIT_FOR_EXTERNAL_EVENT:
            pass  # EventRaised is matched by name
        elif error is None:
            error = (f"devhost does not support orchestrator action type {kind} "
                     "(sub-orchestrations, entities and durable HTTP are not implemented)")

    if error is not None:
        decision.status = "Failed"
        decision.output = json.dumps(f"Orchestrator function '{inst.name}' failed: {error}")
        decision.activities.clear()
        decision.timers.clear()
        new_history.append(h.execution_completed(decision.output, "Failed"))
    elif state.get("isDone"):
        if decision.continue_as_new is not None or any(a.get("actionType") == h.CONTINUE_AS_NEW for a in flat):
            decision.continued = True
            decision.status = "ContinuedAsNew"
            if decision.continue_as_new is None:
                decision.continue_as_new = next(a.get("input") for a in flat
                                                if a.get("actionType") == h.CONTINUE_AS_NEW)
        else:
            decision.status = "Completed"
            decision.output = json.dumps(state.get("output"))
            new_history.append(h.execution_completed(decision.output, "Completed"))
        decision.activities.clear()
        decision.timers.clear()
    return decision
