"""Prometheus metrics every service exposes at `GET /metrics`.

One process runs one service, so the metrics live in one module-level registry; Prometheus adds the
pod/service labels when it scrapes. The runtime feeds the consumer-path metrics (consumed, rejected,
handler latency, consumer lag) and the publisher feeds `events_produced`; the domain metrics below
(IMAP connections, sync progress, SMTP outcomes, errors by code) are for the services to update where
the fact happens, e.g. `metrics.SMTP_OUTCOMES.labels(code="250").inc()`.

Label values are bounded sets (topic names, event types, status names, reply codes, error codes):
never a tenant, inbox or message id, which would grow the series without bound.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, get_args

from aiokafka import TopicPartition
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_CONSUMED = Counter(
    "mailsync_events_consumed",
    "Records taken from Kafka by the consumer path, by topic, event type and outcome "
    "(handled, duplicate, rejected, failed).",
    ["topic", "type", "outcome"],
    registry=REGISTRY,
)
EVENTS_REJECTED = Counter(
    "mailsync_events_rejected",
    "Records that failed their topic's contract and went to mailsync.rejected.v1.",
    ["topic"],
    registry=REGISTRY,
)
EVENTS_PRODUCED = Counter(
    "mailsync_events_produced",
    "Events acknowledged by Kafka, by topic and event type.",
    ["topic", "type"],
    registry=REGISTRY,
)
HANDLER_SECONDS = Histogram(
    "mailsync_handler_seconds",
    "Time spent in the consumer path per record (validation, dedupe, handler), by topic.",
    ["topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "mailsync_consumer_lag",
    "Records behind the partition's high watermark after the last processed record.",
    ["topic", "partition"],
    registry=REGISTRY,
)
INBOXES = Gauge(
    "mailsync_inboxes",
    "Inboxes in the registry by status (the fetcher's view; updated at each scrape).",
    ["status"],
    registry=REGISTRY,
)
IMAP_CONNECTIONS = Gauge(
    "mailsync_imap_connections",
    "Open IMAP connections held by this process.",
    registry=REGISTRY,
)
SYNC_MESSAGES = Counter(
    "mailsync_sync_messages",
    "Messages fetched by IMAP sync, by phase (initial, incremental).",
    ["phase"],
    registry=REGISTRY,
)
SMTP_OUTCOMES = Counter(
    "mailsync_smtp_outcomes",
    "SMTP submissions by final reply code (e.g. 250, 535, 550) or `none` when no reply came.",
    ["code"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "mailsync_errors",
    "Errors by stable error code (the code carried in error events and logs).",
    ["code"],
    registry=REGISTRY,
)

# Run before each scrape to refresh gauges that are read from state (e.g. inbox counts).
Collector = Callable[[], Awaitable[None] | None]


def observe_consumed(topic: str, event_type: str | None, outcome: str, started: float) -> None:
    EVENTS_CONSUMED.labels(topic=topic, type=event_type or "unknown", outcome=outcome).inc()
    if outcome == "rejected":
        EVENTS_REJECTED.labels(topic=topic).inc()
    HANDLER_SECONDS.labels(topic=topic).observe(time.perf_counter() - started)


def observe_lag(consumer: Any, topic: str, partition: int, offset: int) -> None:
    """Lag after processing `offset`: high watermark (next offset to be written) minus the next to read."""
    highwater = getattr(consumer, "highwater", None)
    if highwater is None:
        return  # FastStream's in-memory test consumer has no watermarks
    hw = highwater(TopicPartition(topic, partition))
    if hw is not None:
        CONSUMER_LAG.labels(topic=topic, partition=str(partition)).set(max(hw - offset - 1, 0))


def observe_produced(topic: str, event_type: str, count: int = 1) -> None:
    EVENTS_PRODUCED.labels(topic=topic, type=event_type).inc(count)


def exposition() -> tuple[bytes, str]:
    """The Prometheus text format of the registry and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


async def count_inboxes(db: Any) -> None:
    """Refresh `mailsync_inboxes` from the inbox registry (one $group over the `inboxes` collection)."""
    from contracts.inbox import InboxStatus  # noqa: PLC0415 (keeps this module import-light)

    counts = {status: 0 for status in get_args(InboxStatus)}
    async for row in await db["inboxes"].aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}]):
        counts[str(row["_id"])] = int(row["n"])
    for status, n in counts.items():
        INBOXES.labels(status=status).set(n)
