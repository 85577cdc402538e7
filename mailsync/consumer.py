"""Idempotent, loss-free consumption of contract events.

Every subscriber goes through `EventConsumer.process`:
- the record is validated against the topic's contract; invalid input becomes a
  `mailsync.input.rejected` event (never a crash loop, never a silent drop);
- an event id this consumer already processed is skipped (dedupe by deterministic id);
- a handler failure (e.g. the database is down) propagates, so the offset is not committed and the
  record is redelivered: at-least-once, made exactly-once in effect by idempotent handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from contracts import Envelope, parse_event
from contracts.errors import InputRejected, InputRejectedData

from .kafka import EventPublisher
from .logs import scrub
from .store import Document

Handler = Callable[[Envelope[Any]], Awaitable[None]]
# A batch handler gets the valid events of one poll, in record order; it must be idempotent as a whole
# (a failure redelivers the whole batch).
BatchHandler = Callable[[list[Envelope[Any]]], Awaitable[None]]
# Called after a record was rejected, with (raw record, topic, reason): lets a service answer in its own
# terms too (the sender emits `send failed` for a malformed send command that names its idempotency key).
RejectHook = Callable[[bytes, str, str], Awaitable[None]]

PROCESSED = "processed_events"


def rejection_reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        # Field locations and messages only: `input` values could hold user data or secrets.
        errs = exc.errors(include_input=False, include_url=False)
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errs)[:1000]
    return scrub(f"{type(exc).__name__}: {exc}")[:1000]


class EventConsumer:
    def __init__(
        self,
        name: str,
        db: AsyncDatabase[Document],
        publisher: EventPublisher,
        *,
        source: str,
        tenant_default: str,
        retry_delay: float = 1.0,
    ) -> None:
        self.name = name
        self._db = db
        self._publisher = publisher
        self._source = source
        self._tenant_default = tenant_default
        self._retry_delay = retry_delay
        self.log = logging.getLogger(f"mailsync.{name}.consumer")
        self.reject_hooks: list[RejectHook] = []

    async def process(
        self, raw: bytes, *, topic: str, partition: int, offset: int, key: bytes | None, handler: Handler
    ) -> str:
        """Handle one record; returns `handled`, `duplicate` or `rejected`."""
        try:
            event = parse_event(raw, topic)
        except (ValidationError, ValueError) as exc:
            await self._reject(raw, exc, topic=topic, partition=partition, offset=offset, key=key)
            return "rejected"
        marker = f"{self.name}:{event.id}"
        processed = self._db[PROCESSED]
        if await processed.find_one({"_id": marker}, {"_id": 1}) is not None:
            return "duplicate"
        try:
            await handler(event)
        except Exception:
            self.log.exception("handler failed; the record will be redelivered", extra={"event_id": event.id})
            # Back off before the redelivery so a down dependency is not hammered.
            await asyncio.sleep(self._retry_delay)
            raise
        # insert, not an upsert: FerretDB v1 executes an update by _id as a scan of the collection
        # (≈70 ms at 5,000 documents) while an insert stays O(1); a concurrent duplicate is harmless.
        with contextlib.suppress(DuplicateKeyError):
            await processed.insert_one({"_id": marker, "at": datetime.now(UTC), "type": event.type})
        return "handled"

    async def process_batch(
        self, records: Sequence[Any], *, handler: BatchHandler, dedupe: bool = True
    ) -> list[tuple[str, str | None]]:
        """Handle the records of one poll (aiokafka ConsumerRecords) with one handler call.

        Returns (outcome, event type) per record. Invalid records are rejected one by one as in
        `process`. With `dedupe`, event ids this consumer processed are skipped (one lookup by id
        each, run together) and the batch's ids are recorded in one write afterwards; a handler that
        is idempotent by its own keys passes `dedupe=False` and saves those round trips.
        """
        results: list[tuple[str, str | None]] = []
        events: list[tuple[int, Envelope[Any]]] = []
        for record in records:
            raw = record.value or b""
            try:
                event = parse_event(raw, record.topic)
            except (ValidationError, ValueError) as exc:
                await self._reject(
                    raw,
                    exc,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    key=record.key,
                )
                results.append(("rejected", None))
                continue
            events.append((len(results), event))
            results.append(("handled", event.type))
        processed = self._db[PROCESSED]
        if dedupe and events:
            seen = await asyncio.gather(
                *(processed.find_one({"_id": f"{self.name}:{e.id}"}, {"_id": 1}) for _, e in events)
            )
            for (i, e), doc in zip(events, seen, strict=True):
                if doc is not None:
                    results[i] = ("duplicate", e.type)
            events = [(i, e) for (i, e), doc in zip(events, seen, strict=True) if doc is None]
        if not events:
            return results
        try:
            await handler([e for _, e in events])
        except Exception:
            self.log.exception(
                "batch handler failed; the batch will be redelivered", extra={"records": len(records)}
            )
            await asyncio.sleep(self._retry_delay)
            raise
        if dedupe:
            now = datetime.now(UTC)
            markers = {f"{self.name}:{e.id}": e.type for _, e in events}  # a batch may repeat an id
            try:
                await processed.insert_many(
                    [{"_id": k, "at": now, "type": t} for k, t in markers.items()], ordered=False
                )
            except BulkWriteError as exc:  # duplicates (a concurrent redelivery) are fine
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    raise
        return results

    async def _reject(
        self, raw: bytes, exc: Exception, *, topic: str, partition: int, offset: int, key: bytes | None
    ) -> None:
        reason = rejection_reason(exc)
        key_text = key.decode("utf-8", "replace") if key else None
        self.log.warning("rejected a record", extra={"topic": topic, "offset": offset, "reason": reason})
        event = InputRejected.build(
            data=InputRejectedData(
                consumer=self.name,
                topic=topic,
                partition=partition,
                offset=offset,
                key=key_text,
                reason=reason,
                raw_excerpt=scrub(raw[:500].decode("utf-8", "replace")),
            ),
            tenant_id=self._tenant_default,
            source=self._source,
            subject=key_text or f"{topic}/{partition}/{offset}",
        )
        await self._publisher.publish(event)
        for hook in self.reject_hooks:
            await hook(raw, topic, reason)
