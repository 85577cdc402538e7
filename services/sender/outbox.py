"""Send commands in → the `send_requests` outbox, once per idempotency key.

A key seen before keeps its first record and outcome: a redelivered or repeated command never sends
twice. Refused commands get `send failed` at once. SMTP delivery of queued requests is the sender
issue's work; this module is the durable intake it builds on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from contracts import Envelope
from contracts.sending import SendFailed, SendFailedData, SendRequested
from mailsync.kafka import EventPublisher
from mailsync.store import Document

from .admission import admit

SEND_REQUESTS = "send_requests"
INBOXES = "inboxes"  # owned by the fetcher; read-only here


def request_key(tenant_id: str, inbox_id: str, idempotency_key: str) -> str:
    return f"{tenant_id}:{inbox_id}:{idempotency_key}"


class Outbox:
    def __init__(self, db: AsyncDatabase[Document], publisher: EventPublisher, source: str) -> None:
        self._db = db
        self._publisher = publisher
        self._source = source

    async def apply(self, event: Envelope[Any]) -> None:
        if isinstance(event, SendRequested):
            await self.accept(event)

    async def accept(self, event: SendRequested) -> None:
        tenant, inbox_id, cmd = event.tenant_id, event.inbox_id or "", event.data
        key = request_key(tenant, inbox_id, cmd.idempotency_key)
        existing = await self._db[SEND_REQUESTS].find_one({"_id": key}, {"status": 1, "error": 1})
        if existing is not None and existing["status"] != "refused":
            return  # already accepted: same outcome, no second send
        inbox = await self._db[INBOXES].find_one({"_id": f"{tenant}:{inbox_id}"})
        refusal = admit(cmd, inbox, inbox_id)
        if refusal is not None:
            failed = SendFailed.build(
                data=SendFailedData(
                    idempotency_key=cmd.idempotency_key, permanent=True, attempts=0, error=refusal.error
                ),
                tenant_id=tenant,
                inbox_id=inbox_id,
                source=self._source,
                subject=cmd.idempotency_key,
            )
            await self._publisher.publish(failed)
            await self._db[SEND_REQUESTS].update_one(
                {"_id": key},
                {"$set": {"status": "refused", "error": refusal.error.model_dump()}},
                upsert=True,
            )
            return
        doc = {
            "_id": key,
            "tenant_id": tenant,
            "inbox_id": inbox_id,
            "idempotency_key": cmd.idempotency_key,
            "event_id": event.id,
            "command": cmd.model_dump(mode="json", by_alias=True),
            "status": "queued",
            "not_before": cmd.send_at or event.time,
            "accepted_at": datetime.now(UTC),
            "attempts": 0,
        }
        try:
            await self._db[SEND_REQUESTS].insert_one(doc)
        except DuplicateKeyError:
            return  # a concurrent delivery of the same key won; one record, one send
