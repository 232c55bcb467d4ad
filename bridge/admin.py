"""Listener supervision: the timer starter and the admin routes (auth level ADMIN: master key).

* ``listener_starter`` (timer, every 2 minutes): :func:`bridge.supervisor.ensure_listener` for
  every name in ``RELAY_INBOUND_CONNECTIONS``.
* ``GET /api/listeners``: status of every inbound listener.
* ``POST /api/listeners/start/{*connection}``: start (or restart after a stop) one listener.
* ``POST /api/listeners/stop/{*connection}``: terminate one listener; it stays stopped (the starter
  skips it) until started again. A window already running finishes (the host does not cancel
  activities), at most ``LISTENER_WINDOW_SECONDS`` later.
"""

from __future__ import annotations

import json
import logging

import azure.durable_functions as df
import azure.functions as func

from . import supervisor
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
            result = await supervisor.ensure_listener(client, settings, connection)
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
    result = []
    for connection in settings.inbound_connections:
        status = await client.get_status(supervisor.instance_id(connection))
        result.append(supervisor.describe(connection, status))
    return _json({"listeners": result})


@bp.route(route="listeners/start/{*connection}", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
@bp.durable_client_input(client_name="client")
async def listener_start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Start one listener (also after an admin stop); 200 if it already runs, 202 when started."""
    settings = get_settings()
    connection = _connection(req, settings)
    if connection is None:
        return _unknown(req, settings)
    result = await supervisor.ensure_listener(client, settings, connection, force=True)
    return _json({"connection": connection, "instanceId": supervisor.instance_id(connection), "result": result},
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
    if supervisor.status_name(status) not in supervisor.ALIVE:
        return _json({"connection": connection, "instanceId": iid, "result": "not-running",
                      "runtimeStatus": supervisor.status_name(status)}, 200)
    await client.terminate(iid, supervisor.STOP_REASON)
    return _json({"connection": connection, "instanceId": iid, "result": "stopped"}, 202)
