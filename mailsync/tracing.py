"""OpenTelemetry tracing: FastStream's Kafka telemetry middleware on every broker.

With `MAILSYNC_TRACING_ENABLED=true` each publish and each consumed record gets a span, and the
trace context travels in the Kafka record headers (W3C `traceparent`), so one message's path from
the fetcher through the linker to a reply event is one trace. Spans are exported over OTLP/HTTP when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set and `opentelemetry-exporter-otlp-proto-http` is installed in
the image; otherwise they only carry the context on to services that do export.

`MAILSYNC_TRACING_FILE` (tests, debugging) also writes each finished span as one JSON line to a file,
so a test can follow one message across real service processes. Services add their own spans around
a decision with `traced(tracer, "link message", handler)`; a batch consumer opens one span per record
with `record_span`, a child of the span that produced the record.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .settings import ServiceSettings

log = logging.getLogger("mailsync.tracing")
E = TypeVar("E")

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


class JsonLinesSpanExporter(SpanExporter):
    """Appends each span as one JSON line (ids in hex, parent, kind, attributes); for tests and debugging."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(span_record(s), default=str) + "\n" for s in spans]
        with self._lock, open(self._path, "a", encoding="utf-8") as f:
            f.writelines(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A span as plain data: what the JSON-lines file holds."""
    ctx = span.get_span_context()
    parent = span.parent
    attributes = {
        k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        for k, v in (span.attributes or {}).items()
    }
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
        "span_id": f"{ctx.span_id:016x}" if ctx else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "parent_remote": bool(parent and parent.is_remote),
        "service": span.resource.attributes.get("service.name"),
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": attributes,
    }


def tracer_provider(settings: ServiceSettings) -> TracerProvider | None:
    """A tracer provider for this service, or None when tracing is off."""
    if not (settings.tracing_enabled or settings.tracing_file):
        return None
    resource = Resource.create(
        {"service.name": f"mailsync-{settings.service_name}", "service.namespace": "mailsync"}
    )
    provider = TracerProvider(resource=resource)
    exporter = _otlp_exporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if settings.tracing_file:
        # Written as each span ends, so a reader sees a span as soon as its work is done.
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(settings.tracing_file)))
    return provider


def tracer(provider: Any | None) -> trace.Tracer:
    """The tracer services use for their own spans; a no-op one when tracing is off."""
    if provider is None:
        return trace.NoOpTracer()
    return trace.get_tracer("mailsync", tracer_provider=provider)


# While a batch is handled: event id → the span of the record that carried it (see `record_spans`).
_record_spans: ContextVar[Mapping[str, trace.Span] | None] = ContextVar("mailsync_record_spans", default=None)


@contextmanager
def event_span(tracer: trace.Tracer, event: Any, name: str) -> Iterator[trace.Span]:
    """A span `name` for the work on one event, tagged with its ids: a child of the event's record span
    inside a batch (`record_spans`), else of the current span (the record's consume span)."""
    attributes = {
        f"mailsync.{field}": value
        for field in ("type", "id", "tenant_id", "inbox_id", "subject")
        if isinstance(value := getattr(event, field, None), str)
    }
    spans = _record_spans.get()
    record = spans.get(str(getattr(event, "id", ""))) if spans else None
    context = trace.set_span_in_context(record) if record is not None else None
    with tracer.start_as_current_span(name, context=context, attributes=attributes) as span:
        yield span


def traced(
    tracer: trace.Tracer, name: str, handler: Callable[[E], Awaitable[None]]
) -> Callable[[E], Awaitable[None]]:
    """`handler` run inside `event_span(name)`: what it publishes continues the event's trace, also when
    a batch handler calls it once per event."""

    async def _traced(event: E) -> None:
        with event_span(tracer, event, name):
            await handler(event)

    return _traced


_PROPAGATOR = TraceContextTextMapPropagator()


def headers_context(headers: Sequence[tuple[str, bytes]] | Mapping[str, Any] | None) -> Any:
    """The trace context a producer put in a Kafka record's headers (`traceparent`), if any."""
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    carrier = {
        str(k): v.decode("latin-1") if isinstance(v, bytes | bytearray) else str(v)
        for k, v in items
        if v is not None
    }
    return _PROPAGATOR.extract(carrier)


@contextmanager
def record_span(
    tracer: trace.Tracer, topic: str, headers: Sequence[tuple[str, bytes]] | Mapping[str, Any] | None
) -> Iterator[trace.Span]:
    """One consumer span for one record of a batch, a child of the record's producer span.

    FastStream traces a batch as one span with links; this keeps a per-message trace unbroken, and
    what the handler publishes for this record becomes a child of it.
    """
    with tracer.start_as_current_span(
        f"{topic} process",
        context=headers_context(headers),
        kind=trace.SpanKind.CONSUMER,
        attributes={"messaging.system": "kafka", "messaging.destination.name": topic},
    ) as span:
        yield span


def _header(headers: Any, name: str) -> str | None:
    for key, value in headers or ():
        if key == name and value is not None:
            return bytes(value).decode("utf-8", "replace")
    return None


@contextmanager
def record_spans(tracer: trace.Tracer, records: Sequence[Any]) -> Iterator[Mapping[str, trace.Span]]:
    """For a batch of Kafka records (aiokafka ConsumerRecords): one `<topic> process` span per record, a
    child of that record's producer span, open while the batch is handled. Keyed by the `ce_id` header
    (the event id), so `event_span`/`traced` put the work on each event under its own record."""
    spans: dict[str, trace.Span] = {}
    opened: list[trace.Span] = []
    for record in records:
        span = tracer.start_span(
            f"{record.topic} process",
            context=headers_context(record.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.kafka.destination.partition": record.partition,
                "messaging.kafka.message.offset": record.offset,
            },
        )
        opened.append(span)
        if (event_id := _header(record.headers, "ce_id")) is not None:
            spans[event_id] = span
    token = _record_spans.set(spans)
    try:
        yield spans
    except BaseException as exc:
        for span in opened:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        _record_spans.reset(token)
        for span in opened:
            span.end()
