"""One trace across services: FastStream's telemetry middleware carries the context in Kafka headers.

- The real chain: the fetcher and the linker run as real processes (`python -m services.X`) with
  `MAILSYNC_TRACING_FILE`, which writes every finished span as a JSON line. A reply to a message
  mailsync sent lands in a real Dovecot mailbox; the fetcher syncs it and publishes `message
  received`, the linker consumes it, links it ("link message" span) and publishes `reply received`.
  All these spans must be one trace, each a child of the one before, across both processes.
- Two runtimes built like the services (`mailsync.service.build`) in this process share an in-memory
  span exporter: the context crosses Kafka twice, from a command to a lifecycle event.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
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
from mailsync.outbound_ids import message_id_for, send_id_for
from mailsync.service import Runtime, build
from mailsync.settings import ServiceSettings
from tests.integration.conftest import MailUser, eventually, skip_history
from tests.integration.test_fetcher_sync import append, record, sync_env

pytestmark = pytest.mark.integration
# The linker (a fresh consumer group) may first work through what other runs publish meanwhile on the
# shared messages topic, in the reply's partition.
BACKLOG_S = 120.0


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


def read_spans(path: Path) -> dict[str, dict[str, Any]]:
    """Spans of one process's JSON-lines file, by span id."""
    if not path.exists():
        return {}
    spans = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {s["span_id"]: s for s in spans}


async def test_one_trace_from_imap_sync_through_linker_to_reply_received(  # type: ignore[no-untyped-def]  # noqa: PLR0917
    service,
    watch,
    mongo,
    mail_lab,
    mail_user_factory: Callable[[str], MailUser],
    tmp_path: Path,
) -> None:
    """The linker's default batch path: one span per record (`mailsync.tracing.record_spans`) and a
    `link message` span per message; `MAILSYNC_LINKER_BATCH=false` (one record at a time) gives the
    same chain through FastStream's own consume span."""
    user = mail_user_factory("trace")
    tag = uuid.uuid4().hex[:8]
    inbox_id = f"trace-{tag}"
    fetcher_file, linker_file = tmp_path / "fetcher-spans.jsonl", tmp_path / "linker-spans.jsonl"
    replies = await watch("mailsync.replies.v1")
    inbox_events = await watch("mailsync.inbox.v1")
    service("linker", MAILSYNC_TRACING_FILE=str(linker_file))
    fetcher = service("fetcher", **sync_env(MAILSYNC_TRACING_FILE=str(fetcher_file)))
    await mongo[fetcher.database].inboxes.insert_one(record(user, mail_lab.imap_port, "t1", inbox_id))
    await inbox_events.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["type"] == "mailsync.inbox.initial_sync_completed", 60
    )

    # Ann answers a message mailsync sent: In-Reply-To carries our Message-ID token.
    ours = message_id_for(send_id_for("t1", inbox_id, f"k-{tag}"), "mailsync.test")
    reply = (
        f"From: Ann <ann-{tag}@example.com>\r\nTo: {user.email}\r\nSubject: Re: our offer\r\n"
        f"Date: {format_datetime(datetime.now(UTC))}\r\nMessage-ID: <reply-{tag}@example.com>\r\n"
        f"In-Reply-To: {ours}\r\nReferences: {ours}\r\n\r\nYes, please.\r\n"
    ).encode()
    await asyncio.to_thread(append, user, mail_lab.imap_port, [reply])
    got = await replies.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["type"] == "mailsync.message.reply_received", BACKLOG_S
    )
    assert got["data"]["original_message_id"] == ours.strip("<>")

    def received_link(spans: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        return next(
            (
                s
                for s in spans.values()
                if s["name"] == "link message"
                and s["attributes"].get("mailsync.type") == "mailsync.message.received"
                and s["attributes"].get("mailsync.inbox_id") == inbox_id
            ),
            None,
        )

    async def linker_spans() -> dict[str, dict[str, Any]] | None:
        spans = read_spans(linker_file)
        link = received_link(spans)
        # The reply's publish spans end inside "link message", the consume span right after it.
        return spans if link and link["parent_span_id"] in spans else None

    linked = await eventually(linker_spans, timeout=15)
    published = read_spans(fetcher_file)
    link = received_link(linked)
    assert link is not None

    # Linker: consume span (child of the fetcher's span, through the record's traceparent header).
    consume = linked[link["parent_span_id"]]
    assert consume["name"] == "mailsync.messages.v1 process" and consume["kind"] == "CONSUMER"
    assert consume["service"] == "mailsync-linker" and consume["parent_remote"]
    # Fetcher: the span of publishing `message received` from the IMAP sync.
    create = published[consume["parent_span_id"]]
    assert create["name"] == "mailsync.messages.v1 create" and create["kind"] == "PRODUCER"
    assert create["service"] == "mailsync-fetcher"
    assert create["attributes"]["messaging.kafka.message.key"] == inbox_id
    assert any(
        s["name"] == "mailsync.messages.v1 publish" and s["parent_span_id"] == create["span_id"]
        for s in published.values()
    )
    # Linker: `reply received` published from inside "link message".
    reply_creates = [
        s
        for s in linked.values()
        if s["name"] == "mailsync.replies.v1 create" and s["parent_span_id"] == link["span_id"]
    ]
    assert reply_creates, sorted(s["name"] for s in linked.values())
    reply_create = reply_creates[0]
    assert reply_create["kind"] == "PRODUCER"
    assert any(
        s["name"] == "mailsync.replies.v1 publish" and s["parent_span_id"] == reply_create["span_id"]
        for s in linked.values()
    )
    chain = [create, consume, link, reply_create]
    assert {s["trace_id"] for s in chain} == {create["trace_id"]}, "one trace from IMAP to the reply"
    assert create["parent_span_id"] is None, "the trace starts at the fetcher"
