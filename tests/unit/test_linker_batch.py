"""The linker's batch path over the in-memory store: the same links, threads, signals, contacts and event
ids as the single-message path, whatever the batch boundaries; duplicates, several inboxes, failures and a
directory change in the middle of a batch."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import pytest

from contracts import Envelope
from contracts.common import MessageRef
from contracts.messages import DeliveryReport, DeliveryStatus, MessageDeleted, MessageDeletedData
from services.linker.directory import AddressChange
from services.linker.link_rules import RecordRef
from services.linker.linking import Linker
from services.linker.store import InboxView, MemoryLinkStore
from tests.unit.test_linker_flow import INBOX, OWNER, Sink, T, received, sent

INBOX2 = "i2"


def make_store() -> MemoryLinkStore:
    s = MemoryLinkStore()
    s.inbox_docs[(T, INBOX)] = InboxView(
        T,
        INBOX,
        OWNER,
        "me@corp.example",
        aliases=("sales@corp.example",),
        contact_discovery="sent_and_received",
    )
    s.inbox_docs[(T, INBOX2)] = InboxView(T, INBOX2, "u2", "you@corp.example", contact_discovery="sent_only")
    s.add_record(T, RecordRef("c1", "contact"), ["ann@example.com", "ann@home.example"])
    s.add_record(T, RecordRef("c2", "contact"), ["bob@example.com"])
    s.add_record(T, RecordRef("l9", "lead"), ["bob@example.com"])
    return s


@functools.cache
def scenario() -> list[tuple[str, list[Envelope[Any]]]]:
    """Steps of (topic kind, events): what a fetcher and a sender would publish (built once: the same
    events, times included, for every run)."""
    out = sent("req-b1")
    ours = out.data.message_id
    reply = received(key="r1", in_reply_to=[ours], references=[ours], subject="Re: offer", minutes=1)
    report = DeliveryReport(
        recipients=[
            DeliveryStatus(final_recipient="rfc822; ann@example.com", action="failed", status="5.1.1")
        ],
        original_message_id=ours,
    )
    copy = received(
        key="fetcher-copy",
        frm="me@corp.example",
        to=["ann@example.com"],
        direction="outbound",
        message_id=ours,
        mailsync_send_id=out.data.send_id,
    )
    a2 = received(key="a2", frm="stranger@web.example", cc=["bob@example.com", "no-reply@web.example"])
    assert a2.data.ref is not None
    first: list[Envelope[Any]] = [
        received(key="a1", frm="Ann <ANN@Home.Example>", minutes=2),
        a2,
        reply,
        reply,  # the same event twice in one batch
        received(  # Bob answers Ann's reply, in the same batch
            key="b",
            frm="bob@example.com",
            in_reply_to=["r1@mail.example"],
            references=[ours, "r1@mail.example"],
            minutes=3,
        ),
        received(key="oof", in_reply_to=[ours], auto_submitted="auto-replied", subject="Out of office"),
        received(
            key="dsn",
            frm="MAILER-DAEMON@corp.example",
            subject="Undelivered Mail Returned to Sender",
            content_type='multipart/report; report-type="delivery-status"; boundary="x"',
            delivery_report=report,
        ),
        received(key="old", in_reply_to=[ours], history=True),
        # A thread arriving child first: c answers b2, b2 answers a3.
        received(key="c", in_reply_to=["b2@mail.example"]),
        received(key="b2", in_reply_to=["a3@mail.example"]),
        received(key="a3"),
        copy,  # the Sent copy of the send: the same email as the send event
        received(
            key="x2", frm="ann@example.com", to=["you@corp.example", "new@client.example"], inbox=INBOX2
        ),
        received(key="n1", frm="me@corp.example", to=["new@client.example"], direction="outbound"),
        received(key="n2", frm="me@corp.example", to=["new@client.example"], direction="outbound"),
        MessageDeleted.build(
            data=MessageDeletedData(ref=a2.data.ref, reason="expunged"),
            tenant_id=T,
            source="/t",
            inbox_id=INBOX,
        ),
        received(key="g", gmail_thread_id="1789", references=["x@y"]),
    ]
    # A redelivery of part of the first batch, with a new message answering one of it.
    second: list[Envelope[Any]] = [
        first[0],
        reply,
        received(key="late", in_reply_to=["b@mail.example"], frm="bob@example.com"),
    ]
    return [("send", [out]), ("messages", first), ("messages", second)]


async def run_single(store: MemoryLinkStore, sink: Sink) -> None:
    linker = Linker(store, sink)
    for kind, events in scenario():
        for event in events:
            await (linker.on_send_event if kind == "send" else linker.on_message_event)(event)


async def run_batches(store: MemoryLinkStore, sink: Sink, size: int) -> None:
    linker = Linker(store, sink)
    for kind, events in scenario():
        for i in range(0, len(events), size):
            chunk = events[i : i + size]
            await (linker.on_send_events if kind == "send" else linker.on_message_events)(chunk)


def published(sink: Sink) -> list[tuple[str | None, str, str, Any]]:
    return [(e.inbox_id, e.type, e.id, e.data.model_dump(mode="json")) for e in sink.events]


@pytest.mark.parametrize("size", [1, 3, 100])
async def test_batches_decide_exactly_what_the_single_message_path_decides(size: int) -> None:
    single, batched = make_store(), make_store()
    one, many = Sink(), Sink()
    await run_single(single, one)
    await run_batches(batched, many, size)
    assert published(many) == published(one)
    assert batched.messages == single.messages
    assert batched.contacts == single.contacts and batched.threads == single.threads
    assert batched.outboxes == {}
    # The scenario covers what it claims to.
    types = [e.type for e in one.events]
    assert types.count("mailsync.message.reply_received") == 3  # r1, b (tracked thread), late
    assert types.count("mailsync.message.auto_reply_received") == 1
    assert types.count("mailsync.message.bounce_received") == 1
    assert sorted(e.data.email for e in one.of("mailsync.contact.discovered")) == [
        "new@client.example",
        "stranger@web.example",
    ]
    threads = {d["message_key"]: d["thread_id"] for d in single.messages.values()}
    assert threads["c"] == threads["b2"] == threads["a3"] == "mid:a3@mail.example"
    assert single.messages[f"{T}:{INBOX}:a2"]["deleted"] is True


async def test_a_batch_with_duplicates_links_each_message_once() -> None:
    store, sink = make_store(), Sink()
    event = received(key="d1", cc=["bob@example.com"])
    assert event.data.ref is not None
    other_folder = received(key="d1", cc=["bob@example.com"], subject="hello")
    moved = other_folder.model_copy(
        update={
            "id": "another-delivery-of-d1",
            "data": event.data.model_copy(
                update={"ref": MessageRef(message_key="d1", folder="Archive", uidvalidity=1, uid=9)}
            ),
        }
    )
    await Linker(store, sink).on_message_events([event, event, moved, event])
    (linked,) = sink.of("mailsync.message.linked")
    assert [lk.record_id for lk in linked.data.links] == ["c1", "c2", "l9"]
    assert linked.data.ambiguous_addresses == ["bob@example.com"]
    doc = store.messages[f"{T}:{INBOX}:d1"]
    assert doc["ref"]["folder"] == "Archive"  # the later copy is learnt, as on the single path
    assert len(store.messages) == 1
    # A later batch: the same message filed elsewhere again (a resync) is only re-filed, nothing re-sent.
    again = moved.model_copy(
        update={
            "id": "a-resync-of-d1",
            "data": event.data.model_copy(
                update={"ref": MessageRef(message_key="d1", folder="All Mail", uidvalidity=2, uid=3)}
            ),
        }
    )
    before = list(sink.events)
    await Linker(store, sink).on_message_events([again, event])
    assert sink.events == before
    assert store.messages[f"{T}:{INBOX}:d1"]["ref"]["folder"] == "INBOX"  # the last copy seen


async def test_a_batch_spanning_inboxes_keeps_each_inbox_in_order() -> None:
    store, sink = make_store(), Sink()
    out = sent("req-order")
    await Linker(store, sink).on_send_events([out])
    store.add_record(T, RecordRef("c3", "contact"), ["carl@example.com"])
    events = [received(key=f"o{i}", inbox=INBOX if i % 2 else INBOX2, minutes=i) for i in range(6)]
    # The Sent copy of the send (stored already, so handled on its own) names one more recipient.
    copy = received(
        key="copy",
        frm="me@corp.example",
        to=["ann@example.com", "carl@example.com"],
        direction="outbound",
        message_id=out.data.message_id,
        mailsync_send_id=out.data.send_id,
    )
    events.insert(3, copy)
    sink.events.clear()
    await Linker(store, sink).on_message_events(events)
    send_key = f"send:{out.data.send_id}"
    assert [(e.subject, e.type.rsplit(".", 1)[1]) for e in sink.events if e.inbox_id == INBOX] == [
        ("o1", "linked"),
        (send_key, "link_changed"),
        ("o3", "linked"),
        ("o5", "linked"),
    ]
    assert [e.subject for e in sink.events if e.inbox_id == INBOX2] == ["o0", "o2", "o4"]
    assert [e.subject for e in sink.events][:3] == ["o0", "o1", "o2"]  # published before the copy's


class FailingSink(Sink):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def __call__(self, events: Sequence[Envelope[Any]]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("kafka down")
        await super().__call__(events)


async def test_a_failure_mid_batch_is_repaired_by_the_redelivery() -> None:
    """Kafka refuses the batch's events after the messages were stored: the handler fails (so the consumer
    commits nothing) and the redelivered batch publishes the same events, once."""
    reference = Sink()
    await run_single(make_store(), reference)
    store, sink = make_store(), FailingSink(failures=0)
    steps = scenario()
    linker = Linker(store, sink)
    await linker.on_send_events(steps[0][1])
    sink.failures = 1
    with pytest.raises(ConnectionError):
        await linker.on_message_events(steps[1][1])
    assert store.outboxes  # what was decided waits in the batch's outbox
    await Linker(store, sink).on_message_events(steps[1][1])  # the redelivery, by a fresh process
    await Linker(store, sink).on_message_events(steps[2][1])
    assert store.outboxes == {}
    assert sorted(e.id for e in sink.events) == sorted(e.id for e in reference.events)


async def test_a_store_failure_mid_batch_leaves_nothing_half_done() -> None:
    class Broken(MemoryLinkStore):
        fail = False

        async def insert_messages(self, docs: Sequence[dict[str, Any]]) -> set[str]:
            if self.fail:
                self.fail = False
                raise ConnectionError("database down")
            return await super().insert_messages(docs)

    reference = Sink()
    await run_single(make_store(), reference)
    broken = Broken()
    fresh = make_store()
    broken.inbox_docs, broken.addresses, broken.records = fresh.inbox_docs, fresh.addresses, fresh.records
    sink = Sink()
    steps = scenario()
    await Linker(broken, sink).on_send_events(steps[0][1])
    broken.fail = True
    with pytest.raises(ConnectionError):
        await Linker(broken, sink).on_message_events(steps[1][1])
    assert len(sink.events) == 1  # only the send's
    await Linker(broken, sink).on_message_events(steps[1][1])
    await Linker(broken, sink).on_message_events(steps[2][1])
    assert sorted(e.id for e in sink.events) == sorted(e.id for e in reference.events)


async def test_a_directory_change_while_a_batch_is_linking_is_not_lost() -> None:
    """The relink runs after the batch read the directory but before it stored its messages: the relink
    finds nothing stored, leaves a note, and the batch settles the message again after storing it."""
    linker: Linker

    class Racing(MemoryLinkStore):
        async def insert_messages(self, docs: Sequence[dict[str, Any]]) -> set[str]:
            if not self.records.get((T, "c3")):
                self.add_record(T, RecordRef("c3", "contact"), ["carl@example.com"])
                await linker.relink(
                    AddressChange(T, "c3", frozenset({"carl@example.com"}), "record.address_added")
                )
                assert self.notes
            return await super().insert_messages(docs)

    store, sink = Racing(), Sink()
    store.inbox_docs = make_store().inbox_docs
    linker = Linker(store, sink)
    await linker.on_message_events([received(key="k1", frm="carl@example.com")])
    doc = store.messages[f"{T}:{INBOX}:k1"]
    assert doc["record_ids"] == ["c3"] and store.notes == {}
    (changed,) = sink.of("mailsync.message.link_changed")
    assert [lk.record_id for lk in changed.data.added] == ["c3"]
