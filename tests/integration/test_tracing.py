"""One trace across services: FastStream's telemetry middleware carries the context in Kafka headers.

Two runtimes built like the services (`mailsync.service.build`) in this process, on the real Kafka
and FerretDB, share an in-memory span exporter: a command published by a producer is consumed by
runtime A, which publishes an event that runtime B consumes. All spans must form one trace with
each consume span a child of the publish span before it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import SecretStr

from contracts import Envelope
from contracts.inbox import InboxCommandData, InboxCommandRequested, InboxPaused, InboxPausedData
from mailsync.kafka import EventPublisher, make_broker
from mailsync.service import Runtime, build
from mailsync.settings import ServiceSettings
from tests.integration.conftest import skip_history

pytestmark = pytest.mark.integration


async def test_one_trace_from_command_through_two_services(kafka_bootstrap: str, mongo_uri: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    run = uuid.uuid4().hex[:8]
    inbox = f"trace-{run}"

    def settings(name: str) -> ServiceSettings:
        return ServiceSettings(
            service_name=name,
            kafka_bootstrap_servers=kafka_bootstrap,
            mongo_uri=SecretStr(mongo_uri),
            mongo_database=f"test_trace_{run}",
            kafka_consumer_group_prefix=f"trace-{run}",
        )

    done = asyncio.Event()

    def setup_a(rt: Runtime) -> None:  # fetcher-like: a command in, a lifecycle event out
        async def on_command(event: Envelope[Any]) -> None:
            if event.inbox_id == inbox:
                data = InboxPausedData(request_id=event.data.request_id, reason="asked")
                await rt.publisher.publish(
                    InboxPaused.build(data=data, tenant_id="t1", inbox_id=inbox, source=rt.source)
                )

        rt.subscribe("mailsync.inbox.commands.v1", on_command)

    def setup_b(rt: Runtime) -> None:  # janitor-like: consumes the lifecycle event
        async def on_inbox_event(event: Envelope[Any]) -> None:
            if event.inbox_id == inbox:
                done.set()

        rt.subscribe("mailsync.inbox.v1", on_inbox_event)

    _, a = build(settings("trace-a"), setup_a, tracer_provider=provider)
    _, b = build(settings("trace-b"), setup_b, tracer_provider=provider)
    crm = make_broker(settings("trace-crm"), tracer_provider=provider)
    for name in ("trace-a", "trace-b"):
        await skip_history(kafka_bootstrap, f"trace-{run}.{name}")
    await a.broker.start()
    await b.broker.start()
    await crm.start()
    try:
        data = InboxCommandData(request_id=f"r-{run}", action="pause", by_user_id="ops")
        command = InboxCommandRequested.build(data=data, tenant_id="t1", inbox_id=inbox, source="/crm")
        await EventPublisher(crm).publish(command)
        await asyncio.wait_for(done.wait(), 90)
    finally:
        await crm.stop()
        await b.broker.stop()
        await a.broker.stop()
        await a.mongo.drop_database(f"test_trace_{run}")
        await a.mongo.close()
        await b.mongo.close()

    spans = exporter.get_finished_spans()
    key = inbox.encode()
    [root] = [
        s
        for s in spans
        if s.kind == SpanKind.PRODUCER
        and s.parent is None
        and s.attributes is not None
        and s.attributes.get("messaging.kafka.message.key") == key
    ]
    trace = [s for s in spans if s.context.trace_id == root.context.trace_id]
    span = {s.name: s for s in trace}
    assert set(span) >= {
        "mailsync.inbox.commands.v1 create",  # the CRM publishes the command
        "mailsync.inbox.commands.v1 process",  # runtime A consumes it
        "mailsync.inbox.v1 create",  # ... and publishes the lifecycle event
        "mailsync.inbox.v1 process",  # runtime B consumes that
    }, sorted(span)

    def parent(name: str) -> int | None:
        ctx = span[name].parent
        return ctx.span_id if ctx else None

    # Each step is a child of the one before: the context crossed Kafka twice in the record headers.
    assert parent("mailsync.inbox.commands.v1 process") == root.context.span_id
    assert parent("mailsync.inbox.v1 create") == span["mailsync.inbox.commands.v1 process"].context.span_id
    assert parent("mailsync.inbox.v1 process") == span["mailsync.inbox.v1 create"].context.span_id
    assert span["mailsync.inbox.commands.v1 process"].kind == SpanKind.CONSUMER
