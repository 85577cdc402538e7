"""The runtime each service is built on: FastStream app + health endpoints + Mongo + JSON logs.

A service provides `setup(runtime)` that registers its subscribers on `runtime.broker` through
`runtime.subscribe(...)`. `run_service` serves `/healthz` (liveness) and `/readyz` (readiness: Kafka
and the database answer) over uvicorn and shuts down gracefully on SIGTERM: consumers stop, in-flight
handlers finish, offsets are committed, the producer flushes.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from faststream import AckPolicy
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.asgi.types import Scope
from faststream.kafka import KafkaBroker, KafkaMessage
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from contracts import TOPICS_BY_NAME, Envelope, Topic

from . import logs, metrics, store, tracing
from .consumer import BatchHandler, EventConsumer, Handler
from .kafka import EventPublisher, KafkaStartupError, check_connection, make_broker
from .settings import ServiceSettings
from .store import Document


def _json(status: int, body: dict[str, Any]) -> AsgiResponse:
    return AsgiResponse(json.dumps(body).encode(), status, headers={"content-type": "application/json"})


@dataclass
class Runtime:
    settings: ServiceSettings
    broker: KafkaBroker
    publisher: EventPublisher
    mongo: AsyncMongoClient[Document]
    db: AsyncDatabase[Document]
    log: logging.Logger
    consumer: EventConsumer
    startup_hooks: list[Callable[[], Any]] = field(default_factory=list)
    shutdown_hooks: list[Callable[[], Any]] = field(default_factory=list)
    # Extra ASGI routes a service serves beside /healthz and /readyz (e.g. the fetcher's admin API).
    http_routes: list[tuple[str, Any]] = field(default_factory=list)
    # Run before each /metrics scrape to refresh state gauges (see mailsync.metrics.Collector).
    metrics_collectors: list[metrics.Collector] = field(default_factory=list)
    # For a service's own spans (no-op when tracing is off); see `traced`.
    tracer: Any = field(default_factory=lambda: tracing.tracer(None))

    @property
    def source(self) -> str:
        return f"/mailsync/{self.settings.service_name}"

    def traced(self, name: str, handler: Handler) -> Handler:
        """`handler` inside a span `name`, a child of the record's consume span (e.g. "link message")."""
        return tracing.traced(self.tracer, name, handler)

    def subscribe(self, topic_name: str, handler: Handler) -> None:
        """Consume a registry topic in this service's group; at-least-once, idempotent, never crashing."""
        topic = TOPICS_BY_NAME[topic_name]
        consumer = self.consumer

        @self.broker.subscriber(
            topic.name,
            group_id=self.settings.consumer_group(),
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
            title=f"{self.settings.service_name}:{topic.name}",
        )
        async def _consume(msg: KafkaMessage) -> None:
            record = msg.raw_message
            assert not isinstance(record, tuple)  # single-record subscriber
            started = time.perf_counter()
            seen: list[str] = []

            async def _handle(event: Envelope[Any]) -> None:
                seen.append(event.type)
                await handler(event)

            try:
                outcome = await consumer.process(
                    msg.body,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    key=record.key,
                    handler=_handle,
                )
            except Exception:
                metrics.observe_consumed(
                    record.topic, _event_type(topic, seen, record.headers), "failed", started
                )
                raise
            metrics.observe_consumed(record.topic, _event_type(topic, seen, record.headers), outcome, started)
            metrics.observe_lag(msg.consumer, record.topic, record.partition, record.offset)

    def subscribe_batch(
        self,
        topic_name: str,
        handler: BatchHandler,
        *,
        max_records: int = 200,
        batch_timeout_ms: int = 50,
        dedupe: bool = True,
    ) -> None:
        """Like `subscribe`, but the valid events of one poll (up to `max_records`) go to one handler
        call: one database round trip per batch instead of several per record. The handler must be
        idempotent for the whole batch (a failure redelivers all of it); see `process_batch`."""
        topic = TOPICS_BY_NAME[topic_name]
        consumer = self.consumer

        @self.broker.subscriber(
            topic.name,
            group_id=self.settings.consumer_group(),
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
            title=f"{self.settings.service_name}:{topic.name}:batch",
            batch=True,
            max_records=max_records,
            batch_timeout_ms=batch_timeout_ms,
        )
        async def _consume_batch(msg: KafkaMessage) -> None:
            records = msg.raw_message
            if not isinstance(records, tuple) or not records:
                return
            started = time.perf_counter()
            try:
                # One span per record under its producer's span, so a message's trace survives batching.
                with tracing.record_spans(self.tracer, records):
                    results = await consumer.process_batch(records, handler=handler, dedupe=dedupe)
            except Exception:
                for record in records:
                    metrics.observe_consumed(
                        record.topic, _event_type(topic, [], record.headers), "failed", started
                    )
                raise
            for record, (outcome, event_type) in zip(records, results, strict=True):
                seen = [event_type] if event_type else []
                metrics.observe_consumed(
                    record.topic, _event_type(topic, seen, record.headers), outcome, started
                )
            last = records[-1]
            metrics.observe_lag(msg.consumer, last.topic, last.partition, last.offset)


