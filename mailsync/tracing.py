"""OpenTelemetry tracing: FastStream's Kafka telemetry middleware on every broker.

With `MAILSYNC_TRACING_ENABLED=true` each publish and each consumed record gets a span, and the
trace context travels in the Kafka record headers (W3C `traceparent`), so one message's path from
the fetcher through the linker to a reply event is one trace. Spans are exported over OTLP/HTTP when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set and `opentelemetry-exporter-otlp-proto-http` is installed in
the image; otherwise they only carry the context on to services that do export.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from .settings import ServiceSettings

log = logging.getLogger("mailsync.tracing")

OTLP_EXPORTER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


def _otlp_exporter() -> Any | None:
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") and not os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        return None
    try:
        module = importlib.import_module(OTLP_EXPORTER)
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is missing; spans stay local")
        return None
    return module.OTLPSpanExporter()  # reads the OTEL_EXPORTER_OTLP_* variables itself


def tracer_provider(settings: ServiceSettings) -> TracerProvider | None:
    """A tracer provider for this service, or None when tracing is off."""
    if not settings.tracing_enabled:
        return None
    resource = Resource.create(
        {"service.name": f"mailsync-{settings.service_name}", "service.namespace": "mailsync"}
    )
    provider = TracerProvider(resource=resource)
    exporter = _otlp_exporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
