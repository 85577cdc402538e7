"""The linker as a real process on the real Kafka and FerretDB: links, relinking, reply signals,
discovery and the query API. Fetcher and sender events are published here as their contracts define."""

from __future__ import annotations

import json
import random
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymongo import AsyncMongoClient

from contracts.common import Address, MessageRef
from contracts.crm import CrmRecordUpserted, CrmRecordUpsertedData
from contracts.messages import DeliveryReport, DeliveryStatus, MessageReceived, MessageReceivedData
from contracts.sending import MessageSent, MessageSentData
from mailsync.outbound_ids import message_id_for, send_id_for
from tests.integration.conftest import eventually

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]
BASE = datetime(2026, 3, 1, tzinfo=UTC)


LINKER_TOPICS = ("crm.records.v1", "mailsync.messages.v1", "mailsync.send.events.v1")


async def start_linker(service: Any, kafka_bootstrap: str) -> Any:
    """A linker whose consumer group starts at the topics' current end.

    The topics are shared with other suites (a sync benchmark may have left thousands of messages):
    committing the end offsets first keeps this test to its own events.
    """
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=f"{prefix}.linker", enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in LINKER_TOPICS
            for p in sorted(await _partitions(kafka_bootstrap, topic))
        ]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit({tp: ends[tp] for tp in partitions})
    finally:
        await consumer.stop()
    return service("linker", MAILSYNC_KAFKA_CONSUMER_GROUP_PREFIX=prefix)


async def _partitions(kafka_bootstrap: str, topic: str) -> set[int]:
    prod = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await prod.start()
    try:
        return set(await prod.partitions_for(topic))
    finally:
        await prod.stop()


