"""What the inboxes did lately, from their events: a bounded in-memory view kept by reading the topics.

`EventLog.apply` is pure (record in, state changed); `Tail` is the I/O: a plain aiokafka consumer
without a consumer group that starts a little before the end of each partition and follows it.
Message events are only counted by their Kafka key (`inbox_id`) and type header: no body is parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer

from mailsync.kafka import client_kwargs
from mailsync.settings import ServiceSettings

log = logging.getLogger("mailsync.fetcher.console")

INBOX_TOPIC = "mailsync.inbox.v1"
MESSAGES_TOPIC = "mailsync.messages.v1"
LINKS_TOPIC = "mailsync.links.v1"
SEND_TOPIC = "mailsync.send.events.v1"
TOPICS = (INBOX_TOPIC, MESSAGES_TOPIC, LINKS_TOPIC, SEND_TOPIC)
MAX_INBOXES = 20_000  # bound on remembered inboxes (oldest forgotten first)


@dataclass
class InboxEvents:
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=30))
    progress: dict[str, tuple[int, int]] = field(default_factory=dict)
    run_id: str | None = None
    completed: bool = False
    failure: dict[str, Any] | None = None
    throttled_until: datetime | None = None
    throttled_limit: str | None = None
    deactivation: dict[str, Any] | None = None
    links_found: int = 0
    links: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10))
    sent_copies: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10))


@dataclass
class MessageStats:
    last_at: datetime | None = None
    seen: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


def _when(value: Any) -> datetime | None:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def summary(kind: str, data: dict[str, Any]) -> str:
    """One line an operator reads; never a secret (events carry none) and never message content."""
    short = kind.rsplit(".", 1)[-1]
    err = data.get("error") if isinstance(data.get("error"), dict) else None
    if short == "sync_progress":
        return f"{data.get('folder')}: {data.get('done')}/{data.get('total')}"
    if short == "initial_sync_completed":
        return f"{data.get('messages')} messages in {float(data.get('duration_seconds') or 0):.1f} s"
    if short == "syncing":
        return ("initial sync of " if data.get("initial") else "syncing ") + ", ".join(
            data.get("folders") or []
        )
    if short in ("auth_failed", "connect_failed", "sent_copy_failed", "failed") and err:
        return f"{err.get('code')}: {err.get('message')}"
    if short == "throttled":
        return f"{data.get('limit')} until {data.get('resume_at')}"
    if short == "paused":
        return f"paused ({data.get('reason')})"
    if short in ("deactivation_warning", "deactivation_warning_cancelled"):
        return f"{data.get('reason')}: deactivates at {data.get('deactivate_at')}"
    if short == "linked":
        links = data.get("links") or []
        return f"linked to {len(links)} record(s)"
    if short == "sent_copy_stored":
        return f"Sent copy {data.get('how')} in {data.get('folder')}"
    if short == "connected":
        return f"connected ({data.get('provider') or 'custom'})"
    return short.replace("_", " ")


class EventLog:
    def __init__(self) -> None:
        self.inboxes: dict[str, InboxEvents] = {}
        self.messages: dict[str, MessageStats] = {}
        self.started_at = datetime.now(UTC)
        self.connected = False
        self.problem: str | None = None

    def inbox(self, tenant: str, inbox_id: str) -> InboxEvents | None:
        return self.inboxes.get(f"{tenant}:{inbox_id}")

    def _slot(self, key: str) -> InboxEvents:
        slot = self.inboxes.get(key)
        if slot is None:
            if len(self.inboxes) >= MAX_INBOXES:
                self.inboxes.pop(next(iter(self.inboxes)))
            slot = self.inboxes[key] = InboxEvents()
        return slot

    def apply(  # noqa: PLR0912 - one branch per event kind
        self, topic: str, key: bytes | None, kind: str | None, value: bytes | None, ts_ms: int
    ) -> None:
        at = datetime.fromtimestamp(ts_ms / 1000, UTC)
        if topic == MESSAGES_TOPIC:
            inbox_id = (key or b"").decode("utf-8", "replace")
            stats = self.messages.get(inbox_id)
            if stats is None:
                if len(self.messages) >= MAX_INBOXES:
                    self.messages.pop(next(iter(self.messages)))
                stats = self.messages[inbox_id] = MessageStats()
            stats.last_at, stats.seen = at, stats.seen + 1
            name = kind or "message"
            stats.by_type[name] = stats.by_type.get(name, 0) + 1
            return
        try:
            event = json.loads(value or b"null")
            tenant, inbox_id, kind = event["tenant_id"], event["inbox_id"], event["type"]
            data = event.get("data") or {}
        except (ValueError, KeyError, TypeError):
            return
        if not inbox_id or not isinstance(data, dict):
            return
        slot = self._slot(f"{tenant}:{inbox_id}")
        short = str(kind).rsplit(".", 1)[-1]
        line = {"time": at, "type": kind, "summary": summary(str(kind), data)}
        if short != "sync_progress" or not slot.events or slot.events[0]["type"] != kind:
            slot.events.appendleft(line)
        else:
            slot.events[0] = line  # one line per progress run, kept current
        if short == "sync_progress":
            if data.get("sync_run_id") != slot.run_id:
                slot.run_id, slot.completed = data.get("sync_run_id"), False
            slot.progress[str(data.get("folder"))] = (int(data.get("done", 0)), int(data.get("total", 0)))
        elif short == "initial_sync_completed":
            slot.completed = True
            slot.failure = None
        elif short in ("auth_failed", "connect_failed"):
            slot.failure = {
                "type": short,
                "time": at,
                "error": data.get("error"),
                "retry_at": _when(data.get("retry_at")),
            }
        elif short in ("connected", "syncing", "reactivated"):
            slot.failure = None
            slot.throttled_until = None
        elif short == "throttled":
            slot.throttled_until, slot.throttled_limit = _when(data.get("resume_at")), data.get("limit")
        elif short == "deactivation_warning":
            slot.deactivation = {
                "reason": data.get("reason"),
                "deactivate_at": _when(data.get("deactivate_at")),
            }
        elif short in ("deactivation_warning_cancelled", "deactivated", "removed"):
            slot.deactivation = None
        elif short == "linked":
            slot.links_found += 1
            records = [
                f"{r.get('record_type', 'record')} {r.get('record_id')}" for r in data.get("links") or []
            ]
            slot.links.appendleft({"time": at, "message_key": data.get("message_key"), "records": records})
        elif short in ("sent_copy_stored", "sent_copy_failed"):
            slot.sent_copies.appendleft(
                {"time": at, "ok": short == "sent_copy_stored", "summary": line["summary"]}
            )


class Tail:
    """Follows the topics into an `EventLog`; a Kafka problem is shown in the console, never fatal."""

    def __init__(self, settings: ServiceSettings, history_per_partition: int = 300) -> None:
        self.settings = settings
        self.history = history_per_partition
        self.log = EventLog()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Idempotent: the console starts following on its first request, so a fetcher nobody looks
        at spends nothing on it."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="console-tail")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retry after a pause; the page says events are unavailable
                self.log.connected, self.log.problem = False, type(exc).__name__
                log.warning("console event tail failed; retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(5)

    async def _follow(self) -> None:
        # No group: every partition is assigned to this consumer, nothing is committed.
        consumer = AIOKafkaConsumer(
            *TOPICS,
            bootstrap_servers=self.settings.kafka_bootstrap_servers.split(","),
            enable_auto_commit=False,
            client_id=f"mailsync-{self.settings.service_name}-console",
            **client_kwargs(self.settings),
        )
        await consumer.start()
        try:
            parts = sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
            if parts:
                ends = await consumer.end_offsets(parts)
                starts = await consumer.beginning_offsets(parts)
                for tp in parts:
                    consumer.seek(tp, max(starts[tp], ends[tp] - self.history))
            self.log.connected, self.log.problem = True, None
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
                for tp, records in batch.items():
                    for r in records:
                        kind = next(
                            (bytes(v).decode("utf-8", "replace") for k, v in r.headers if k == "ce_type"),
                            None,
                        )
                        self.log.apply(tp.topic, r.key, kind, r.value, r.timestamp)
        finally:
            await consumer.stop()
