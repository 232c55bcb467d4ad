"""History events in the JSON shape the Python SDK's ``HistoryEvent`` reads (PascalCase)."""

from __future__ import annotations

from datetime import datetime, timezone

from dateutil.parser import isoparse

EXECUTION_STARTED = 0
EXECUTION_COMPLETED = 1
EXECUTION_TERMINATED = 2
TASK_SCHEDULED = 4
TASK_COMPLETED = 5
TASK_FAILED = 6
TIMER_CREATED = 10
TIMER_FIRED = 11
ORCHESTRATOR_STARTED = 12
ORCHESTRATOR_COMPLETED = 13
EVENT_RAISED = 15

# Orchestrator action types (OrchestratorState "actions").
CALL_ACTIVITY = 0
CALL_ACTIVITY_WITH_RETRY = 1
CALL_SUB_ORCHESTRATOR = 2
CALL_SUB_ORCHESTRATOR_WITH_RETRY = 3
CONTINUE_AS_NEW = 4
CREATE_TIMER = 5
WAIT_FOR_EXTERNAL_EVENT = 6
CALL_ENTITY = 7
CALL_HTTP = 8
SIGNAL_ENTITY = 9
WHEN_ANY = 11
WHEN_ALL = 12


def now() -> datetime:
    return datetime.now(timezone.utc)


def stamp(moment: datetime | None = None) -> str:
    return (moment or now()).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    moment = isoparse(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def event(event_type: int, event_id: int = -1, timestamp: datetime | None = None, **fields) -> dict:
    return {"EventType": event_type, "EventId": event_id, "IsPlayed": False, "Timestamp": stamp(timestamp), **fields}


def execution_started(name: str, input_json: str | None) -> dict:
    return event(EXECUTION_STARTED, Name=name, Input=input_json, Version="")


def orchestrator_started() -> dict:
    return event(ORCHESTRATOR_STARTED)


def orchestrator_completed() -> dict:
    return event(ORCHESTRATOR_COMPLETED)


def task_scheduled(event_id: int, name: str, input_json: str | None) -> dict:
    return event(TASK_SCHEDULED, event_id, Name=name, Input=input_json)


def task_completed(scheduled_id: int, result_json: str | None) -> dict:
    return event(TASK_COMPLETED, TaskScheduledId=scheduled_id, Result=result_json)


def task_failed(scheduled_id: int, reason: str, details: str) -> dict:
    return event(TASK_FAILED, TaskScheduledId=scheduled_id, Reason=reason, Details=details)


def timer_created(event_id: int, fire_at: str) -> dict:
    return event(TIMER_CREATED, event_id, FireAt=fire_at)


def timer_fired(timer_id: int, fire_at: str) -> dict:
    return event(TIMER_FIRED, TimerId=timer_id, FireAt=fire_at)


def event_raised(name: str, input_json: str | None) -> dict:
    return event(EVENT_RAISED, Name=name, Input=input_json)


def execution_completed(result_json: str | None, status: str) -> dict:
    return event(EXECUTION_COMPLETED, Result=result_json, OrchestrationStatus=status)


def flatten(actions) -> list[dict]:
    """OrchestratorState actions (list of lists, compound actions nested) -> atomic actions in order."""
    flat: list[dict] = []

    def walk(item):
        if isinstance(item, list):
            for child in item:
                walk(child)
        elif item.get("actionType") in (WHEN_ANY, WHEN_ALL):
            walk(item.get("compoundActions") or [])
        else:
            flat.append(item)

    walk(actions or [])
    return flat


# Actions that take a task id from the orchestrator's sequence (external events are keyed by name).
ID_CONSUMING = {CALL_ACTIVITY, CALL_ACTIVITY_WITH_RETRY, CALL_SUB_ORCHESTRATOR, CALL_SUB_ORCHESTRATOR_WITH_RETRY,
                CREATE_TIMER, CALL_HTTP, CALL_ENTITY}
