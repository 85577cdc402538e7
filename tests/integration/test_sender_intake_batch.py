"""Batched intake against the real FerretDB: `EventConsumer.process_batch` (what `Runtime.subscribe_batch`
runs per poll) and the sender's `Outbox.apply_batch`, which must give each command the outcome the
one-at-a-time path gives it: one request and one queue entry per idempotency key, refusals answered."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from contracts import Envelope
from contracts.common import Address
from contracts.sending import SendRequested, SendRequestedData
from mailsync.consumer import PROCESSED, EventConsumer
from services.sender.delivery import SEND_QUEUE
from services.sender.outbox import SEND_REQUESTS, Outbox, request_key

TOPIC = "mailsync.send.commands.v1"


class Recorder:
    """Collects what would go to Kafka."""

    def __init__(self) -> None:
        self.events: list[Envelope[Any]] = []

    async def publish(self, event: Envelope[Any]) -> None:
        self.events.append(event)

    async def publish_all(self, events: list[Envelope[Any]]) -> None:
        self.events.extend(events)


@pytest_asyncio.fixture
async def db(mongo: AsyncMongoClient[dict[str, Any]]) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    database = mongo[f"test_intake_{uuid.uuid4().hex[:8]}"]
    yield database
    await mongo.drop_database(database.name)


def command(key: str, inbox_id: str = "in1", sender: str = "ann@mailsync.test") -> SendRequested:
    return SendRequested.build(
        data=SendRequestedData(
            idempotency_key=key,
            from_=Address(email=sender),
            to=[Address(email="bob@mailsync.test")],
            subject=f"hello {key}",
            text="hi",
        ),
        tenant_id="t1",
        inbox_id=inbox_id,
        source="/test",
    )


async def test_a_batch_gives_each_command_its_outcome_once(db: AsyncDatabase[dict[str, Any]]) -> None:
    await db["inboxes"].insert_one(
        {
            "_id": "t1:in1",
            "tenant_id": "t1",
            "inbox_id": "in1",
            "email": "ann@mailsync.test",
            "status": "idle",
        }
    )
    pub = Recorder()
    outbox = Outbox(db, pub, "/test")  # type: ignore[arg-type]
    batch: list[Envelope[Any]] = [
        command("k1"),
        command("k1"),  # the same key again within the batch
        command("k2"),
        command("k3", inbox_id="nope"),  # unknown inbox
        command("k4", sender="mallory@elsewhere.test"),  # From not allowed
    ]
    await outbox.apply_batch(batch)

    queued = {d["_id"] for d in await db[SEND_QUEUE].find({}).to_list()}
    assert queued == {request_key("t1", "in1", "k1"), request_key("t1", "in1", "k2")}
    requests = {d["_id"]: d["status"] for d in await db[SEND_REQUESTS].find({}).to_list()}
    assert requests == {
        request_key("t1", "in1", "k1"): "queued",
        request_key("t1", "in1", "k2"): "queued",
        request_key("t1", "nope", "k3"): "refused",
        request_key("t1", "in1", "k4"): "refused",
    }
    codes = sorted(e.data.error.code for e in pub.events if e.type == "mailsync.send.failed")
    assert codes == ["inbox.unknown", "send.from_not_allowed"]

    # The whole batch redelivered: nothing new is stored or queued; refusals are answered again with
    # the same event ids (consumers drop them).
    first_ids = sorted(e.id for e in pub.events)
    pub.events.clear()
    await outbox.apply_batch(batch)
    assert await db[SEND_QUEUE].count_documents({}) == 2
    assert await db[SEND_REQUESTS].count_documents({}) == 4
    assert sorted(e.id for e in pub.events) == first_ids


def record(event: Envelope[Any] | None, offset: int) -> SimpleNamespace:
    value = event.model_dump_json(by_alias=True).encode() if event is not None else b'{"not": "an event"}'
    return SimpleNamespace(topic=TOPIC, partition=0, offset=offset, key=None, value=value, headers=[])


async def test_process_batch_rejects_dedupes_and_redelivers_on_failure(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    pub = Recorder()
    consumer = EventConsumer("h6test", db, pub, source="/test", tenant_default="t1", retry_delay=0.0)  # type: ignore[arg-type]
    a, b = command("a"), command("b")
    records = [record(None, 0), record(a, 1), record(b, 2)]
    seen: list[list[str]] = []

    async def handler(events: list[Envelope[Any]]) -> None:
        seen.append([e.id for e in events])

    results = await consumer.process_batch(records, handler=handler)
    assert [r[0] for r in results] == ["rejected", "handled", "handled"]
    assert seen == [[a.id, b.id]]
    assert [e.type for e in pub.events] == ["mailsync.input.rejected"]

    # Redelivered: both already processed, the handler is not called again.
    results = await consumer.process_batch(records[1:], handler=handler)
    assert [r[0] for r in results] == ["duplicate", "duplicate"]
    assert len(seen) == 1

    # A failing handler: the error propagates (the batch is redelivered) and nothing is marked.
    c = command("c")

    async def failing(events: list[Envelope[Any]]) -> None:
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        await consumer.process_batch([record(c, 3)], handler=failing)
    assert await db[PROCESSED].find_one({"_id": f"h6test:{c.id}"}) is None
    results = await consumer.process_batch([record(c, 3)], handler=handler)
    assert [r[0] for r in results] == ["handled"]
