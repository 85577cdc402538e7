"""The linker's batch consumption on the real Kafka and FerretDB: one poll holding several inboxes, a
duplicate and a poison record; a batch handler that fails is redelivered whole, nothing committed."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from contracts import Envelope
from mailsync.service import Runtime, build
from services.linker.settings import LinkerSettings
from tests.integration.conftest import eventually, skip_history
from tests.integration.test_linker_e2e import _tenant, add_inbox, collect, message, of, record, start_linker

__all__ = ["collect"]  # the fixture, used by name

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]


async def test_one_poll_with_inboxes_a_duplicate_and_a_poison_record(  # type: ignore[no-untyped-def]
    service, kafka_bootstrap, producer, collect, mongo: Mongo
) -> None:
    linker = await start_linker(service, kafka_bootstrap)
    db = mongo[linker.database]
    links = await collect("mailsync.links.v1")
    rejected = await collect("mailsync.rejected.v1")
    t = _tenant()
    for inbox in ("ia", "ib"):
        await add_inbox(db, t, inbox, f"u-{inbox}")
    await producer(record(t, "ann", 1, "ann@example.com"))
    await eventually(lambda: db.crm_records.find_one({"_id": f"{t}:ann"}))

    events = [
        message(t, "ia" if i % 2 else "ib", f"m{i}", frm="ann@example.com", minutes=i) for i in range(10)
    ]
    poison_key = f"ia-poison-{uuid.uuid4().hex[:6]}"
    prod = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await prod.start()
    try:
        # Sent without waiting in between, so they reach the linker in one or a few polls.
        futures = []
        for i, event in enumerate([*events[:5], events[3], *events[5:]]):
            body = event.model_dump_json().encode()
            futures.append(await prod.send("mailsync.messages.v1", body, key=(event.inbox_id or "").encode()))
            if i == 6:
                bad = b'{"type": "mailsync.message.received", "id": "x"}'
                futures.append(await prod.send("mailsync.messages.v1", bad, key=poison_key.encode()))
        await asyncio.gather(*futures)
    finally:
        await prod.stop()

    poison = await rejected.wait_for(
        lambda e: e["data"]["key"] == poison_key and e["data"]["consumer"] == "linker"
    )
    assert poison["data"]["topic"] == "mailsync.messages.v1"
    await links.wait_for(of(t, "mailsync.message.linked", "m9"))
    await links.wait_for(of(t, "mailsync.message.linked", "m0"))
    await asyncio.sleep(1.0)  # anything published twice would be here by now
    linked = [e for e in links.seen if of(t, "mailsync.message.linked")(e)]
    assert sorted(e["data"]["message_key"] for e in linked) == sorted(f"m{i}" for i in range(10))
    for inbox in ("ia", "ib"):  # each inbox's events in the order its messages came
        keys = [e["data"]["message_key"] for e in linked if e["inbox_id"] == inbox]
        assert keys == [e.data.ref.message_key for e in events if e.inbox_id == inbox and e.data.ref]
    assert await db.link_messages.count_documents({"tenant_id": t}) == 10
    assert await db.link_outbox.count_documents({}) == 0
    assert linker.stop() == 0, linker.log()[-3000:]


async def test_a_failing_batch_is_redelivered_whole_and_committed_once(  # type: ignore[no-untyped-def]
    kafka_bootstrap: str, mongo_uri: str, producer, mongo: Mongo
) -> None:
    """The handler fails on the first delivery (as when the database is down): nothing is committed, the
    same records come again, and once handled they are not delivered a third time."""
    run = uuid.uuid4().hex[:8]
    settings = LinkerSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        mongo_uri=mongo_uri,
        mongo_database=f"test_linker_batch_{run}",
        kafka_consumer_group_prefix=f"test-{run}",
    )
    await skip_history(kafka_bootstrap, settings.consumer_group())
    t = _tenant()
    calls: list[list[str]] = []

    async def handler(events: list[Envelope[Any]]) -> None:
        mine = [e.id for e in events if e.tenant_id == t]
        if not mine:
            return
        calls.append(mine)
        if len(calls) == 1:
            raise ConnectionError("database down")

    def setup(rt: Runtime) -> None:
        rt.subscribe_batch("mailsync.messages.v1", handler, max_records=100, dedupe=False)

    _, rt = build(settings, setup)
    rt.consumer._retry_delay = 0.2  # keep the test short
    await rt.broker.start()
    try:
        sent = [message(t, "ia", f"f{i}", frm="ann@example.com", minutes=i) for i in range(3)]
        for event in sent:
            await producer(event)
        ids = [e.id for e in sent]

        async def twice() -> bool:
            return len(calls) >= 2 and sorted({i for c in calls[1:] for i in c}) == sorted(ids)

        await eventually(twice, timeout=60)
        assert set(calls[0]) <= set(ids) and calls[0][0] == ids[0]  # the first delivery failed
        handled = len(calls)
        await asyncio.sleep(3.0)
        assert len(calls) == handled  # committed: not delivered again
    finally:
        await rt.broker.stop()
        await mongo.drop_database(settings.mongo_database)
        await rt.mongo.close()
    assert json.dumps(calls)  # what the handler saw, for a failure message


async def test_the_mongo_store_batch_queries_on_ferretdb(mongo: Mongo) -> None:
    """The few queries a batch makes, against the real server: what the in-memory store answers."""
    from services.linker.directory import Directory
    from services.linker.link_rules import RecordRef
    from services.linker.store import MongoLinkStore

    db = mongo[f"test_linker_store_{uuid.uuid4().hex[:8]}"]
    try:
        store, directory = MongoLinkStore(db), Directory(db)
        t = _tenant()
        assert await store.mark_seen(["a", "b", "a"]) == set()
        assert await store.mark_seen(["b", "c"]) == {"b"}
        await directory.apply(record(t, "ann", 1, "ann@example.com", "ann@home.example"))
        keys = {(t, "ann@example.com"), (t, "nobody@example.com"), ("other", "ann@example.com")}
        found = await store.records_for_keys(keys)
        assert found == {(t, "ann@example.com"): [RecordRef("ann", "contact")]}
        # A change bumps the tenant's directory version: a cached copy is not used any more.
        await directory.apply(record(t, "ann", 2, "ann@example.com", "ann@new.example"))
        assert (t, "ann@new.example") in await store.records_for_keys({(t, "ann@new.example")})
        assert await store.records_for_keys({(t, "ann@home.example")}) == {}

        assert await store.insert_messages([{"_id": "m1", "x": 1}, {"_id": "m2"}]) == set()
        assert await store.insert_messages([{"_id": "m2"}, {"_id": "m3"}]) == {"m2"}
        assert set(await store.get_messages({"m1", "m3", "nope"})) == {"m1", "m3"}
        many = {f"m{i}" for i in range(1, 12)}
        assert set(await store.get_messages(many)) == {"m1", "m2", "m3"}

        await store.note_threads(
            [
                {"_id": "d1", "tenant_id": t, "message_id": "a@x", "thread_id": "mid:a@x", "send_id": "s1"},
                {"_id": "d2", "tenant_id": t, "message_id": "b@x", "thread_id": "mid:a@x", "send_id": None},
            ]
        )
        facts = await store.thread_facts({(t, "a@x")}, {(t, "mid:b@x")})
        assert [(d["message_id"], d["send_id"]) for d in facts] == [("a@x", "s1")]
        assert len(await store.thread_facts(set(), {(t, "mid:a@x")})) == 2
        await store.retarget_thread(t, "mid:a@x", "mid:root@x")
        assert {d["thread_id"] for d in await store.thread_facts({(t, "a@x"), (t, "b@x")}, set())} == {
            "mid:root@x"
        }

        await store.track_threads([(t, "th1", {"_id": "d1", "message_id": "a@x", "send_id": "s1"})])
        await store.track_threads([(t, "th1", {"_id": "d9", "message_id": "z@x", "send_id": "s9"})])
        assert (await store.tracked_threads({(t, "th1"), (t, "th2")}))[(t, "th1")]["_id"] == "d1"

        assert await store.claim_contacts([(t, "new@x", "d1"), (t, "two@x", "d1")]) == {
            (t, "new@x"),
            (t, "two@x"),
        }
        assert await store.claim_contacts([(t, "new@x", "d1"), (t, "two@x", "d2")]) == {(t, "new@x")}

        await store.put_outbox("b1", ["d1", "d2"], [{"id": "e1", "event": "{}"}])
        assert [b["_id"] for b in await store.pending_outboxes({"d2", "d7"})] == ["b1"]
        await store.drop_outbox("b1")
        assert await store.pending_outboxes({"d2"}) == []

        await store.note_relink("d1", "record.address_added")
        notes = await store.relink_notes({"d1", "d5"})
        assert [(n["doc_id"], n["cause"]) for n in notes] == [("d1", "record.address_added")]
        await store.drop_relink_notes([n["_id"] for n in notes])
        assert await store.relink_notes({"d1"}) == []
    finally:
        await mongo.drop_database(db.name)
