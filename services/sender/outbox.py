"""Send commands in → the `send_requests` outbox, once per idempotency key, and a `send_queue` entry.

A key seen before keeps its first record and outcome: a redelivered or repeated command never sends
twice (a finished one has its outcome announced again, with the same event ids). Refused commands get
`send failed` at once. A malformed command that still names its idempotency key gets `send failed` too
(besides the `mailsync.input.rejected` of the consumer path).

The service takes commands a poll at a time (`apply_batch`: one insert for the requests, one for the
queue entries, one publish for the refusals); `accept` is the same decision for one command.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from contracts import Envelope
from contracts.common import ErrorInfo
from contracts.sending import SendFailed, SendFailedData, SendRequested, SendRequestedData
from mailsync.kafka import EventPublisher
from mailsync.outbound_ids import message_id_for, send_id_for
from mailsync.store import Document, insert_new

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


def _without_command(queued: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in queued.items() if k != "command"}


class Handoff(Protocol):
    """The delivery loop of this process, taking due entries straight from the intake."""

    def preclaim(self, queued: dict[str, Any]) -> bool:
        """Stamp a new queue entry as claimed by this process (before its insert); False: not due."""
        ...

    async def take(self, claimed: list[dict[str, Any]]) -> None:
        """The stamped entries whose insert succeeded; may wait for room (backpressure)."""
        ...


class Outbox:
    def __init__(
        self,
        db: AsyncDatabase[Document],
        publisher: EventPublisher,
        source: str,
        wake: Callable[[], None] = lambda: None,
        inbox_lookup: Callable[[str, str], Awaitable[dict[str, Any] | None]] | None = None,
        *,
        handoff: Handoff | None = None,
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._source = source
        self._wake = wake
        self._inbox_lookup = inbox_lookup
        self._handoff = handoff

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
        doc = self._request_doc(event, key)
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

    async def apply_batch(self, events: list[Envelope[Any]]) -> None:
        """Many commands with a few writes: the same outcomes as `accept` for each, in order.

        Idempotent as a whole (a redelivered batch finds its keys and announces again), so the
        consumer needs no per-event markers. Each key's first record wins, as in `accept`.
        """
        commands = [e for e in events if isinstance(e, SendRequested)]
        if not commands:
            return
        inboxes: dict[tuple[str, str], dict[str, Any] | None] = {}
        for event in commands:
            ident = (event.tenant_id, event.inbox_id or "")
            if ident not in inboxes:
                if self._inbox_lookup is not None:
                    inboxes[ident] = await self._inbox_lookup(*ident)
                else:
                    inboxes[ident] = await self._db[INBOXES].find_one({"_id": f"{ident[0]}:{ident[1]}"})
        admitted: list[dict[str, Any]] = []
        refused: list[tuple[dict[str, Any], SendFailed]] = []
        for event in commands:
            tenant, inbox_id, cmd = event.tenant_id, event.inbox_id or "", event.data
            key = request_key(tenant, inbox_id, cmd.idempotency_key)
            refusal = admit(cmd, inboxes[(tenant, inbox_id)], inbox_id)
            if refusal is None:
                admitted.append(self._request_doc(event, key))
                continue
            doc = {"_id": key, "status": "refused", "error": refusal.error.model_dump()}
            refused.append((doc, self._failed(tenant, inbox_id, cmd.idempotency_key, refusal.error)))
        if refused:
            await self._refuse_many(refused)
        if admitted:
            await self._admit_many(admitted)

    def _request_doc(self, event: SendRequested, key: str) -> dict[str, Any]:
        tenant, inbox_id, cmd = event.tenant_id, event.inbox_id or "", event.data
        send_id = send_id_for(tenant, inbox_id, cmd.idempotency_key)
        return {
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
            "send_id": send_id,
            "message_id": message_id_for(send_id, _domain(cmd.from_.email)),
        }

    def _failed(self, tenant: str, inbox_id: str, idem: str, error: ErrorInfo) -> SendFailed:
        return SendFailed.build(
            data=SendFailedData(idempotency_key=idem, permanent=True, attempts=0, error=error),
            tenant_id=tenant,
            inbox_id=inbox_id,
            source=self._source,
            subject=idem,
        )

    async def _refuse_many(self, refused: list[tuple[dict[str, Any], SendFailed]]) -> None:
        duplicates = await insert_new(self._db[SEND_REQUESTS], [doc for doc, _ in refused])
        fresh: list[Envelope[Any]] = []
        for i, (doc, failed) in enumerate(refused):
            if i not in duplicates:
                fresh.append(failed)
                continue
            existing = await self._db[SEND_REQUESTS].find_one({"_id": doc["_id"]}, {"status": 1})
            if existing is not None and existing["status"] != "refused":
                await self._announce_again(doc["_id"])  # accepted before: same outcome, no second send
                continue
            fresh.append(failed)
            await self._db[SEND_REQUESTS].update_one(
                {"_id": doc["_id"], "status": "refused"}, {"$set": {"error": doc["error"]}}
            )
        await self._publisher.publish_all(fresh)

    async def _admit_many(self, docs: list[dict[str, Any]]) -> None:
        duplicates = await insert_new(self._db[SEND_REQUESTS], docs)
        fresh = [doc for i, doc in enumerate(docs) if i not in duplicates]
        taken: list[dict[str, Any]] = []
        if fresh:
            # Queued before the duplicates are looked at: a key repeated within the batch then finds
            # its queue entry in place. Due entries are claimed by the insert itself and handed to this
            # process's delivery loop in memory; an entry whose insert lost (already queued) is not ours.
            queued = [self._queue_doc(doc) for doc in fresh]
            handoff = self._handoff
            claimed = [handoff is not None and handoff.preclaim(q) for q in queued]
            # A handed-over entry carries its command in memory only: the stored one stays small (the
            # queue is scanned for due work), and a later claim reads the request instead.
            stored = [_without_command(q) if claimed[i] else q for i, q in enumerate(queued)]
            lost = await insert_new(self._db[SEND_QUEUE], stored)
            taken = [
                {**q, "command": doc["command"]}
                for i, (q, doc) in enumerate(zip(queued, fresh, strict=True))
                if claimed[i] and i not in lost
            ]
            if len(taken) < len(queued):
                self._wake()
        for i in sorted(duplicates):
            doc = docs[i]
            existing = await self._db[SEND_REQUESTS].find_one({"_id": doc["_id"]}, {"status": 1})
            if existing is None or existing["status"] != "refused":
                await self._announce_again(doc["_id"])  # one record, one send
                continue
            # Refused before (e.g. the alias was added since): admitted now.
            await self._db[SEND_REQUESTS].replace_one({"_id": doc["_id"], "status": "refused"}, doc)
            await self._enqueue(doc)
        if taken and self._handoff is not None:
            await self._handoff.take(taken)

    def _queue_doc(self, doc: dict[str, Any]) -> dict[str, Any]:
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
        return queued

    async def _enqueue(self, doc: dict[str, Any]) -> None:
        queued = self._queue_doc(doc)
        try:
            await self._db[SEND_QUEUE].insert_one(queued)
        except DuplicateKeyError:
            return
        self._wake()

    async def _announce_again(self, key: str) -> None:
        """A finished request's outcome, published again (same ids: consumers dedupe)."""
        outcome = await self._db[SEND_OUTCOMES].find_one({"_id": key})
        req = await self._db[SEND_REQUESTS].find_one({"_id": key})
        if outcome is None and req is not None and req.get("status") == "queued":
            # Still in progress, or the process died between the request insert and the queue insert
            # (found by `make chaos`: the redelivered command then never got sent). Restore the queue
            # entry as `sending` (intent unknown), not `queued`: the entry may have finished since the
            # outcome was read, and a `sending` entry is checked against the outcome, the journal and
            # the Sent folder before any SMTP (`queued` would be sent straight away: a duplicate).
            queued = self._queue_doc(req)
            queued["status"] = "sending"
            try:
                await self._db[SEND_QUEUE].insert_one(queued)
            except DuplicateKeyError:
                return  # in progress: its events come when it finishes
            self._wake()
            return
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
