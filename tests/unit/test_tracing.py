"""Tracing helpers: a span per record of a batch under its producer, service spans, the JSON-lines file."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from contracts.inbox import InboxPaused, InboxPausedData
from mailsync import tracing
from mailsync.settings import ServiceSettings


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_each_record_of_a_batch_gets_a_span_under_its_own_producer() -> None:
    provider, exporter = _provider()
    tracer = tracing.tracer(provider)
    headers: list[list[tuple[str, bytes]]] = []
    for n in range(2):  # two producers, two traces
        with tracer.start_as_current_span(f"produce {n}", kind=SpanKind.PRODUCER):
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            headers.append([("ce_type", b"x"), *((k, v.encode()) for k, v in carrier.items())])
    with tracer.start_as_current_span("batch"):
        for h in headers:
            with tracing.record_span(tracer, "t.v1", h), tracer.start_as_current_span("publish answer"):
                pass
    spans = exporter.get_finished_spans()
    producers = [s for s in spans if s.name.startswith("produce")]
    records = [s for s in spans if s.name == "t.v1 process"]
    answers = [s for s in spans if s.name == "publish answer"]
    assert len(records) == 2 and all(r.kind == SpanKind.CONSUMER for r in records)
    for producer, rec, answer in zip(producers, records, answers, strict=True):
        assert rec.parent is not None and rec.parent.span_id == producer.context.span_id
        assert rec.context.trace_id == producer.context.trace_id
        assert answer.parent is not None and answer.parent.span_id == rec.context.span_id


async def test_record_without_trace_headers_starts_a_trace() -> None:
    provider, exporter = _provider()
    with tracing.record_span(tracing.tracer(provider), "t.v1", None):
        pass
    [span] = exporter.get_finished_spans()
    assert span.parent is None


async def test_traced_handler_span_carries_event_ids_and_off_means_no_op() -> None:
    provider, exporter = _provider()
    event = InboxPaused.build(
        data=InboxPausedData(request_id="r1", reason="asked"), tenant_id="t1", inbox_id="i1", source="/t"
    )
    calls: list[str] = []

    async def handler(e: InboxPaused) -> None:
        calls.append(e.id)

    await tracing.traced(tracing.tracer(provider), "link message", handler)(event)
    await tracing.traced(tracing.tracer(None), "link message", handler)(event)
    assert calls == [event.id, event.id]
    [span] = exporter.get_finished_spans()
    assert span.name == "link message"
    assert span.attributes is not None
    assert span.attributes["mailsync.id"] == event.id
    assert span.attributes["mailsync.inbox_id"] == "i1"


def test_tracing_file_setting_writes_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    provider = tracing.tracer_provider(ServiceSettings(service_name="unit", tracing_file=str(path)))
    assert provider is not None
    tracer = tracing.tracer(provider)
    with tracer.start_as_current_span("outer"), tracer.start_as_current_span("inner", attributes={"k": "v"}):
        pass
    provider.shutdown()
    inner, outer = (json.loads(line) for line in path.read_text().splitlines())
    assert inner["name"] == "inner" and outer["name"] == "outer"
    assert inner["parent_span_id"] == outer["span_id"] and inner["trace_id"] == outer["trace_id"]
    assert inner["service"] == "mailsync-unit" and inner["attributes"] == {"k": "v"}
    assert tracing.tracer_provider(ServiceSettings(service_name="unit")) is None


@dataclass
class _Record:  # the fields of an aiokafka ConsumerRecord that record_spans reads
    topic: str
    partition: int
    offset: int
    headers: list[tuple[str, bytes]]


async def test_batch_records_keep_their_traces_through_a_per_event_traced_handler() -> None:
    provider, exporter = _provider()
    tracer = tracing.tracer(provider)
    events = [
        InboxPaused.build(
            data=InboxPausedData(request_id=f"r{n}", reason="asked"),
            tenant_id="t1",
            inbox_id="i1",
            source="/t",
        )
        for n in range(3)
    ]
    records = []
    for n, event in enumerate(events):
        with tracer.start_as_current_span(f"produce {n}", kind=SpanKind.PRODUCER):
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
        headers = [("ce_id", event.id.encode()), *((k, v.encode()) for k, v in carrier.items())]
        records.append(_Record("t.v1", 0, n, headers))

    async def handle_one(event: InboxPaused) -> None:
        with tracer.start_as_current_span("publish answer"):
            pass

    one = tracing.traced(tracer, "link message", handle_one)
    with tracer.start_as_current_span("batch process"), tracing.record_spans(tracer, records) as spans:
        assert set(spans) == {e.id for e in events}
        await asyncio.gather(*(one(e) for e in events))  # the batch handler, per event
    finished = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    answers = [s for s in finished if s.name == "publish answer"]
    assert len(answers) == 3
    producers = {s.context.trace_id: s for s in finished if s.name.startswith("produce")}
    for answer in answers:
        assert answer.parent is not None
        link = by_id[answer.parent.span_id]
        assert link.name == "link message"
        assert link.parent is not None
        record = by_id[link.parent.span_id]
        assert record.name == "t.v1 process" and record.kind == SpanKind.CONSUMER
        producer = producers[answer.context.trace_id]  # each answer in its own producer's trace
        assert record.parent is not None and record.parent.span_id == producer.context.span_id
