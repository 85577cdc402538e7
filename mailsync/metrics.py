"""Prometheus metrics every service exposes at `GET /metrics`.

One process runs one service, so the metrics live in one module-level registry; Prometheus adds the
pod/service labels when it scrapes. The runtime feeds the consumer-path metrics (consumed, rejected,
handler latency, consumer lag) and the publisher feeds `events_produced`; the domain metrics below
(IMAP connections by state, sync progress, IDLE cycles, reconnects, SMTP outcomes by code, Sent
copies, janitor actions, linker signals, errors by code) are fed by the services where the fact
happens, through the small `observe_*` helpers (e.g. `metrics.observe_smtp(result.response)`).
docs/operations.md lists them with what to alert on.

Label values are bounded sets (topic names, event types, status names, reply codes, error codes):
never a tenant, inbox or message id, which would grow the series without bound.
"""

from __future__ import annotations

import time
import weakref
from collections import Counter as Counter_
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sized
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
from prometheus_client.core import GaugeMetricFamily, Metric

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
IMAP_IDLE = Counter(
    "mailsync_imap_idle",
    "IDLE cycles that ended, by how: `changes` (the server announced new mail, flags or expunges) or "
    "`restart` (the restart timer ran out, well before the server's 29-minute limit).",
    ["ended"],
    registry=REGISTRY,
)
IMAP_RECONNECTS = Counter(
    "mailsync_imap_reconnects",
    "IMAP connections given up and reopened after a backoff, by reason "
    "(connection_lost, timeout, network, protocol, server_error).",
    ["reason"],
    registry=REGISTRY,
)
SENT_COPY_OUTCOMES = Counter(
    "mailsync_sent_copy_outcomes",
    "Sent-folder copies by outcome: appended, already_present, provider_filed, retry (failed, will "
    "retry) or failed (given up).",
    ["outcome"],
    registry=REGISTRY,
)
JANITOR_ACTIONS = Counter(
    "mailsync_janitor_actions",
    "Inbox cleanup actions taken by the janitor's sweeps: warned, cancelled, deactivated, purged.",
    ["action"],
    registry=REGISTRY,
)
JANITOR_SWEEPS = Counter(
    "mailsync_janitor_sweeps",
    "Janitor sweeps by outcome: done, skipped (another replica holds the lease), lost_lease, failed.",
    ["outcome"],
    registry=REGISTRY,
)
LINKER_SIGNALS = Counter(
    "mailsync_linker_signals",
    "Messages the linker classified, by kind: reply, auto_reply, bounce, none (an inbound message that "
    "answers nothing we sent), outbound, history (found by a backfill: no signal), auto_reply_unrelated.",
    ["kind"],
    registry=REGISTRY,
)
LINKER_LINKS = Counter(
    "mailsync_linker_links",
    "Link decisions stored for a message: linked (first links), unlinked (first look, no CRM record), "
    "changed (links differ after a directory change).",
    ["outcome"],
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

IMAP_STATES = ("syncing", "idle", "polling")
# Each open IMAP connection's current state. Weak keys: a connection dropped without a clean close
# leaves the gauge by itself when it is garbage-collected, so the gauge cannot drift upwards.
_imap_states: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
# Initial syncs in progress: (tenant, inbox, folder) → (done, total) as last announced.
_initial_progress: dict[tuple[str, str, str], tuple[int, int]] = {}


def imap_state(connection: object, state: str | None) -> None:
    """Record what an open IMAP connection is doing now (one of IMAP_STATES); None when it is closed."""
    if state is None:
        _imap_states.pop(connection, None)
    else:
        _imap_states[connection] = state


def observe_idle(woke: Sized) -> None:
    """An IDLE cycle ended; `woke` is what the server announced (empty: the restart timer ran out)."""
    IMAP_IDLE.labels(ended="changes" if len(woke) else "restart").inc()


def observe_reconnect(exc: BaseException) -> None:
    """An IMAP connection failed and will be reopened; the reason is a bounded name for the error."""
    name = type(exc).__name__
    if name == "ConnectionLost":
        reason = "connection_lost"
    elif isinstance(exc, TimeoutError):
        reason = "timeout"
    elif name == "ProtocolError":
        reason = "protocol"
    elif isinstance(exc, OSError):
        reason = "network"
    else:
        reason = "server_error"
    IMAP_RECONNECTS.labels(reason=reason).inc()


def observe_sync_progress(tenant_id: str, inbox_id: str, folder: str, done: int, total: int) -> None:
    """A folder's initial sync reported progress; a finished one leaves the gauges."""
    key = (tenant_id, inbox_id, folder)
    if done >= total:
        _initial_progress.pop(key, None)
    else:
        _initial_progress[key] = (done, total)


def observe_smtp(outcome: object) -> None:
    """Count one SMTP submission by reply code: from a reply text ("250 2.0.0 Ok"), an exception
    carrying `code` (or `recipients` with codes, or a `cause`), or None when no reply came."""
    code: object = None
    if isinstance(outcome, str):
        code = outcome.split(" ", 1)[0]
    elif outcome is not None:
        code = getattr(outcome, "code", None)
        recipients = getattr(outcome, "recipients", None)
        if code is None and recipients:
            code = getattr(recipients[0], "code", None)
    text = str(code) if code is not None else ""
    SMTP_OUTCOMES.labels(code=text if text.isdigit() and len(text) == 3 else "none").inc()


def observe_sent_copy(outcome: str) -> None:
    SENT_COPY_OUTCOMES.labels(outcome=outcome).inc()


def observe_sweep(stats: Any) -> None:
    """Count a janitor sweep's actions from its stats (warned, cancelled, deactivated, purged_inboxes)."""
    if stats is None:
        JANITOR_SWEEPS.labels(outcome="failed").inc()
        return
    if not getattr(stats, "acquired", True):
        JANITOR_SWEEPS.labels(outcome="skipped").inc()
        return
    JANITOR_SWEEPS.labels(outcome="lost_lease" if getattr(stats, "lost_lease", False) else "done").inc()
    for action, attr in (
        ("warned", "warned"),
        ("cancelled", "cancelled"),
        ("deactivated", "deactivated"),
        ("purged", "purged_inboxes"),
    ):
        if n := int(getattr(stats, attr, 0) or 0):
            JANITOR_ACTIONS.labels(action=action).inc(n)


def observe_linked(sets: Mapping[str, Any], *, first: bool) -> None:
    """Count what one stored link decision changed: the links (first time or a change) and the signal."""
    if "links" in sets:
        if first:
            LINKER_LINKS.labels(outcome="linked" if sets["links"] else "unlinked").inc()
        else:
            LINKER_LINKS.labels(outcome="changed").inc()
    if sets.get("signal"):
        LINKER_SIGNALS.labels(kind=str(sets["signal"])).inc()


class _StateCollector:
    """Gauges computed at scrape time from the live state above."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "mailsync_imap_connections",
            "Open IMAP connections held by this process, by state: syncing (running commands), idle "
            "(in IDLE), polling (waiting for the next poll).",
            labels=["state"],
        )
        counts = Counter_(_imap_states.values())
        for state in sorted({*IMAP_STATES, *counts}):
            connections.add_metric([state], counts.get(state, 0))
        yield connections
        progress = list(_initial_progress.values())
        yield GaugeMetricFamily(
            "mailsync_sync_initial_folders",
            "Folders whose initial sync is in progress in this process.",
            value=len(progress),
        )
        yield GaugeMetricFamily(
            "mailsync_sync_initial_remaining_messages",
            "Messages still to fetch by the initial syncs in progress (as last announced by each folder).",
            value=sum(max(total - done, 0) for done, total in progress),
        )


REGISTRY.register(_StateCollector())


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
    """Refresh `mailsync_inboxes` from the inbox registry and the sync engine's live status."""
    from contracts.inbox import InboxStatus  # noqa: PLC0415 (keeps this module import-light)
    from mailsync.inbox_record import RUNNING_STATUSES  # noqa: PLC0415

    counts = {status: 0 for status in get_args(InboxStatus)}
    # An inbox the registry holds as running shows the sync engine's live status (syncing, idle,
    # connect_failed, throttled) from `sync_state`; paused, deactivated, etc. come from the registry.
    live = {
        doc["_id"]: str(doc["live_status"])
        async for doc in db["sync_state"].find({}, {"live_status": 1})
        if doc.get("live_status") in counts
    }
    async for doc in db["inboxes"].find({}, {"status": 1}):
        status = str(doc.get("status", "connecting"))
        if status in RUNNING_STATUSES:
            status = live.get(doc["_id"], status)
        counts[status] = counts.get(status, 0) + 1
    for status, n in counts.items():
        INBOXES.labels(status=status).set(n)