class Collector:
    """Reads a topic from its end as of creation and keeps every event (a whole batch at a time)."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self.seen: list[dict[str, Any]] = []

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 45.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.seen:
                if predicate(event):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching event in {timeout}s; saw {[e['type'] for e in self.seen]}")
            batch = await self._consumer.getmany(timeout_ms=500)
            for records in batch.values():
                self.seen += [json.loads(r.value) for r in records]


@pytest_asyncio.fixture
async def collect(kafka_bootstrap: str) -> AsyncIterator[Callable[[str], Awaitable[Collector]]]:
    consumers: list[AIOKafkaConsumer] = []

    async def make(topic: str) -> Collector:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
        await consumer.start()
        consumers.append(consumer)
        partitions = [TopicPartition(topic, p) for p in sorted(await _partitions(kafka_bootstrap, topic))]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        return Collector(consumer)

    yield make
    for c in consumers:
        await c.stop()


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def record(tenant: str, rid: str, rev: int, *emails: str, owner: str = "u1") -> CrmRecordUpserted:
    data = CrmRecordUpsertedData(
        record_id=rid,
        record_type="contact",
        revision=rev,
        owner_user_id=owner,
        primary_email=emails[0] if emails else None,
        secondary_emails=list(emails[1:]),
    )
    return CrmRecordUpserted.build(data=data, tenant_id=tenant, source="/crm", subject=rid)


def message(
    tenant: str,
    inbox: str,
    key: str,
    *,
    frm: str,
    to: Sequence[str] = (),
    cc: Sequence[str] = (),
    direction: str = "inbound",
    history: bool = False,
    in_reply_to: Sequence[str] = (),
    subject: str = "hello",
    minutes: int = 0,
    folder: str = "INBOX",
    **extra: Any,
) -> MessageReceived:
    data = MessageReceivedData(
        ref=MessageRef(message_key=key, folder=folder, uidvalidity=7, uid=minutes + 1),
        history=history,
        direction=direction,  # type: ignore[arg-type]
        message_id=f"{key}@mail.example",
        in_reply_to=list(in_reply_to),
        references=list(in_reply_to),
        subject=subject,
        from_=[Address(name="Someone", email=frm)],
        to=[Address(email=a) for a in to],
        cc=[Address(email=a) for a in cc],
        date=BASE + timedelta(minutes=minutes),
        size=500,
        **extra,
    )
    return MessageReceived.build(
        data=data, tenant_id=tenant, source="/mailsync/fetcher", inbox_id=inbox, subject=key
    )


def sent(tenant: str, inbox: str, key: str, to: str) -> MessageSent:
    send_id = send_id_for(tenant, inbox, key)
    data = MessageSentData(
        idempotency_key=key,
        send_id=send_id,
        message_id=message_id_for(send_id, "corp.example").strip("<>"),
        accepted_recipients=[to],
        smtp_response="250 2.0.0 Ok",
        attempts=1,
        from_=Address(email="owner@corp.example"),
        to=[Address(email=to)],
        subject="Our offer",
    )
    return MessageSent.build(data=data, tenant_id=tenant, source="/mailsync/sender", inbox_id=inbox)


async def add_inbox(
    db: Any,
    tenant: str,
    inbox: str,
    owner: str,
    *,
    email: str | None = None,
    sharing: str = "private",
    shared_with: Sequence[str] = (),
    discovery: str = "off",
) -> None:
    # The registry document the fetcher writes; the linker reads these fields of it.
    await db.inboxes.replace_one(
        {"_id": f"{tenant}:{inbox}"},
        {
            "_id": f"{tenant}:{inbox}",
            "tenant_id": tenant,
            "inbox_id": inbox,
            "owner_user_id": owner,
            "email": email or f"{owner}@corp.example",
            "additional_from": [f"{owner}-alias@corp.example"],
            "sharing": sharing,
            "shared_with": list(shared_with),
            "contact_discovery": discovery,
        },
        upsert=True,
    )


def of(tenant: str, event_type: str, key: str | None = None) -> Any:
    def pred(e: dict[str, Any]) -> bool:
        return (
            e["tenant_id"] == tenant
            and e["type"] == event_type
            and (key is None or e["data"].get("message_key") == key)
        )

    return pred


async def test_links_relinking_and_discovery(
    service, kafka_bootstrap, producer, collect, mongo: Mongo
) -> None:  # type: ignore[no-untyped-def]
    linker = await start_linker(service, kafka_bootstrap)
    db = mongo[linker.database]
    links = await collect("mailsync.links.v1")
    t = _tenant()
    await add_inbox(db, t, "i1", "u1", email="u1@corp.example", discovery="sent_only")
    await producer(record(t, "ann", 1, "ann@example.com", "ann.private@home.example"))
    await producer(record(t, "bob", 1, "bob@example.com"))
    await producer(record(t, "bob-lead", 1, "bob@example.com"))

    # Records are keyed by id, so they may be applied in any order: wait for all three (a message linked
    # before its record arrives is linked by the relink instead, with `link changed`).
    async def directory_ready() -> bool:
        return await db.crm_records.count_documents({"tenant_id": t}) >= 3

    await eventually(directory_ready)

    # From a secondary address.
    await producer(message(t, "i1", "m1", frm="Ann <ANN.Private@Home.example>", to=["u1@corp.example"]))
    m1 = await links.wait_for(of(t, "mailsync.message.linked", "m1"))
    assert [(lk["record_id"], lk["email"], lk["roles"]) for lk in m1["data"]["links"]] == [
        ("ann", "ann.private@home.example", ["sender"])
    ]
    # To two matching contacts (bob's address is on two records: both linked, and said so), discovery on.
    await producer(
        message(
            t,
            "i1",
            "m2",
            frm="u1@corp.example",
            to=["ann@example.com", "bob@example.com", "newbie@client.example", "noreply@client.example"],
            cc=["u1-alias@corp.example"],
            direction="outbound",
            minutes=1,
        )
    )
    m2 = await links.wait_for(of(t, "mailsync.message.linked", "m2"))
    assert sorted(lk["record_id"] for lk in m2["data"]["links"]) == ["ann", "bob", "bob-lead"]
    assert m2["data"]["ambiguous_addresses"] == ["bob@example.com"]
    found = await links.wait_for(of(t, "mailsync.contact.discovered"))
    assert found["data"]["email"] == "newbie@client.example" and found["data"]["owner_user_id"] == "u1"
    # Inbound mail from an unknown address: the policy is `sent_only`, so nothing is discovered.
    await producer(message(t, "i1", "m3", frm="stranger@web.example", to=["u1@corp.example"], minutes=2))
    await eventually(lambda: db.link_messages.find_one({"_id": f"{t}:i1:m3", "discovery_done": True}))

    # Ann's secondary address changes: m1's history is relinked with `link changed`, nothing rescanned.
    await producer(record(t, "ann", 2, "ann@example.com", "ann@newhome.example"))
    changed = await links.wait_for(of(t, "mailsync.message.link_changed", "m1"))
    assert [lk["record_id"] for lk in changed["data"]["removed"]] == ["ann"]
    assert changed["data"]["added"] == [] and changed["data"]["cause"] == "record.address_changed"
    # The new address matches an older message once that address is added back to another record.
    await producer(record(t, "carol", 1, "ann.private@home.example"))
    readded = await links.wait_for(
        lambda e: of(t, "mailsync.message.link_changed", "m1")(e) and e["id"] != changed["id"]
    )
    assert [lk["record_id"] for lk in readded["data"]["added"]] == ["carol"]

    discovered = [e for e in links.seen if of(t, "mailsync.contact.discovered")(e)]
    assert [e["data"]["email"] for e in discovered] == ["newbie@client.example"]
    assert linker.stop() == 0, linker.log()[-3000:]


async def test_reply_signals_and_history(service, kafka_bootstrap, producer, collect, mongo: Mongo) -> None:  # type: ignore[no-untyped-def]
    linker = await start_linker(service, kafka_bootstrap)
    db = mongo[linker.database]
    replies = await collect("mailsync.replies.v1")
    t = _tenant()
    await add_inbox(db, t, "i1", "u1")
    await producer(record(t, "ann", 1, "ann@example.com"))
    await eventually(lambda: db.crm_records.find_one({"_id": f"{t}:ann"}))
    out = sent(t, "i1", "req-1", "ann@example.com")
    await producer(out)
    mid = out.data.message_id

    # Connecting an inbox whose history holds old replies, auto-replies and bounces: no signal at all.
    old_report = DeliveryReport(
        recipients=[DeliveryStatus(final_recipient="ann@example.com", action="failed")]
    )
    for n, extra in enumerate([{}, {"auto_submitted": "auto-replied"}, {"delivery_report": old_report}]):
        await producer(
            message(
                t, "i1", f"old{n}", frm="ann@example.com", in_reply_to=[mid], history=True, minutes=n, **extra
            )
        )
    # A person's reply, delivered twice and seen again in another folder: exactly one `reply received`.
    reply = message(
        t, "i1", "r1", frm="ann@example.com", to=["u1@corp.example"], in_reply_to=[mid], minutes=10
    )
    await producer(reply)
    await producer(reply)
    await producer(
        message(
            t,
            "i1",
            "r1",
            frm="ann@example.com",
            to=["u1@corp.example"],
            in_reply_to=[mid],
            minutes=10,
            folder="Archive",
        )
    )
    # An out-of-office and a bounce: their own events, no `reply received`.
    await producer(
        message(
            t,
            "i1",
            "ooo",
            frm="ann@example.com",
            in_reply_to=[mid],
            subject="Automatic reply: Our offer",
            headers={"x-autoreply": "yes"},
            minutes=11,
        )
    )
    report = DeliveryReport(
        recipients=[
            DeliveryStatus(
                final_recipient="rfc822; gone@example.com",
                action="failed",
                status="5.1.1",
                diagnostic="smtp; 550 5.1.1 User unknown",
            )
        ],
        original_message_id=mid,
    )
    await producer(
        message(
            t,
            "i1",
            "dsn",
            frm="MAILER-DAEMON@mx.example",
            subject="Undelivered Mail Returned to Sender",
            content_type="multipart/report; report-type=delivery-status; boundary=b",
            delivery_report=report,
            minutes=12,
        )
    )
    got = await replies.wait_for(of(t, "mailsync.message.reply_received", "r1"))
    assert got["data"]["original_message_id"] == mid and got["data"]["original_send_id"] == out.data.send_id
    assert got["data"]["record_ids"] == ["ann"] and got["data"]["from"]["email"] == "ann@example.com"
    auto = await replies.wait_for(of(t, "mailsync.message.auto_reply_received", "ooo"))
    assert auto["data"]["original_message_id"] == mid and auto["data"]["record_ids"] == ["ann"]
    bounce = await replies.wait_for(of(t, "mailsync.message.bounce_received", "dsn"))
    assert (
        bounce["data"]["bounced_recipients"] == ["gone@example.com"] and bounce["data"]["status"] == "5.1.1"
    )
    assert bounce["data"]["permanent"] is True and bounce["data"]["original_message_id"] == mid

    # A last message on the same inbox (same partition, processed in order) closes the window.
    await producer(
        message(
            t,
            "i1",
            "last",
            frm="ann@example.com",
            subject="Out of office",
            auto_submitted="auto-replied",
            in_reply_to=[mid],
            minutes=13,
        )
    )
    await replies.wait_for(of(t, "mailsync.message.auto_reply_received", "last"))
    mine = [e for e in replies.seen if e["tenant_id"] == t]
    assert [e["data"]["message_key"] for e in mine if e["type"] == "mailsync.message.reply_received"] == [
        "r1"
    ]
    assert not [e for e in mine if e["data"]["message_key"].startswith("old")]
    # The old mail is linked all the same.
    assert await db.link_messages.count_documents({"tenant_id": t, "history": True, "record_ids": "ann"}) == 3
    assert linker.stop() == 0, linker.log()[-3000:]


def _get(port: int, path: str, tenant: str | None, user: str | None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if tenant:
        req.add_header("X-Mailsync-Tenant", tenant)
    if user:
        req.add_header("X-Mailsync-User", user)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


async def test_query_api_tenants_and_sharing(service, kafka_bootstrap, producer, mongo: Mongo) -> None:  # type: ignore[no-untyped-def]
    linker = await start_linker(service, kafka_bootstrap)
    db = mongo[linker.database]
    t, other = _tenant(), _tenant()
    rng = random.Random(5)
    users = ["u1", "u2", "u3"]
    inboxes: dict[str, tuple[str, str, list[str]]] = {}
    for n in range(5):  # random inboxes and shares
        owner, level = rng.choice(users), rng.choice(["private", "metadata", "subject", "full"])
        shared = rng.sample(users, rng.randint(0, 2))
        inboxes[f"i{n}"] = (owner, level, shared)
        await add_inbox(db, t, f"i{n}", owner, sharing=level, shared_with=shared)
    await add_inbox(db, other, "i0", "u1", sharing="full", shared_with=users)
    await producer(record(t, "ann", 1, "ann@example.com"))
    await producer(record(other, "ann", 1, "ann@example.com"))
    # The directory first: messages linked before it would only be linked by the relink, later.
    await eventually(lambda: db.crm_records.find_one({"_id": f"{t}:ann"}))
    await eventually(lambda: db.crm_records.find_one({"_id": f"{other}:ann"}))
    keys = []
    for n in range(12):
        inbox = f"i{n % 5}"
        keys.append((inbox, f"q{n}"))
        await producer(message(t, inbox, f"q{n}", frm="ann@example.com", subject=f"secret {n}", minutes=n))
    await producer(message(other, "i0", "x0", frm="ann@example.com", subject="other tenant"))
    await eventually(lambda: _count(db, t, 12))
    await eventually(lambda: _count(db, other, 1))
    port = linker.port

    assert _get(port, "/v1/linked-emails?record_id=ann", None, None)[0] == 401
    assert _get(port, f"/v1/linked-emails?record_id=ann&tenant_id={other}", t, "u1")[0] == 403
    assert _get(port, "/v1/linked-emails?record_id=nobody", t, "u1")[0] == 404
    status, spec = _get(port, "/v1/openapi.json", None, None)
    assert status == 200 and "/v1/linked-emails" in spec["paths"]

    for viewer in users:
        for owner_filter in ["all", *users]:
            items: list[dict[str, Any]] = []
            cursor = ""
            while True:
                status, page = _get(
                    port, f"/v1/linked-emails?record_id=ann&owner={owner_filter}&limit=3{cursor}", t, viewer
                )
                assert status == 200, page
                items += page["items"]
                if not page["next_cursor"]:
                    break
                cursor = f"&cursor={page['next_cursor']}"
            expected = {}
            for inbox, key in keys:
                owner, level, shared = inboxes[inbox]
                seen_as = (
                    "full"
                    if viewer == owner
                    else (level if viewer in shared and level != "private" else None)
                )
                if seen_as and owner_filter in ("all", owner):
                    expected[key] = seen_as
            assert {i["message_key"]: i["visibility"] for i in items} == expected, (viewer, owner_filter)
            assert [i["date"] for i in items] == sorted((i["date"] for i in items), reverse=True)
            for i in items:
                assert (i["subject"] is None) == (i["visibility"] == "metadata")
                assert (i["ref"] is None) == (i["visibility"] != "full")
                assert i["subject"] != "other tenant"
    assert linker.stop() == 0, linker.log()[-3000:]


async def _count(db: Any, tenant: str, n: int) -> bool:
    return bool(await db.link_messages.count_documents({"tenant_id": tenant, "record_ids": "ann"}) >= n)


async def test_relinking_survives_a_crash_between_directory_and_history(mongo: Mongo) -> None:
    """The directory keeps the addresses to relink until the relinking is done: a redelivered record
    event after a crash in between relinks again, although the directory itself has nothing new."""
    from contracts.crm import CrmRecordDeleted, CrmRecordDeletedData
    from services.linker.directory import Directory

    db = mongo[f"test_linker_dir_{uuid.uuid4().hex[:8]}"]
    try:
        directory = Directory(db)
        await directory.ensure_indexes()
        t = _tenant()
        first = await directory.apply(record(t, "ann", 1, "ann@example.com", "ann@home.example"))
        assert first is not None and first.emails == {"ann@example.com", "ann@home.example"}
        # Crash: relinking never ran. The redelivered event returns the same work.
        again = await directory.apply(record(t, "ann", 1, "ann@example.com", "ann@home.example"))
        assert again is not None and again.emails == first.emails and again.cause == "record.address_added"
        await directory.relinked(again)
        assert await directory.apply(record(t, "ann", 1, "ann@example.com", "ann@home.example")) is None
        # An older revision changes nothing; a newer one names only what changed.
        assert await directory.apply(record(t, "ann", 0, "old@example.com")) is None
        changed = await directory.apply(record(t, "ann", 2, "ann@example.com"))
        assert changed is not None and changed.emails == {"ann@home.example"}
        assert changed.cause == "record.address_removed"
        await directory.relinked(changed)
        deleted = CrmRecordDeleted.build(
            data=CrmRecordDeletedData(record_id="ann", record_type="contact", revision=3),
            tenant_id=t,
            source="/crm",
            subject="ann",
        )
        gone = await directory.apply(deleted)
        assert gone is not None and gone.emails == {"ann@example.com"} and gone.cause == "record.deleted"
    finally:
        await mongo.drop_database(db.name)
