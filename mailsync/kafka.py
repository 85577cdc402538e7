"""Kafka wiring shared by the services: the broker, keyed publishing from the topic registry, topics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from contracts import Envelope, Topic, topic_of

from . import metrics
from .settings import ServiceSettings

log = logging.getLogger("mailsync.kafka")

_PARTITIONER = DefaultPartitioner()  # what make_broker's producer uses (no custom partitioner is set)
_PARTITION_CACHE = 100_000  # keys remembered (inbox ids, mostly), then forgotten all at once


def _ssl_context(settings: ServiceSettings) -> ssl.SSLContext | None:
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    return ssl.create_default_context(cafile=settings.kafka_ssl_cafile)


def security(settings: ServiceSettings) -> BaseSecurity | None:
    """FastStream security object for the configured protocol (None for plain local Kafka)."""
    ctx = _ssl_context(settings)
    if settings.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        if not (settings.kafka_sasl_username and settings.kafka_sasl_password):
            msg = "MAILSYNC_KAFKA_SASL_USERNAME and MAILSYNC_KAFKA_SASL_PASSWORD are required for SASL"
            raise ValueError(msg)
        user, password = settings.kafka_sasl_username, settings.kafka_sasl_password.get_secret_value()
        cls: type[BaseSecurity] = {
            "PLAIN": SASLPlaintext,
            "SCRAM-SHA-256": SASLScram256,
            "SCRAM-SHA-512": SASLScram512,
        }[settings.kafka_sasl_mechanism or "SCRAM-SHA-512"]
        return cls(username=user, password=password, ssl_context=ctx, use_ssl=ctx is not None)  # type: ignore[call-arg]
    if ctx is not None:
        return BaseSecurity(ssl_context=ctx, use_ssl=True)
    return None


def make_broker(
    settings: ServiceSettings, logger: logging.Logger | None = None, tracer_provider: Any | None = None
) -> KafkaBroker:
    """A broker whose producer never loses an acknowledged event: acks=all, idempotent producer.

    With a tracer provider, FastStream's telemetry middleware traces publishes and consumes and
    carries the trace context in the record headers.
    """
    middlewares: list[Any] = []
    if tracer_provider is not None:
        from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware  # noqa: PLC0415

        middlewares.append(KafkaTelemetryMiddleware(tracer_provider=tracer_provider))
    return KafkaBroker(
        settings.kafka_bootstrap_servers.split(","),
        client_id=f"mailsync-{settings.service_name}",
        acks="all",
        enable_idempotence=True,
        # linger 0: a lone event goes out at once; pipelined sends still batch while a request is in
        # flight (bench/publish.py: linger 5 ms cut one-at-a-time publishing from ~1,500/s to ~160/s).
        linger_ms=0,
        # Bigger record batches than aiokafka's 16 KiB: a burst of events (an initial sync's 1,000
        # per unit) goes out in fewer produce requests (bench: 1.4-2x the events/s, -30% CPU each).
        max_batch_size=settings.kafka_max_batch_bytes,
        compression_type=settings.kafka_compression_type,
        security=security(settings),
        allow_auto_create_topics=False,
        graceful_timeout=settings.shutdown_timeout_seconds,
        logger=logger,
        log_level=logging.DEBUG,  # FastStream's per-message INFO lines cost throughput; keep them at DEBUG
        middlewares=middlewares,
    )


class EventPublisher:
    """Publishes contract events to their registry topic, keyed so per-inbox order holds."""

    def __init__(self, broker: KafkaBroker) -> None:
        self._broker = broker
        self._partitions: dict[tuple[str, bytes], tuple[int, int]] = {}  # (topic, key) → (count, partition)

    def _direct(self) -> AIOKafkaProducer | None:
        """aiokafka's producer under FastStream's, used when no publish middleware (tracing) has to see
        the records: FastStream's publish cost ~40 µs of CPU a record, the producer's send with the
        partition given ~23-26 µs (20,000 `message received` events, local Kafka). None: FastStream
        publishes."""
        if self._broker.middlewares:
            return None
        state = getattr(getattr(self._broker, "_producer", None), "_producer", None)
        producer = getattr(state, "producer", None)
        return producer if isinstance(producer, AIOKafkaProducer) else None

    def _partition(self, producer: AIOKafkaProducer, topic: str, key: bytes) -> int | None:
        """The partition aiokafka's default partitioner picks for `key` (murmur2, in Python: computed
        once per key and partition count). None before the topic's metadata is known: send decides."""
        cluster = producer.client.cluster
        known = cluster.partitions_for_topic(topic)
        if not known:
            return None
        cached = self._partitions.get((topic, key))
        if cached is not None and cached[0] == len(known):
            return cached[1]
        available = list(cluster.available_partitions_for_topic(topic) or ())
        partition = int(_PARTITIONER(key, list(known), available))
        if len(self._partitions) >= _PARTITION_CACHE:
            self._partitions.clear()
        self._partitions[(topic, key)] = (len(known), partition)
        return partition

    async def _send(self, producer: AIOKafkaProducer, event: Envelope[Any]) -> asyncio.Future[Any]:
        """Send one record without waiting for its acknowledgement; the same record FastStream sends."""
        topic, key, body = self.route(event)
        headers = [(k, v.encode()) for k, v in self.headers(event).items()]
        headers.append(("correlation_id", event.id.encode()))
        partition = self._partition(producer, topic.name, key)
        fut: asyncio.Future[Any] = await producer.send(
            topic.name, body, key=key, partition=partition, headers=headers
        )
        return fut

    @staticmethod
    def route(event: Envelope[Any]) -> tuple[Topic, bytes, bytes]:
        topic = topic_of(event)
        return topic, topic.key_for(event), event.model_dump_json().encode()

    # The event id is also the record's FastStream correlation id: stable across replays, and no
    # uuid4 drawn per record (~5 us each on a publish path of ~45 us).
    @staticmethod
    def headers(event: Envelope[Any]) -> dict[str, str]:
        # CloudEvents Kafka binding names; lets consumers route without parsing the body.
        return {"ce_id": event.id, "ce_type": event.type, "content-type": "application/cloudevents+json"}

    async def publish(self, event: Envelope[Any]) -> None:
        """Publish one event and wait for Kafka's acknowledgement."""
        producer = self._direct()
        if producer is not None:
            await (await self._send(producer, event))
        else:
            topic, key, body = self.route(event)
            await self._broker.publish(
                body, topic.name, key=key, headers=self.headers(event), correlation_id=event.id
            )
        metrics.observe_produced(topic_of(event).name, event.type)

    async def publish_all(self, events: Sequence[Envelope[Any]]) -> None:
        """Publish many events pipelined, returning once Kafka acknowledged all of them.

        Awaiting each send in turn costs a round trip per event (≈650/s); sending without waiting and
        then gathering the futures lets the producer batch (tens of thousands per second). Order per
        key is kept because the idempotent producer preserves send order within a partition.
        """
        await self.publish_grouped([(nullcontext(), events)])

    async def publish_grouped(
        self, groups: Sequence[tuple[AbstractContextManager[Any], Sequence[Envelope[Any]]]]
    ) -> None:
        """`publish_all` for the events of many inputs at once: each group is sent inside its own context
        (e.g. the span of the input that caused it, so traces survive batching), still pipelined and in
        order, returning once Kafka acknowledged all of them."""
        futures: list[asyncio.Future[Any]] = []
        producer = self._direct()
        for context, events in groups:
            with context:
                for event in events:
                    if producer is not None:
                        futures.append(await self._send(producer, event))
                        continue
                    topic, key, body = self.route(event)
                    fut = await self._broker.publish(
                        body,
                        topic.name,
                        key=key,
                        headers=self.headers(event),
                        correlation_id=event.id,
                        no_confirm=True,
                    )
                    futures.append(fut)
        await asyncio.gather(*futures)
        for _, events in groups:
            for event in events:
                metrics.observe_produced(topic_of(event).name, event.type)


DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs config_source: set on the topic itself


def config_drift(wanted: dict[str, str], current: dict[str, str]) -> dict[str, str]:
    """The wanted settings whose current value differs (a missing key counts as different)."""
    return {k: v for k, v in wanted.items() if current.get(k) != v}


async def _align_topic_configs(admin: AIOKafkaAdminClient, topics: Sequence[Topic]) -> list[str]:
    """Bring retention/cleanup (and any registry config) of existing topics to the registry's values.

    AlterConfigs (the non-incremental API aiokafka offers) replaces every dynamic setting of a topic,
    so the topic's other dynamic settings (say, one an operator set) are sent back unchanged.
    """
    resources = [ConfigResource(ConfigResourceType.TOPIC, t.name) for t in topics]
    described = await admin.describe_configs(resources)
    current: dict[str, dict[str, str]] = {}
    dynamic: dict[str, dict[str, str]] = {}
    for response in described:
        for res in response.to_object()["resources"]:
            if res["error_code"]:
                msg = f"describing configs of {res['resource_name']} failed: {res['error_message']}"
                raise RuntimeError(msg)
            entries = res["config_entries"]
            current[res["resource_name"]] = {e["config_names"]: e["config_value"] for e in entries}
            dynamic[res["resource_name"]] = {
                e["config_names"]: e["config_value"]
                for e in entries
                if e["config_source"] == DYNAMIC_TOPIC_CONFIG and e["config_value"] is not None
            }
    changes: list[str] = []
    alter: list[ConfigResource] = []
    for t in topics:
        drift = config_drift(t.kafka_config(), current.get(t.name, {}))
        if drift:
            merged = {**dynamic.get(t.name, {}), **t.kafka_config()}
            alter.append(ConfigResource(ConfigResourceType.TOPIC, t.name, merged))
            settings = ", ".join(f"{k}={v}" for k, v in sorted(drift.items()))
            changes.append(f"updated {t.name} config: {settings}")
    if alter:
        for response in await admin.alter_configs(alter):
            for res in response.to_object()["resources"]:
                if res["error_code"]:
                    msg = f"altering configs of {res['resource_name']} failed: {res['error_message']}"
                    raise RuntimeError(msg)
    return changes


