"""Regression tests for bugs `make chaos` (bench/chaos.py) found, against the real FerretDB.

1. Sender: a process killed between storing the send request and its queue entry left the request
   `queued` with no queue entry; the redelivered command saw the request, took it for a duplicate and
   never sent it. The redelivery must restore the queue entry (and only once), as `sending` so that
   an entry that finished meanwhile is not sent a second time (a first fix restored it as `queued`;
   the next chaos runs showed 1 duplicate SMTP submission per 200 sends: a repeated command read "no
   outcome yet", the original finished, and the restored entry was sent again).
"""

from __future__ import annotations

import uuid
from typing import Any

from pymongo import AsyncMongoClient

from contracts.common import Address
from contracts.sending import SendRequested, SendRequestedData
from services.sender.delivery import SEND_QUEUE
from services.sender.outbox import SEND_REQUESTS, Outbox, request_key


class _NoPublish:
    """The path under test publishes nothing (no outcome yet); any publish is a failure."""

    async def publish(self, event: Any) -> None:
        raise AssertionError(f"unexpected publish of {event.type}")

    async def publish_all(self, events: Any) -> None:
        if events:
            raise AssertionError("unexpected publish")


async def test_redelivered_command_restores_a_lost_queue_entry(
    mongo: AsyncMongoClient[dict[str, Any]],
) -> None:
    name = f"chaos_finding_{uuid.uuid4().hex[:8]}"
    db = mongo[name]
    try:
        inbox = {"_id": "t1:in1", "tenant_id": "t1", "inbox_id": "in1", "email": "ann@mailsync.test"}
        await db["inboxes"].insert_one(inbox)
        event = SendRequested.build(
            data=SendRequestedData(
                idempotency_key="k1",
                from_=Address(email="ann@mailsync.test"),
                to=[Address(email="bob@mailsync.test")],
                subject="hello",
                text="hi",
            ),
            tenant_id="t1",
            inbox_id="in1",
            source="/test",
        )
        outbox = Outbox(db, _NoPublish(), "/test")  # type: ignore[arg-type]
        key = request_key("t1", "in1", "k1")
        # The crash: the request stored, the queue entry not.
        await db[SEND_REQUESTS].insert_one(outbox._request_doc(event, key))
        assert await db[SEND_QUEUE].count_documents({"_id": key}) == 0

        await outbox.accept(event)  # the redelivered command
        restored = await db[SEND_QUEUE].find_one({"_id": key})
        assert restored is not None
        # Intent unknown: the delivery checks outcome, journal and Sent folder before any SMTP. (As
        # `queued` it would be sent at once, which duplicated a send whose entry had just finished.)
        assert restored["status"] == "sending"
        await outbox.apply_batch([event])  # the batch path, again: still exactly one entry
        assert await db[SEND_QUEUE].count_documents({"_id": key}) == 1
        assert await db[SEND_REQUESTS].count_documents({"_id": key}) == 1
    finally:
        await mongo.drop_database(name)