def _event_type(topic: Topic, seen: list[str], headers: Any) -> str:
    """Metric label for a record: the parsed type, else a registry type named by its `ce_type` header.

    Only registry types are used, so a producer's arbitrary header cannot grow the label set.
    """
    if seen:
        return seen[0]
    known = {cls.event_type for cls in topic.events}
    for name, value in headers or ():
        if name == "ce_type" and value and bytes(value).decode("utf-8", "replace") in known:
            return bytes(value).decode()
    return "unknown"


def build(
    settings: ServiceSettings, setup: Callable[[Runtime], None], tracer_provider: Any | None = None
) -> tuple[AsgiFastStream, Runtime]:
    log = logs.configure(settings.service_name, settings.log_level)
    # Tests pass their own provider (in-memory exporter); otherwise MAILSYNC_TRACING_ENABLED decides.
    tracer_provider = tracer_provider or tracing.tracer_provider(settings)
    broker = make_broker(settings, logger=logging.getLogger("faststream"), tracer_provider=tracer_provider)
    publisher = EventPublisher(broker)
    mongo = store.make_client(settings)
    db = store.database(mongo, settings)
    source = f"/mailsync/{settings.service_name}"
    consumer = EventConsumer(
        settings.service_name, db, publisher, source=source, tenant_default=settings.tenant_default
    )
    rt = Runtime(settings, broker, publisher, mongo, db, log, consumer)
    rt.tracer = tracing.tracer(tracer_provider)
    setup(rt)

    @get(include_in_schema=False)
    async def healthz(scope: Scope) -> AsgiResponse:
        return _json(200, {"status": "ok", "service": settings.service_name})

    @get(include_in_schema=False)
    async def readyz(scope: Scope) -> AsgiResponse:
        kafka_ok, db_ok = await asyncio.gather(broker.ping(2.0), store.ping(db))
        body = {"kafka": kafka_ok, "database": db_ok}
        return _json(200 if kafka_ok and db_ok else 503, body)

    @get(include_in_schema=False)
    async def metrics_endpoint(scope: Scope) -> AsgiResponse:
        for collect in rt.metrics_collectors:
            try:
                result = collect()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # a scrape still answers with what it has
                log.warning("metrics collector failed", exc_info=True)
        body, content_type = metrics.exposition()
        return AsgiResponse(body, 200, headers={"content-type": content_type})

    async def _after_startup() -> None:
        for hook in rt.startup_hooks:
            result = hook()
            if asyncio.iscoroutine(result):
                await result
        log.info("started", extra={"http_port": settings.http_port})

    async def _after_shutdown() -> None:
        for hook in rt.shutdown_hooks:
            result = hook()
            if asyncio.iscoroutine(result):
                await result
        await mongo.close()
        if tracer_provider is not None:
            tracer_provider.shutdown()  # flush the spans still batched
        log.info("stopped")

    app = AsgiFastStream(
        broker,
        asgi_routes=[
            ("/healthz", healthz),
            ("/readyz", readyz),
            ("/metrics", metrics_endpoint),
            *rt.http_routes,
        ],
        logger=log,
        after_startup=[_after_startup],
        after_shutdown=[_after_shutdown],
    )
    return app, rt


def _exit_zero(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def tune_gc(settings: ServiceSettings) -> None:
    """Fewer collector runs (see `gc_gen0_threshold`); what exists after start-up (modules, settings)
    is frozen out of every later collection."""
    if settings.gc_gen0_threshold:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(settings.gc_gen0_threshold, gen1, gen2)
    gc.freeze()


def run_service(settings: ServiceSettings, setup: Callable[[Runtime], None]) -> None:
    app, rt = build(settings, setup)
    tune_gc(settings)
    # Fail fast with the broker's reason (e.g. wrong SASL credentials) instead of hanging unready.
    try:
        asyncio.run(check_connection(settings))
    except KafkaStartupError as exc:
        rt.log.error(str(exc))
        raise SystemExit(1) from None
    # uvicorn handles SIGTERM/SIGINT gracefully, then re-raises the signal to the handler it found;
    # this one turns that into exit status 0, so orchestrators see a clean stop.
    signal.signal(signal.SIGTERM, _exit_zero)
    signal.signal(signal.SIGINT, _exit_zero)
    asyncio.run(
        app.run(
            log_level=logging.WARNING,
            run_extra_options={
                "host": settings.http_host,
                "port": settings.http_port,
                "timeout_graceful_shutdown": int(settings.shutdown_timeout_seconds),
                "log_config": None,
            },
        )
    )
