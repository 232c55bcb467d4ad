"""Keeping one listener orchestration per inbound hybrid connection alive (the singleton recipe).

Instance ids are fixed: ``relay-listener-{connection}`` (a ``/`` in the connection name becomes
``~``, since Durable instance ids may not contain ``/``). :func:`ensure_listener` starts the
orchestration when it is missing, Completed, Failed, Canceled or Terminated, and leaves it alone
when it is Pending, Running, ContinuedAsNew or Suspended. An instance terminated by the admin
``stop`` route (reason :data:`STOP_REASON`) stays stopped until the admin ``start`` route is called.
"""

from __future__ import annotations

from typing import Any

from .settings import Settings

ORCHESTRATOR = "listener_orchestrator"
INSTANCE_PREFIX = "relay-listener-"
STOP_REASON = "stopped by admin"
ALIVE = frozenset({"Pending", "Running", "ContinuedAsNew", "Suspended"})


def instance_id(connection: str) -> str:
    return INSTANCE_PREFIX + connection.replace("/", "~")


def overlap_for(window_seconds: int) -> int:
    """Seconds by which consecutive windows overlap: a tenth of the window, 2-60 s, at most a third."""
    return max(1, min(60, max(2, window_seconds // 10), window_seconds // 3))


def initial_input(settings: Settings, connection: str) -> dict:
    """The first generation's input (later generations carry their state forward)."""
    window = settings.listener_window_seconds
    return {"connection": connection, "windowSeconds": window, "overlapSeconds": overlap_for(window), "generation": 0}


def status_name(status: Any) -> str | None:
    """The runtime status name of a ``DurableOrchestrationStatus`` (None when the instance does not exist)."""
    # Not `if not status`: a status is falsy without a created time, yet its runtime status is what counts.
    value = getattr(status, "runtime_status", None) if status is not None else None
    if value is None:
        return None
    return getattr(value, "value", None) or getattr(value, "name", None) or str(value)


def stopped_by_admin(status: Any) -> bool:
    output = getattr(status, "output", None)
    return status_name(status) == "Terminated" and isinstance(output, str) and STOP_REASON in output


async def ensure_listener(client: Any, settings: Settings, connection: str, *, force: bool = False) -> str:
    """Start the listener of ``connection`` unless it is alive; returns what was done.

    ``"running"`` (left alone), ``"stopped"`` (stopped by admin and not forced) or ``"started"``.
    """
    iid = instance_id(connection)
    status = await client.get_status(iid)
    name = status_name(status)
    if name in ALIVE:
        return "running"
    if not force and stopped_by_admin(status):
        return "stopped"
    await client.start_new(ORCHESTRATOR, iid, initial_input(settings, connection))
    return "started"


def describe(connection: str, status: Any) -> dict:
    """A JSON summary of one listener for the admin status route."""
    def iso(value: Any) -> str | None:
        return value.isoformat() if hasattr(value, "isoformat") else value

    return {
        "connection": connection,
        "instanceId": instance_id(connection),
        "runtimeStatus": status_name(status),
        "stoppedByAdmin": stopped_by_admin(status) if status is not None else False,
        "customStatus": getattr(status, "custom_status", None) if status is not None else None,
        "createdTime": iso(getattr(status, "created_time", None)) if status is not None else None,
        "lastUpdatedTime": iso(getattr(status, "last_updated_time", None)) if status is not None else None,
    }
