"""Keeping the listener orchestrations of each inbound hybrid connection alive (the singleton recipe).

Instance ids are fixed: ``relay-listener-{connection}`` for the first listener of a connection and
``relay-listener-{connection}@{n}`` for listener n = 2..K (``RELAY_LISTENERS_PER_CONNECTION``). A ``/``
in the connection name becomes ``~``, since Durable instance ids may not contain ``/``; an id longer
than :data:`MAX_INSTANCE_ID` characters keeps its start and ends with a hash of the connection name.
:func:`ensure_listener` starts an orchestration when it is missing, Completed, Failed, Canceled or
Terminated, and leaves it alone when it is Pending, Running, ContinuedAsNew or Suspended. An instance
terminated by the admin ``stop`` route (reason :data:`STOP_REASON`) stays stopped until the admin
``start`` route is called. Listeners beyond K (after K was lowered) are terminated with
:data:`SCALE_DOWN_REASON`; their running window finishes, so nothing is lost.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from .settings import MAX_LISTENERS_PER_CONNECTION, Settings

ORCHESTRATOR = "listener_orchestrator"
INSTANCE_PREFIX = "relay-listener-"
STOP_REASON = "stopped by admin"
SCALE_DOWN_REASON = "scaled down (RELAY_LISTENERS_PER_CONNECTION lowered)"
MAX_INSTANCE_ID = 100
"""Longest instance id used. The Azure Storage provider takes longer ids, but the MSSQL provider stores
them in ``varchar(100)`` and ids appear in table keys, blob names and logs: the strictest plausible limit."""
ACTIVITY_START_SECONDS = 5
"""Allowance for an activity to start listening once dispatched (worker invocation, token, Relay
connect). devhost measures about 0.3 s; 5 s leaves room for a cold worker and a token fetch in Azure."""
DEFAULT_QUEUE_POLLING_SECONDS = 30.0
"""The Azure Storage provider's ``maxQueuePollingInterval`` when host.json does not set it."""
_POLLING_OVERRIDE = "AzureFunctionsJobHost__extensions__durableTask__storageProvider__maxQueuePollingInterval"
ALIVE = frozenset({"Pending", "Running", "ContinuedAsNew", "Suspended"})


def instance_id(connection: str, listener: int = 1) -> str:
    """The fixed instance id of listener ``listener`` (1..K) of ``connection`` (at most 100 characters)."""
    suffix = "" if listener == 1 else f"@{listener}"
    base = INSTANCE_PREFIX + connection.replace("/", "~")
    if len(base) + len(suffix) > MAX_INSTANCE_ID:
        digest = hashlib.sha256(connection.encode("utf-8")).hexdigest()[:16]
        base = base[: MAX_INSTANCE_ID - len(suffix) - len(digest) - 1] + "-" + digest
    return base + suffix


def _timespan(value: Any) -> float:
    text = str(value).strip()
    days, _, rest = text.rpartition(".") if text.count(":") == 2 and "." in text.split(":")[0] else ("", "", text)
    hours, minutes, seconds = rest.split(":")
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@lru_cache(maxsize=4)
def _host_json_polling(path: str) -> float | None:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        value = raw["extensions"]["durableTask"]["storageProvider"]["maxQueuePollingInterval"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _timespan(value)


def queue_polling_seconds() -> float:
    """The Durable queue polling interval in force: the app setting override, host.json, else 30 s."""
    override = os.environ.get(_POLLING_OVERRIDE)
    if override:
        try:
            return _timespan(override)
        except ValueError:
            pass
    found = _host_json_polling(str(Path(__file__).resolve().parents[1] / "host.json"))
    return DEFAULT_QUEUE_POLLING_SECONDS if found is None else found


def overlap_for(window_seconds: int, polling_seconds: float | None = None) -> int:
    """Seconds by which consecutive windows overlap.

    The next window must be listening before the current one ends, and starting it takes up to two
    queue polls (the timer's episode, then the activity) plus the activity's start:
    ``overlap > 2 x polling + ACTIVITY_START_SECONDS``. The default is a tenth of the window (2-60 s,
    at most a third of it), raised to satisfy that rule but always below half the window (so that
    at most two windows run at once and a carried window reports before the next one ends). A window
    too short for the rule gets that maximum; run two listeners per connection then.
    """
    polling = queue_polling_seconds() if polling_seconds is None else polling_seconds
    needed = math.floor(2 * polling + ACTIVITY_START_SECONDS) + 1
    default = max(1, min(60, max(2, window_seconds // 10), window_seconds // 3))
    return max(default, min(needed, (window_seconds - 1) // 2))


def initial_input(settings: Settings, connection: str, listener: int = 1) -> dict:
    """The first generation's input (later generations carry their state forward)."""
    window = settings.listener_window_seconds
    return {"connection": connection, "windowSeconds": window, "overlapSeconds": overlap_for(window), "generation": 0,
            "listener": listener}


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


async def ensure_listener(client: Any, settings: Settings, connection: str, *, force: bool = False,
                          listener: int = 1) -> str:
    """Start listener ``listener`` of ``connection`` unless it is alive; returns what was done.

    ``"running"`` (left alone), ``"stopped"`` (stopped by admin and not forced) or ``"started"``.
    """
    iid = instance_id(connection, listener)
    status = await client.get_status(iid)
    name = status_name(status)
    if name in ALIVE:
        return "running"
    if not force and stopped_by_admin(status):
        return "stopped"
    await client.start_new(ORCHESTRATOR, iid, initial_input(settings, connection, listener))
    return "started"


async def ensure_connection(client: Any, settings: Settings, connection: str, *, force: bool = False) -> str:
    """Ensure listeners 1..K of ``connection`` and terminate those beyond K; returns the first listener's result."""
    results = [await ensure_listener(client, settings, connection, force=force, listener=n)
               for n in range(1, settings.listeners_per_connection + 1)]
    await scale_down(client, connection, settings.listeners_per_connection)
    return "started" if "started" in results else results[0]


async def scale_down(client: Any, connection: str, keep: int, reason: str = SCALE_DOWN_REASON) -> list[str]:
    """Terminate the alive listeners of ``connection`` numbered above ``keep``; returns their ids.

    Listeners are numbered from 1 without holes, so the search stops at the first id that never existed.
    """
    stopped = []
    for n in range(keep + 1, MAX_LISTENERS_PER_CONNECTION + 1):
        iid = instance_id(connection, n)
        status = await client.get_status(iid)
        name = status_name(status)
        if name is None:
            break
        if name in ALIVE:
            await client.terminate(iid, reason)
            stopped.append(iid)
    return stopped


def listener_ids(settings: Settings, connection: str) -> list[str]:
    return [instance_id(connection, n) for n in range(1, settings.listeners_per_connection + 1)]


def describe(connection: str, status: Any, listener: int = 1) -> dict:
    """A JSON summary of one listener orchestration for the admin status route."""
    def iso(value: Any) -> str | None:
        return value.isoformat() if hasattr(value, "isoformat") else value

    return {
        "connection": connection,
        "listener": listener,
        "instanceId": instance_id(connection, listener),
        "runtimeStatus": status_name(status),
        "stoppedByAdmin": stopped_by_admin(status) if status is not None else False,
        "customStatus": getattr(status, "custom_status", None) if status is not None else None,
        "createdTime": iso(getattr(status, "created_time", None)) if status is not None else None,
        "lastUpdatedTime": iso(getattr(status, "last_updated_time", None)) if status is not None else None,
    }
