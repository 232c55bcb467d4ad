"""Traces from the agent: an OpenTelemetry SDK provider with a console or OTLP exporter (``[tracing]``).

The library (:mod:`relay.tracing`) only uses the API; this is where the agent, as a program,
installs the SDK. ``exporter = "none"`` (the default) installs nothing, so spans stay no-ops. The
OTLP exporter reads the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_HEADERS``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["setup_tracing"]


def setup_tracing(exporter: str, service_name: str) -> Any | None:
    """Install a global ``TracerProvider`` exporting to ``exporter``; returns it (call ``shutdown()`` to flush) or ``None``."""
    if exporter == "none":
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter: Any = OTLPSpanExporter()
    else:
        span_exporter = ConsoleSpanExporter()  # stdout; the logs go to stderr
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    return provider
