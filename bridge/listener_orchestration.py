"""Durable listeners: the eternal orchestration and its two activities.

``listener_orchestrator`` (instance ``relay-listener-{connection}``) runs the generation loop
of :mod:`bridge.generation`; ``listener_window`` listens for one window
(:func:`bridge.listener.run_window`) and returns counts; ``collect_listener_reports`` reads the
counts of windows that crossed a continue-as-new boundary.
"""

from __future__ import annotations

import logging

import azure.durable_functions as df

from . import generation
from .settings import get_settings

# bridge.listener (and with it the relay listener, the storage and identity SDKs) is imported by
# the activities on first use: indexing the app and the HTTP send path never need it (cold start).

log = logging.getLogger("bridge.listener_orchestration")

bp = df.Blueprint()


@bp.orchestration_trigger(context_name="context")
def listener_orchestrator(context: df.DurableOrchestrationContext):
    """One generation of the eternal listener loop (ends with continue_as_new)."""
    yield from generation.run_generation(context)


@bp.activity_trigger(input_name="window")
async def listener_window(window: dict) -> dict:
    """Listen on ``window["connection"]`` for ``window["seconds"]``; returns counts, never payloads."""
    from .listener import WindowCounts, run_window, write_report

    connection, window_id = window["connection"], window.get("windowId")
    try:
        settings = get_settings()
    except Exception as exc:  # configuration errors are reported like any window failure
        counts = WindowCounts(connection=connection, windowId=window_id or "", ok=False, lastError=f"{type(exc).__name__}: {exc}")
        return counts.to_json()
    counts = await run_window(settings, connection, float(window["seconds"]), window_id=window_id)
    if window.get("report"):
        try:
            await write_report(settings, counts)
        except Exception as exc:
            log.error("window %s on %s could not write its report: %s", window_id, connection, exc)
    return counts.to_json()


@bp.activity_trigger(input_name="request")
async def collect_listener_reports(request: dict) -> dict:
    """Read and delete the report blobs of ``request["windowIds"]`` (see bridge.listener)."""
    from .listener import collect_reports

    return await collect_reports(get_settings(), request["connection"], list(request["windowIds"]),
                                 stale_seconds=request.get("staleSeconds"))