async def apply_topics(
    bootstrap_servers: str, topics: Iterable[Topic], *, replication_factor: int = 1, **client: Any
) -> list[str]:
    """Create missing topics, grow partition counts, align retention/cleanup; idempotent.

    Returns what it changed (empty when everything already matched the registry).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers.split(","), **client)
    await admin.start()
    changed: list[str] = []
    try:
        existing = set(await admin.list_topics())
        wanted = list(topics)
        new = [
            NewTopic(t.name, t.partitions, replication_factor, topic_configs=t.kafka_config())
            for t in wanted
            if t.name not in existing
        ]
        if new:
            # A concurrent `topics apply` may win the race; the outcome is the same.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
            changed += [f"created {t.name} ({t.num_partitions} partitions)" for t in new]
        present = [t for t in wanted if t.name in existing]
        if present:
            described = await admin.describe_topics([t.name for t in present])
            counts = {d["topic"]: len(d["partitions"]) for d in described}
            grow = {
                t.name: NewPartitions(t.partitions) for t in present if counts.get(t.name, 0) < t.partitions
            }
            if grow:
                await admin.create_partitions(grow)
                changed += [f"grew {name} to {p.total_count} partitions" for name, p in grow.items()]
            changed += await _align_topic_configs(admin, present)
    finally:
        await admin.close()
    return changed


def client_kwargs(settings: ServiceSettings) -> dict[str, Any]:
    """Security keyword arguments for plain aiokafka clients (admin, consumer), from the settings."""
    sec = security(settings)
    if sec is None:
        return {}
    kwargs: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if sec.ssl_context is not None:
        kwargs["ssl_context"] = sec.ssl_context
    if settings.kafka_sasl_mechanism:
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        kwargs["sasl_plain_password"] = password.get_secret_value() if password else None
    return kwargs


class KafkaStartupError(RuntimeError):
    """Kafka refused or could not be reached at start-up; the message says which setting to check."""


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def check_connection(settings: ServiceSettings, attempts: int = 3, delay: float = 2.0) -> None:
    """Bootstrap once against Kafka before serving; raise KafkaStartupError with the broker's reason.

    aiokafka logs the real cause (say `SaslAuthenticationFailed`) and raises a generic "Unable to
    bootstrap"; the log line is captured so the error names the cause. Without this check a service
    whose broker cannot connect keeps running unready instead of exiting with a clear error.
    """
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    capture = _Capture()
    aiokafka_log = logging.getLogger("aiokafka")
    aiokafka_log.addHandler(capture)
    try:
        for attempt in range(attempts):
            admin = AIOKafkaAdminClient(
                bootstrap_servers=settings.kafka_bootstrap_servers.split(","), **client_kwargs(settings)
            )
            try:
                await admin.start()
            except KafkaError as exc:
                auth = [m for m in capture.messages if "Authentication" in m or "SASL" in m.upper()]
                if auth or attempt == attempts - 1:
                    cause = auth[-1] if auth else (capture.messages[-1] if capture.messages else str(exc))
                    mech = settings.kafka_sasl_mechanism or "-"
                    msg = (
                        f"cannot connect to Kafka at {settings.kafka_bootstrap_servers} "
                        f"(security protocol {settings.kafka_security_protocol}, SASL mechanism {mech}, "
                        f"user {settings.kafka_sasl_username or '-'}): {cause}; check the "
                        "MAILSYNC_KAFKA_BOOTSTRAP_SERVERS, MAILSYNC_KAFKA_SECURITY_PROTOCOL and "
                        "MAILSYNC_KAFKA_SASL_* settings"
                    )
                    raise KafkaStartupError(msg) from None
                await asyncio.sleep(delay)
            else:
                return
            finally:
                with contextlib.suppress(Exception):
                    await admin.close()
    finally:
        aiokafka_log.removeHandler(capture)
