"""The linker's flow over the in-memory store: links, relinking, reply signals, threads, discovery."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts import Envelope
from contracts.common import Address, MessageRef
from contracts.messages import DeliveryReport, DeliveryStatus, MessageReceived, MessageReceivedData
from contracts.sending import MessageSent, MessageSentData
from mailsync.outbound_ids import message_id_for, send_id_for
from services.linker.directory import AddressChange
from services.linker.link_rules import RecordRef
from services.linker.linking import Linker
from services.linker.store import InboxView, MemoryLinkStore

T, INBOX, OWNER = "t1", "i1", "u1"
BASE = datetime(2026, 1, 1, tzinfo=UTC)


class Sink:
    def __init__(self) -> None:
        self.events: list[Envelope[Any]] = []

    async def __call__(self, events: Sequence[Envelope[Any]]) -> None:
        self.events.extend(events)

    def of(self, event_type: str) -> list[Envelope[Any]]:
        return [e for e in self.events if e.type == event_type]


def received(
    *,
    key: str | None = None,
    frm: str = "ann@example.com",
    to: Sequence[str] = ("me@corp.example",),
    cc: Sequence[str] = (),
    reply_to: Sequence[str] = (),
    history: bool = False,
    direction: str = "inbound",
    message_id: str | None = None,
    in_reply_to: Sequence[str] = (),
    references: Sequence[str] = (),
    subject: str = "hello",
    minutes: int = 0,
    inbox: str = INBOX,
    **extra: Any,
) -> MessageReceived:
    key = key or uuid.uuid4().hex
    data = MessageReceivedData(
        ref=MessageRef(message_key=key, folder="INBOX", uidvalidity=1, uid=abs(hash(key)) % 100000),
        history=history,
        direction=direction,  # type: ignore[arg-type]
        message_id=message_id or f"{key}@mail.example",
        in_reply_to=list(in_reply_to),
        references=list(references),
        subject=subject,
        from_=[Address(name="Ann", email=frm)],
        to=[Address(email=a) for a in to],
        cc=[Address(email=a) for a in cc],
        reply_to=[Address(email=a) for a in reply_to],
        date=BASE + timedelta(minutes=minutes),
        size=100,
        **extra,
    )
    return MessageReceived.build(data=data, tenant_id=T, source="/test", inbox_id=inbox, subject=key)


def sent(key: str, to: Sequence[str] = ("ann@example.com",)) -> MessageSent:
    send_id = send_id_for(T, INBOX, key)
    data = MessageSentData(
        idempotency_key=key,
        send_id=send_id,
        message_id=message_id_for(send_id, "corp.example").strip("<>"),
        accepted_recipients=list(to),
        smtp_response="250 ok",
        attempts=1,
        from_=Address(email="me@corp.example"),
        to=[Address(email=a) for a in to],
        subject="offer",
    )
    return MessageSent.build(data=data, tenant_id=T, source="/test", inbox_id=INBOX)


@pytest.fixture
def store() -> MemoryLinkStore:
    s = MemoryLinkStore()
    s.inbox_docs[(T, INBOX)] = InboxView(T, INBOX, OWNER, "me@corp.example", aliases=("sales@corp.example",))
    s.add_record(T, RecordRef("c1", "contact"), ["ann@example.com", "ann@home.example"])
    s.add_record(T, RecordRef("c2", "contact"), ["bob@example.com"])
    return s


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def linker(store: MemoryLinkStore, sink: Sink) -> Linker:
    return Linker(store, sink)


async def test_secondary_address_links_and_own_addresses_are_excluded(linker: Linker, sink: Sink) -> None:
    await linker.on_message_event(received(frm="Ann <ANN@Home.Example>", to=["me@corp.example"]))
    (linked,) = sink.of("mailsync.message.linked")
    assert [(lk.record_id, lk.email, lk.roles) for lk in linked.data.links] == [
        ("c1", "ann@home.example", ["sender"])
    ]


async def test_every_matching_record_is_linked_and_shared_addresses_are_reported(
    linker: Linker, store: MemoryLinkStore, sink: Sink
) -> None:
    store.add_record(T, RecordRef("l9", "lead"), ["bob@example.com"])
    await linker.on_message_event(
        received(frm="me@corp.example", to=["ann@example.com"], cc=["bob@example.com"], direction="outbound")
    )
    (linked,) = sink.of("mailsync.message.linked")
    assert {(lk.record_id, tuple(lk.roles)) for lk in linked.data.links} == {
        ("c1", ("recipient",)),
        ("c2", ("cc",)),
        ("l9", ("cc",)),
    }
    assert linked.data.ambiguous_addresses == ["bob@example.com"]


async def test_the_same_message_twice_yields_one_event_with_a_stable_id(
    store: MemoryLinkStore, sink: Sink
) -> None:
    event = received(key="k1")
    await Linker(store, sink).on_message_event(event)
    first = sink.of("mailsync.message.linked")
    await Linker(store, sink).on_message_event(event)
    assert sink.of("mailsync.message.linked") == first
    other = MemoryLinkStore()
    other.inbox_docs = store.inbox_docs
    other.add_record(T, RecordRef("c1", "contact"), ["ann@example.com", "ann@home.example"])
    again = Sink()
    await Linker(other, again).on_message_event(event)
    assert [e.id for e in again.of("mailsync.message.linked")] == [e.id for e in first]


async def test_address_change_relinks_history_without_rescanning(
    linker: Linker, store: MemoryLinkStore, sink: Sink
) -> None:
    await linker.on_message_event(received(key="k1", frm="carl@example.com"))
    await linker.on_message_event(received(key="k2", frm="ann@example.com"))
    assert len(sink.of("mailsync.message.linked")) == 1
    store.add_record(T, RecordRef("c3", "contact"), ["carl@example.com"])
    looked_at = await linker.relink(
        AddressChange(T, "c3", frozenset({"carl@example.com"}), "record.address_added")
    )
    assert looked_at == 1  # only the message carl took part in
    (changed,) = sink.of("mailsync.message.link_changed")
    assert changed.data.message_key == "k1" and changed.data.cause == "record.address_added"
    assert [lk.record_id for lk in changed.data.added] == ["c3"] and changed.data.removed == []

    store.remove_record(T, "c1")
    await linker.relink(AddressChange(T, "c1", frozenset({"ann@example.com"}), "record.deleted"))
    removed = sink.of("mailsync.message.link_changed")[-1]
    assert removed.data.message_key == "k2" and [lk.record_id for lk in removed.data.removed] == ["c1"]
    # Relinking again changes nothing and emits nothing.
    before = len(sink.events)
    await linker.relink(AddressChange(T, "c1", frozenset({"ann@example.com"}), "record.deleted"))
    assert len(sink.events) == before


async def test_reply_to_our_message_fires_one_reply_received(linker: Linker, sink: Sink) -> None:
    out = sent("req-1")
    await linker.on_send_event(out)
    reply = received(in_reply_to=[out.data.message_id], references=[out.data.message_id], subject="Re: offer")
    await linker.on_message_event(reply)
    await linker.on_message_event(reply)  # redelivered
    (r,) = sink.of("mailsync.message.reply_received")
    assert r.data.original_message_id == out.data.message_id
    assert r.data.original_send_id == out.data.send_id
    assert r.data.record_ids == ["c1"]
    assert r.data.thread_id == f"mid:{out.data.message_id}"


async def test_reply_recognised_by_token_before_the_send_event(linker: Linker, sink: Sink) -> None:
    mid = message_id_for(send_id_for(T, INBOX, "early"), "corp.example")
    await linker.on_message_event(received(in_reply_to=[mid]))
    assert len(sink.of("mailsync.message.reply_received")) == 1


async def test_reply_in_a_tracked_thread(linker: Linker, sink: Sink) -> None:
    out = sent("req-2")
    await linker.on_send_event(out)
    # Bob answers Ann's reply (not our message) in the thread our message started.
    ann = received(key="a", in_reply_to=[out.data.message_id], references=[out.data.message_id])
    await linker.on_message_event(ann)
    bob = received(
        key="b",
        frm="bob@example.com",
        in_reply_to=["a@mail.example"],
        references=[out.data.message_id, "a@mail.example"],
    )
    await linker.on_message_event(bob)
    assert len(sink.of("mailsync.message.reply_received")) == 2


async def test_unrelated_mail_is_not_a_reply(linker: Linker, sink: Sink) -> None:
    await linker.on_message_event(received(in_reply_to=["someone@else.example"]))
    assert sink.of("mailsync.message.reply_received") == []


async def test_out_of_office_and_bounce_get_their_own_events(linker: Linker, sink: Sink) -> None:
    out = sent("req-3")
    await linker.on_send_event(out)
    await linker.on_message_event(
        received(in_reply_to=[out.data.message_id], auto_submitted="auto-replied", subject="Out of office")
    )
    report = DeliveryReport(
        recipients=[
            DeliveryStatus(final_recipient="rfc822; ann@example.com", action="failed", status="5.1.1")
        ],
        original_message_id=out.data.message_id,
    )
    await linker.on_message_event(
        received(
            frm="MAILER-DAEMON@corp.example",
            subject="Undelivered Mail Returned to Sender",
            content_type='multipart/report; report-type="delivery-status"; boundary="x"',
            delivery_report=report,
        )
    )
    assert sink.of("mailsync.message.reply_received") == []
    (auto,) = sink.of("mailsync.message.auto_reply_received")
    assert auto.data.signal == "Auto-Submitted: auto-replied"
    (bounce,) = sink.of("mailsync.message.bounce_received")
    assert bounce.data.bounced_recipients == ["ann@example.com"]
    assert bounce.data.status == "5.1.1" and bounce.data.permanent
    assert bounce.data.original_message_id == out.data.message_id


async def test_history_is_linked_but_fires_no_signal(linker: Linker, sink: Sink) -> None:
    out = sent("req-4")
    await linker.on_send_event(out)
    for kw in (
        {},
        {"auto_submitted": "auto-replied"},
        {"content_type": "multipart/report; report-type=delivery-status"},
    ):
        await linker.on_message_event(received(in_reply_to=[out.data.message_id], history=True, **kw))
    assert len(sink.of("mailsync.message.linked")) == 4  # the send and the three old messages
    types = {e.type for e in sink.events}
    assert not types & {
        "mailsync.message.reply_received",
        "mailsync.message.auto_reply_received",
        "mailsync.message.bounce_received",
    }


async def test_sent_copy_is_the_same_email_as_the_send(
    linker: Linker, store: MemoryLinkStore, sink: Sink
) -> None:
    out = sent("req-5")
    await linker.on_send_event(out)
    copy = received(
        key="fetcher-key",
        frm="me@corp.example",
        to=["ann@example.com"],
        direction="outbound",
        message_id=out.data.message_id,
        mailsync_send_id=out.data.send_id,
    )
    await linker.on_message_event(copy)
    assert len(sink.of("mailsync.message.linked")) == 1
    (doc,) = store.messages.values()
    assert doc["ref"]["message_key"] == "fetcher-key" and doc["fetcher_keys"] == ["fetcher-key"]


async def test_threads_out_of_order(linker: Linker, store: MemoryLinkStore) -> None:
    # c answers b, b answers a; they arrive c, b, a and without References.
    await linker.on_message_event(received(key="c", in_reply_to=["b@mail.example"]))
    await linker.on_message_event(received(key="b", in_reply_to=["a@mail.example"]))
    await linker.on_message_event(received(key="a"))
    threads = {d["message_key"]: d["thread_id"] for d in store.messages.values()}
    assert threads == {"a": "mid:a@mail.example", "b": "mid:a@mail.example", "c": "mid:a@mail.example"}


async def test_gmail_thread_id_wins(linker: Linker, store: MemoryLinkStore) -> None:
    await linker.on_message_event(received(key="g", gmail_thread_id="1789", references=["x@y"]))
    assert store.messages[f"{T}:{INBOX}:g"]["thread_id"] == "gm:1789"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("off", set()),
        ("sent_only", {"new@client.example"}),
        ("sent_and_received", {"new@client.example", "stranger@web.example"}),
    ],
)
async def test_discovery_honours_policy_and_no_reply_list(
    store: MemoryLinkStore, sink: Sink, policy: str, expected: set[str]
) -> None:
    store.inbox_docs[(T, INBOX)] = InboxView(
        T,
        INBOX,
        OWNER,
        "me@corp.example",
        contact_discovery=policy,  # type: ignore[arg-type]
    )
    linker = Linker(store, sink)
    await linker.on_message_event(
        received(
            frm="me@corp.example",
            to=["new@client.example", "ann@example.com", "support@client.example"],
            direction="outbound",
        )
    )
    await linker.on_message_event(received(frm="stranger@web.example", cc=["no-reply@web.example"]))
    await linker.on_message_event(received(frm="noreply@shop.example"))
    await linker.on_message_event(
        received(frm="me@corp.example", to=["new@client.example"], direction="outbound")
    )  # once per address
    found = [e.data.email for e in sink.of("mailsync.contact.discovered")]
    assert sorted(found) == sorted(expected)
    assert all(e.data.owner_user_id == OWNER for e in sink.of("mailsync.contact.discovered"))


async def test_outbox_survives_a_failed_publish(store: MemoryLinkStore) -> None:
    class Flaky(Sink):
        fail = True

        async def __call__(self, events: Sequence[Envelope[Any]]) -> None:
            if self.fail:
                self.fail = False
                raise ConnectionError("kafka down")
            await super().__call__(events)

    flaky = Flaky()
    event = received(key="k-out")
    with pytest.raises(ConnectionError):
        await Linker(store, flaky).on_message_event(event)
    await Linker(store, flaky).on_message_event(event)  # the redelivery publishes what is pending
    assert len(flaky.of("mailsync.message.linked")) == 1
    assert store.messages[f"{T}:{INBOX}:k-out"]["outbox"] == []


async def test_deleted_copy_is_hidden_but_a_move_is_not(linker: Linker, store: MemoryLinkStore) -> None:
    from contracts.messages import MessageDeleted, MessageDeletedData

    event = received(key="d1")
    await linker.on_message_event(event)
    other_ref = MessageRef(message_key="d1", folder="Archive", uidvalidity=1, uid=5)
    moved = MessageDeleted.build(
        data=MessageDeletedData(ref=other_ref, reason="moved"), tenant_id=T, source="/t", inbox_id=INBOX
    )
    await linker.on_message_event(moved)
    assert store.messages[f"{T}:{INBOX}:d1"]["deleted"] is False
    gone = MessageDeleted.build(
        data=MessageDeletedData(ref=event.data.ref, reason="expunged"),
        tenant_id=T,
        source="/t",
        inbox_id=INBOX,
    )
    await linker.on_message_event(gone)
    assert store.messages[f"{T}:{INBOX}:d1"]["deleted"] is True
