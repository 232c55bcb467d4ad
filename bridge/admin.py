"""Listener supervision: the timer starter and the admin routes (auth level ADMIN: master key).

* ``listener_starter`` (timer, every 2 minutes): :func:`bridge.supervisor.ensure_listener` for
  every name in ``RELAY_INBOUND_CONNECTIONS``.
* ``GET /api/listeners``: status of every inbound listener orchestration, with its live state from the
  windows' heartbeat blobs (online within seconds, live counts) and the last window's result.
* ``POST /api/listeners/start/{*connection}``: start (or restart after a stop) one listener.
* ``POST /api/listeners/stop/{*connection}``: terminate one listener; it stays stopped (the starter
  skips it) until started again. A window already running finishes (the host does not cancel
  activities), at most ``LISTENER_WINDOW_SECONDS`` later.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import azure.durable_functions as df
import azure.functions as func

from . import supervisor
from .generation import HEARTBEAT_SECONDS, window_prefix
from .settings import RELAY_INBOUND_CONNECTIONS, SettingsError, get_settings

log = logging.getLogger("bridge.admin")

bp = df.Blueprint()

STARTER_SCHEDULE = "0 */2 * * * *"


def _json(body: object, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


@bp.timer_trigger(arg_name="timer", schedule=STARTER_SCHEDULE, run_on_startup=False, use_monitor=True)
@bp.durable_client_input(client_name="client")
async def listener_starter(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    """Restart missing, completed, failed or terminated listener orchestrations."""
    settings = get_settings()
    for connection in settings.inbound_connections:
        try:
            result = await supervisor.ensure_connection(client, settings, connection)
        except Exception as exc:  # one broken connection must not stop the others
            log.error("could not ensure the listener of %s: %s", connection, exc)
            continue
        if result == "started":
            log.info("started listener orchestration %s", supervisor.instance_id(connection))


def _connection(req: func.HttpRequest, settings) -> str | None:
    name = (req.route_params.get("connection") or "").strip("/")
    return name if name in settings.inbound_connections else None


def _unknown(req: func.HttpRequest, settings) -> func.HttpResponse:
    return _json({"error": "unknown_connection",
                  "message": f"{req.route_params.get('connection')!r} is not in {RELAY_INBOUND_CONNECTIONS} "
                             f"({', '.join(settings.inbound_connections) or 'empty'})"}, 404)


@bp.route(route="listeners", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
@bp.durable_client_input(client_name="client")
async def listeners_status(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Status (runtime status and custom status) of every inbound listener."""
    try:
        settings = get_settings()
    except SettingsError as exc:
        return _json({"error": "configuration", "message": str(exc)}, 500)
    from .listener import read_heartbeats  # on first use: the listener module is a large import (cold start)

    result = []
    for connection in settings.inbound_connections:
        try:
            beats, beat_error = await read_heartbeats(settings, connection), None
        except Exception as exc:  # storage unreachable: the orchestration status is still worth showing
            beats, beat_error = [], f"{type(exc).__name__}: {exc}"[:300]
        for n in range(1, settings.listeners_per_connection + 1):
            status = await client.get_status(supervisor.instance_id(connection, n))
            entry = supervisor.describe(connection, status, n)
            entry["live"] = live_state([b for b in beats if _belongs(b, n)], beat_error)
            entry["online"] = entry["live"]["online"]
            custom = entry.get("customStatus")
            entry["lastWindow"] = custom.get("lastWindow") if isinstance(custom, dict) else None
            result.append(entry)
    return _json({"listeners": result})


STALE_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS + 2
"""A heartbeat older than this belongs to a window that ended without cleaning up (crashed, recycled)."""
_LIVE_KEYS = ("httpRequests", "wsStreams", "wsMessages", "stored", "claimChecked", "storeFailures")


def _belongs(beat: dict, listener: int) -> bool:
    window_id = str(beat.get("windowId") or "")
    if listener > 1:
        return window_id.startswith(window_prefix(listener))
    return not window_id.startswith("l")


def live_state(beats: list[dict], error: str | None = None, now: datetime | None = None) -> dict:
    """Online flag and live counts of one listener from its windows' heartbeats (fresh ones only count)."""
    now = now or datetime.now(timezone.utc)
    windows, counts, online = [], dict.fromkeys(_LIVE_KEYS, 0), False
    for beat in beats:
        try:
            age = (now - datetime.fromisoformat(str(beat.get("updatedAt")).replace("Z", "+00:00"))).total_seconds()
        except ValueError:
            continue
        fresh = age <= STALE_AFTER_SECONDS
        windows.append({"windowId": beat.get("windowId"), "online": bool(beat.get("online")) and fresh,
                        "stale": not fresh, "startedAt": beat.get("startedAt"), "updatedAt": beat.get("updatedAt"),
                        "plannedSeconds": beat.get("plannedSeconds"), **{k: beat.get(k, 0) for k in _LIVE_KEYS}})
        if fresh:
            online = online or bool(beat.get("online"))
            for key in _LIVE_KEYS:
                counts[key] += int(beat.get(key) or 0)
    state = {"online": online, "windows": windows, "counts": counts, "heartbeatSeconds": HEARTBEAT_SECONDS}
    if error:
        state["error"] = error
    return state


@bp.route(route="listeners/start/{*connection}", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
@bp.durable_client_input(client_name="client")
async def listener_start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Start one listener (also after an admin stop); 200 if it already runs, 202 when started."""
    settings = get_settings()
    connection = _connection(req, settings)
    if connection is None:
        return _unknown(req, settings)
    result = await supervisor.ensure_connection(client, settings, connection, force=True)
    return _json({"connection": connection, "instanceId": supervisor.instance_id(connection),
                  "instanceIds": supervisor.listener_ids(settings, connection), "result": result},
                 202 if result == "started" else 200)


@bp.route(route="listeners/stop/{*connection}", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
@bp.durable_client_input(client_name="client")
async def listener_stop(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Terminate one listener; it stays stopped until started again. 202 when stopped, 200 if not running."""
    settings = get_settings()
    connection = _connection(req, settings)
    if connection is None:
        return _unknown(req, settings)
    iid = supervisor.instance_id(connection)
    status = await client.get_status(iid)
    stopped = []
    if supervisor.status_name(status) in supervisor.ALIVE:
        await client.terminate(iid, supervisor.STOP_REASON)
        stopped.append(iid)
    if supervisor.status_name(status) is not None:
        stopped += await supervisor.scale_down(client, connection, 1, reason=supervisor.STOP_REASON)
    if not stopped:
        return _json({"connection": connection, "instanceId": iid, "result": "not-running",
                      "runtimeStatus": supervisor.status_name(status)}, 200)
    return _json({"connection": connection, "instanceId": iid, "instanceIds": stopped, "result": "stopped"}, 202)
