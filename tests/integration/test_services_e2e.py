"""Each service as a real process: contract events through the real Kafka, state in FerretDB."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from contracts.common import Address
from contracts.crm import (
    CrmRecordDeleted,
    CrmRecordDeletedData,
    CrmRecordUpserted,
    CrmRecordUpsertedData,
    EmailOpened,
    EmailOpenedData,
    UserActive,
    UserActiveData,
)
from contracts.inbox import InboxCommandData, InboxCommandRequested
from contracts.sending import SendRequested, SendRequestedData
from tests.integration.conftest import eventually

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]


def _record(
    rid: str, rev: int, primary: str | None, *secondary: str, tenant: str = "t1"
) -> CrmRecordUpserted:
    data = CrmRecordUpsertedData(
        record_id=rid,
        record_type="contact",
        revision=rev,
        owner_user_id="u1",
        name="Ann",
        primary_email=primary,
        secondary_emails=list(secondary),
    )
    return CrmRecordUpserted.build(data=data, tenant_id=tenant, source="/crm", subject=rid)


async def test_linker_writes_crm_records_from_kafka_to_ferretdb(service, producer, mongo: Mongo) -> None:  # type: ignore[no-untyped-def]
    linker = service("linker")
    db = mongo[linker.database]
    rid = f"c-{uuid.uuid4().hex[:6]}"
    # Own tenant: crm.records.v1 is compacted and replayed from the start by every new consumer group,
    # so other runs' records for ann@example.com in a shared tenant could still be in the index.
    t = f"t-{uuid.uuid4().hex[:8]}"

    await producer(_record(rid, 1, " Ann <ANN@Example.com>", "ann@bücher.example", tenant=t))
    doc = await eventually(lambda: db.crm_records.find_one({"_id": f"{t}:{rid}"}))
    assert doc["emails"] == ["ann@example.com", "ann@xn--bcher-kva.example"]
    index = await db.crm_addresses.find_one({"_id": f"{t}:ann@example.com"})
    assert index is not None and index["record_ids"] == [rid]

    # Revision 2 drops the secondary address; a redelivered revision 1 afterwards changes nothing.
    await producer(_record(rid, 2, "ann@example.com", tenant=t))
    await producer(_record(rid, 1, "old@example.com", tenant=t))
    await eventually(
        lambda: db.crm_addresses.find_one({"_id": f"{t}:ann@xn--bcher-kva.example", "record_ids": []})
    )
    # The address index and the record are two writes: wait for the record's as well.
    doc = await eventually(lambda: db.crm_records.find_one({"_id": f"{t}:{rid}", "revision": 2}))
    assert doc["emails"] == ["ann@example.com"]

    deleted = CrmRecordDeleted.build(
        data=CrmRecordDeletedData(record_id=rid, record_type="contact", revision=3),
        tenant_id=t,
        source="/crm",
        subject=rid,
    )
    await producer(deleted)
    await eventually(lambda: db.crm_addresses.find_one({"_id": f"{t}:ann@example.com", "record_ids": []}))
    assert linker.http("/healthz")[0] == 200
    assert linker.stop() == 0, linker.log()[-2000:]


async def test_duplicate_events_are_processed_once(service, producer, mongo: Mongo) -> None:  # type: ignore[no-untyped-def]
    linker = service("linker")
    db = mongo[linker.database]
    rid = f"d-{uuid.uuid4().hex[:6]}"
    event = _record(rid, 1, "dup@example.com")
    for _ in range(3):
        await producer(event)
    await eventually(lambda: db.crm_records.find_one({"_id": f"t1:{rid}"}))
    marker = await eventually(lambda: db.processed_events.find_one({"_id": f"linker:{event.id}"}))
    assert marker["type"] == "crm.record.upserted"
    assert await db.processed_events.count_documents({"_id": f"linker:{event.id}"}) == 1


async def test_invalid_input_becomes_a_rejected_event_not_a_crash(  # type: ignore[no-untyped-def]
    service, kafka_bootstrap, watch, mongo: Mongo
) -> None:
    from aiokafka import AIOKafkaProducer

    linker = service("linker")
    rejected = await watch("mailsync.rejected.v1")
    prod = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await prod.start()
    marker = uuid.uuid4().hex
    try:
        await prod.send_and_wait(
            "crm.records.v1", b'{"type":"crm.record.upserted","password":"hunter2"}', key=marker.encode()
        )
        await prod.send_and_wait("crm.records.v1", b"\xff not json", key=marker.encode())
    finally:
        await prod.stop()
    first = await rejected.wait_for(
        lambda e: e["data"]["key"] == marker and e["data"]["consumer"] == "linker"
    )
    assert first["type"] == "mailsync.input.rejected"
    assert "hunter2" not in str(first)
    await rejected.wait_for(
        lambda e: (
            e["data"]["key"] == marker and "\\ufffd" not in e["data"]["reason"] and e["id"] != first["id"]
        )
    )
    # The service is still alive and consuming.
    assert linker.proc.poll() is None and linker.http("/readyz")[0] == 200


async def test_janitor_keeps_activity_clocks_with_max(service, producer, mongo: Mongo) -> None:  # type: ignore[no-untyped-def]
    janitor = service("janitor")
    db = mongo[janitor.database]
    user = f"u-{uuid.uuid4().hex[:6]}"
    now = datetime(2026, 11, 1, tzinfo=UTC)
    later = now + timedelta(days=3)

    def opened(at: datetime) -> EmailOpened:
        data = EmailOpenedData(user_id=user, target="inbox:i9", opened_at=at)
        return EmailOpened.build(data=data, tenant_id="t1", source="/crm", subject=user)

    await producer(opened(later))
    await producer(opened(now))  # late event: must not move the clock back
    await producer(
        UserActive.build(
            data=UserActiveData(user_id=user, active_at=now), tenant_id="t1", source="/crm", subject=user
        )
    )
    inbox = await eventually(lambda: db.inbox_activity.find_one({"_id": "t1:i9"}))
    assert inbox["last_opened_at"] == later
    await eventually(lambda: db.processed_events.count_documents({}), timeout=30)

    async def user_clock() -> Any:
        doc = await db.user_activity.find_one({"_id": f"t1:{user}"})
        return doc if doc and await db.processed_events.count_documents({}) >= 3 else None

    doc = await eventually(user_clock)
    assert doc["last_active_at"] == later


async def test_fetcher_applies_inbox_commands_and_refuses_unknown_inboxes(  # type: ignore[no-untyped-def]
    service, producer, watch, mongo: Mongo
) -> None:
    fetcher = service("fetcher")
    db = mongo[fetcher.database]
    inbox_id = f"i-{uuid.uuid4().hex[:6]}"
    await db.inboxes.insert_one(
        {"_id": f"t1:{inbox_id}", "status": "idle", "owner_user_id": "u1", "email": "a@x.test"}
    )
    inbox_events = await watch("mailsync.inbox.v1")
    rejected = await watch("mailsync.rejected.v1")

    def cmd(action: str, target: str, request_id: str) -> InboxCommandRequested:
        data = InboxCommandData(request_id=request_id, action=action, by_user_id="admin")  # type: ignore[arg-type]
        return InboxCommandRequested.build(data=data, tenant_id="t1", inbox_id=target, source="/console")

    request_id = f"r-{uuid.uuid4().hex}"
    await producer(cmd("pause", inbox_id, request_id))
    paused = await inbox_events.wait_for(lambda e: e["inbox_id"] == inbox_id)
    assert paused["type"] == "mailsync.inbox.paused" and paused["data"]["request_id"] == request_id
    await eventually(lambda: db.inboxes.find_one({"_id": f"t1:{inbox_id}", "status": "paused"}))

    # Fresh ids: a command id seen before is a duplicate and, rightly, not refused a second time.
    unknown = f"no-such-inbox-{uuid.uuid4().hex[:6]}"
    await producer(cmd("resume", unknown, f"r-{uuid.uuid4().hex}"))
    refusal = await rejected.wait_for(lambda e: e["data"]["key"] == unknown)
    assert "unknown inbox" in refusal["data"]["reason"]


async def test_sender_records_intent_once_and_refuses_foreign_from(  # type: ignore[no-untyped-def]
    service, producer, watch, mongo: Mongo
) -> None:
    sender = service("sender")
    db = mongo[sender.database]
    inbox_id = f"i-{uuid.uuid4().hex[:6]}"
    await db.inboxes.insert_one(
        {"_id": f"t1:{inbox_id}", "status": "idle", "email": "ann@x.test", "additional_from": []}
    )
    send_events = await watch("mailsync.send.events.v1")

    def send(key: str, sender_addr: str) -> SendRequested:
        data = SendRequestedData(
            idempotency_key=key,
            from_=Address(email=sender_addr),
            to=[Address(email="bob@y.test")],
            subject="hi",
        )
        return SendRequested.build(data=data, tenant_id="t1", inbox_id=inbox_id, source="/crm")

    ok = send("k-ok", "ann@x.test")
    await producer(ok)
    await producer(ok)
    # A fresh consumer group reads the shared commands topic from the start: allow for the backlog.
    doc = await eventually(lambda: db.send_requests.find_one({"_id": f"t1:{inbox_id}:k-ok"}), 120)
    assert doc["status"] == "queued" and doc["command"]["from"]["email"] == "ann@x.test"
    assert await db.send_requests.count_documents({"idempotency_key": "k-ok"}) == 1

    await producer(send("k-bad", "ceo@x.test"))
    # (k-ok gets its own `send failed`: this inbox record is too bare to send through.)
    failed = await send_events.wait_for(
        lambda e: e["inbox_id"] == inbox_id and e["data"]["idempotency_key"] == "k-bad", 120
    )
    assert failed["type"] == "mailsync.send.failed"
    assert failed["data"]["error"]["code"] == "send.from_not_allowed"
    assert failed["data"]["permanent"] is True
