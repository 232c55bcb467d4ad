"""Where the Functions app's spans go: Azure Monitor, an OTLP collector, or nowhere (the default).

``function_app.py`` calls :func:`configure` once at import. It picks, from the app settings:

- ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set: the Azure Monitor OpenTelemetry distro
  (``azure-monitor-opentelemetry``), authenticated with Entra ID as infra configures
  (``APPLICATIONINSIGHTS_AUTHENTICATION_STRING = "Authorization=AAD"`` or
  ``"ClientId=<user-assigned id>;Authorization=AAD"``): the app's managed identity.
- otherwise ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set: the
  OpenTelemetry SDK with the OTLP/HTTP exporter, configured by the standard ``OTEL_*`` variables
  (``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_SCHEDULE_DELAY``, ...).
- otherwise nothing: :mod:`relay.tracing`'s spans stay no-ops, and no SDK is imported.

The imports are inside the function, so an app without these settings pays nothing at cold start.
A missing package or a bad setting is logged and the app runs on without traces: telemetry
never stops the bridge.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from opentelemetry.trace import Span, Status, StatusCode

from relay import tracing

__all__ = ["configure", "end_window_span", "shutdown", "start_window_span"]

log = logging.getLogger(__name__)

_provider: Any = None
_mode: str | None = None


def configure(environ: Mapping[str, str] | None = None) -> str:
    """Install the app's tracer provider once per process; returns ``"azure-monitor"``, ``"otlp"`` or ``"none"``."""
    global _mode
    if _mode is not None:
        return _mode
    env = os.environ if environ is None else environ
    _mode = "none"
    packages = ""
    try:
        if env.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
            packages = "azure-monitor-opentelemetry"
            _configure_azure_monitor(env)
            _mode = "azure-monitor"
        elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            packages = "opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http"
            _configure_otlp()
            _mode = "otlp"
    except ImportError as exc:
        log.warning("tracing is off: module %s is not installed; deploy the app with %s", exc.name, packages)
    except Exception as exc:  # a bad OTEL_* value must not stop the app from serving
        log.warning("tracing is off: %s: %s", type(exc).__name__, exc)
    return _mode


def entra_client_id(authentication: str | None) -> tuple[bool, str | None]:
    """Parse ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING``: (use Entra, client id of a user-assigned identity or None)."""
    parts = dict(p.split("=", 1) for p in (authentication or "").split(";") if "=" in p)
    parts = {k.strip().lower(): v.strip() for k, v in parts.items()}
    return parts.get("authorization", "").upper() == "AAD", parts.get("clientid") or None


def _configure_azure_monitor(env: Mapping[str, str]) -> None:
    from azure.identity import ManagedIdentityCredential  # the exporter's pipeline is synchronous
    from azure.monitor.opentelemetry import configure_azure_monitor

    use_entra, client_id = entra_client_id(env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING"))
    kwargs: dict[str, Any] = {"connection_string": env["APPLICATIONINSIGHTS_CONNECTION_STRING"]}
    if use_entra:
        kwargs["credential"] = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
    configure_azure_monitor(**kwargs)


def _configure_otlp() -> None:
    global _provider
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({}))  # service.name from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider


def shutdown() -> None:
    """Flush and stop the OTLP provider (the SDK also does this at interpreter exit)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


def start_window_span(connection: str, window_id: str) -> Span:
    """The ``listener window`` span (a root: what arrives in the window continues each sender's own trace)."""
    return tracing.tracer().start_span(tracing.LISTENER_WINDOW, attributes={"relay.connection": connection,
                                                                            "relay.window_id": window_id})


_WINDOW_COUNTS = ("httpRequests", "wsStreams", "wsMessages", "stored", "claimChecked", "storeFailures", "restarts")


def end_window_span(span: Span, counts: Any) -> None:
    """End ``span`` with the window's counts (``relay.window.<count>``); a window that could not listen is an error."""
    if span.is_recording():
        for name in _WINDOW_COUNTS:
            span.set_attribute(f"relay.window.{name}", getattr(counts, name))
        span.set_attribute("relay.window.online", counts.online)
        if not counts.ok:
            span.set_status(Status(StatusCode.ERROR, counts.lastError or "the window could not listen"))
    span.end()
