"""Send commands in → the `send_requests` outbox, once per idempotency key, and a `send_queue` entry.

A key seen before keeps its first record and outcome: a redelivered or repeated command never sends
twice (a finished one has its outcome announced again, with the same event ids). Refused commands get
`send failed` at once. A malformed command that still names its idempotency key gets `send failed` too
(besides the `mailsync.input.rejected` of the consumer path).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from contracts import Envelope
from contracts.common import ErrorInfo
from contracts.sending import SendFailed, SendFailedData, SendRequested, SendRequestedData
from mailsync.kafka import EventPublisher
from mailsync.outbound_ids import message_id_for, send_id_for
from mailsync.store import Document

from .admission import admit
from .delivery import SEND_OUTCOMES, SEND_QUEUE, failed_events, sent_event

SEND_REQUESTS = "send_requests"
INBOXES = "inboxes"  # owned by the fetcher; read-only here
COMMANDS_TOPIC = "mailsync.send.commands.v1"
EMBED_COMMAND_BYTES = 16 * 1024  # commands up to this size ride along in the queue entry


def request_key(tenant_id: str, inbox_id: str, idempotency_key: str) -> str:
    return f"{tenant_id}:{inbox_id}:{idempotency_key}"


def _domain(address: str) -> str:
    return address.rpartition("@")[2].strip().lower()


class Outbox:
    def __init__(
        self,
        db: AsyncDatabase[Document],
        publisher: EventPublisher,
        source: str,
        wake: Callable[[], None] = lambda: None,
        inbox_lookup: Callable[[str, str], Awaitable[dict[str, Any] | None]] | None = None,
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._source = source
        self._wake = wake
        self._inbox_lookup = inbox_lookup

    async def apply(self, event: Envelope[Any]) -> None:
        if isinstance(event, SendRequested):
            await self.accept(event)

    async def _refuse(self, tenant: str, inbox_id: str, key: str, idem: str, error: ErrorInfo) -> None:
        failed = SendFailed.build(
            data=SendFailedData(idempotency_key=idem, permanent=True, attempts=0, error=error),
            tenant_id=tenant,
            inbox_id=inbox_id,
            source=self._source,
            subject=idem,
        )
        await self._publisher.publish(failed)
        doc = {"_id": key, "status": "refused", "error": error.model_dump()}
        try:
            # An insert, not an upsert: on FerretDB v1 an update scans the whole collection.
            await self._db[SEND_REQUESTS].insert_one(doc)
        except DuplicateKeyError:
            await self._db[SEND_REQUESTS].update_one(
                {"_id": key, "status": "refused"}, {"$set": {"error": error.model_dump()}}
            )

    async def accept(self, event: SendRequested) -> None:
        tenant, inbox_id, cmd = event.tenant_id, event.inbox_id or "", event.data
        key = request_key(tenant, inbox_id, cmd.idempotency_key)
        if self._inbox_lookup is not None:
            inbox = await self._inbox_lookup(tenant, inbox_id)
        else:
            inbox = await self._db[INBOXES].find_one({"_id": f"{tenant}:{inbox_id}"})
        refusal = admit(cmd, inbox, inbox_id)
        if refusal is not None:
            existing = await self._db[SEND_REQUESTS].find_one({"_id": key}, {"status": 1})
            if existing is not None and existing["status"] != "refused":
                await self._announce_again(key)
                return  # accepted before: same outcome, no second send
            await self._refuse(tenant, inbox_id, key, cmd.idempotency_key, refusal.error)
            return
        send_id = send_id_for(tenant, inbox_id, cmd.idempotency_key)
        message_id = message_id_for(send_id, _domain(cmd.from_.email))
        due = cmd.send_at or event.time
        doc = {
            "_id": key,
            "tenant_id": tenant,
            "inbox_id": inbox_id,
            "idempotency_key": cmd.idempotency_key,
            "event_id": event.id,
            "command": cmd.model_dump(mode="json", by_alias=True),
            "status": "queued",
            "not_before": due,
            "accepted_at": datetime.now(UTC),
            "attempts": 0,
            "send_id": send_id,
            "message_id": message_id,
        }
        try:
            await self._db[SEND_REQUESTS].insert_one(doc)
        except DuplicateKeyError:
            existing = await self._db[SEND_REQUESTS].find_one({"_id": key}, {"status": 1})
            if existing is None or existing["status"] != "refused":
                await self._announce_again(key)
                return  # a delivery of the same key won; one record, one send
            # Refused before (e.g. the alias was added since): admitted now.
            await self._db[SEND_REQUESTS].replace_one({"_id": key, "status": "refused"}, doc)
        await self._enqueue(doc)

    async def _enqueue(self, doc: dict[str, Any]) -> None:
        queued = {
            "_id": doc["_id"],
            "tenant_id": doc["tenant_id"],
            "inbox_id": doc["inbox_id"],
            "send_id": doc["send_id"],
            "message_id": doc["message_id"],
            "status": "queued",
            "attempts": 0,
            "next_at": doc["not_before"],
            "claim": None,
        }
        if len(json.dumps(doc["command"])) <= EMBED_COMMAND_BYTES:
            queued["command"] = doc["command"]
        try:
            await self._db[SEND_QUEUE].insert_one(queued)
        except DuplicateKeyError:
            return
        self._wake()

    async def _announce_again(self, key: str) -> None:
        """A finished request's outcome, published again (same ids: consumers dedupe)."""
        outcome = await self._db[SEND_OUTCOMES].find_one({"_id": key})
        req = await self._db[SEND_REQUESTS].find_one({"_id": key})
        if outcome is None or req is None:
            return  # still in progress: its events come when it finishes
        cmd = SendRequestedData.model_validate(req["command"])
        if outcome.get("status") == "sent":
            await self._publisher.publish(sent_event(req, outcome, cmd, self._source))
        elif outcome.get("status") == "failed":
            await self._publisher.publish_all(failed_events(req, outcome, cmd, self._source))

    async def on_rejected(self, raw: bytes, topic: str, reason: str) -> None:
        """A send command that failed validation but names its idempotency key gets `send failed`."""
        if topic != COMMANDS_TOPIC:
            return
        try:
            doc = json.loads(raw)
            tenant, inbox_id = str(doc["tenant_id"]), str(doc["inbox_id"])
            idem = doc["data"]["idempotency_key"]
        except (ValueError, KeyError, TypeError):
            return  # nothing to answer to: the rejection event is all there is
        if not isinstance(idem, str) or not idem or not tenant or not inbox_id or len(idem) > 200:
            return
        key = request_key(tenant, inbox_id, idem)
        existing = await self._db[SEND_REQUESTS].find_one({"_id": key}, {"status": 1})
        if existing is not None and existing["status"] != "refused":
            return  # an earlier valid command with this key stands
        error = ErrorInfo(
            code="send.invalid_command", message=f"the send command is invalid: {reason}"[:1000]
        )
        try:
            await self._refuse(tenant, inbox_id, key, idem, error)
        except (ValidationError, ValueError):
            return
