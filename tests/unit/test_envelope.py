from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts import EVENT_TYPES, TOPICS, parse_event, topic_of
from contracts.common import Address, MessageRef
from contracts.crm import CrmRecordUpserted, CrmRecordUpsertedData
from contracts.envelope import EVENT_ID_NAMESPACE, uuid5_str
from contracts.messages import MessageReceived, MessageReceivedData, MessageUpdated, MessageUpdatedData
from contracts.sending import SendRequestedData


def _received(uid: int, *, subject: str = "hi", when: datetime | None = None) -> MessageReceived:
    data = MessageReceivedData(
        ref=MessageRef(message_key=f"k{uid}", folder="INBOX", uidvalidity=7, uid=uid),
        history=False,
        direction="inbound",
        size=100,
        subject=subject,
        from_=[Address(name="Ann", email="ann@example.com")],
    )
    return MessageReceived.build(data=data, tenant_id="t1", inbox_id="i1", source="/test", time=when)


def test_same_fact_gives_same_id_even_at_another_time() -> None:
    a = _received(5, when=datetime(2026, 1, 1, tzinfo=UTC))
    b = _received(5, subject="edited later", when=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=3))
    assert a.id == b.id
    assert a.id == a.expected_id()


def test_different_facts_give_different_ids() -> None:
    ids = {_received(uid).id for uid in range(200)}
    assert len(ids) == 200
    other_inbox = MessageReceived.build(data=_received(1).data, tenant_id="t1", inbox_id="i2", source="/x")
    other_tenant = MessageReceived.build(data=_received(1).data, tenant_id="t2", inbox_id="i1", source="/x")
    assert len({_received(1).id, other_inbox.id, other_tenant.id}) == 3


def test_flag_change_and_body_stored_at_one_modseq_are_two_facts() -> None:
    ref = MessageRef(message_key="k1", folder="INBOX", uidvalidity=7, uid=1)

    def updated(change: str) -> MessageUpdated:
        data = MessageUpdatedData.model_validate(
            {"ref": ref, "modseq": 42, "change": change, "flags": ["\\Seen"]}
        )
        return MessageUpdated.build(data=data, tenant_id="t1", inbox_id="i1", source="/test")

    assert updated("flags").id != updated("body").id
    assert updated("body").id == updated("body").id


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_fast_event_id_hash_is_exactly_uuid5(name: str) -> None:
    assert uuid5_str(name) == str(uuid.uuid5(EVENT_ID_NAMESPACE, name))


def test_round_trip_through_json_uses_aliases() -> None:
    event = _received(9)
    raw = event.model_dump_json()
    assert '"from":[' in raw and "from_" not in raw
    back = parse_event(raw)
    assert back == event
    assert isinstance(back, MessageReceived)


def test_parse_restricted_to_topic_rejects_foreign_types() -> None:
    raw = _received(1).model_dump_json()
    assert parse_event(raw, "mailsync.messages.v1").type == "mailsync.message.received"
    with pytest.raises(ValidationError):
        parse_event(raw, "crm.records.v1")


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"{}", b'{"type":"mailsync.nope"}', b"\xff\xfe", b'{"type":"crm.record.upserted"}'],
)
def test_bad_input_is_a_validation_error_not_a_crash(raw: bytes) -> None:
    with pytest.raises(ValidationError):
        parse_event(raw)


def test_every_event_type_is_on_exactly_one_topic_and_declares_identity() -> None:
    seen: dict[str, str] = {}
    for topic in TOPICS:
        for cls in topic.events:
            assert cls.event_type not in seen, (
                f"{cls.event_type} on {seen.get(cls.event_type)} and {topic.name}"
            )
            seen[cls.event_type] = topic.name
            assert topic_of(cls) is topic
            data_cls = cls.model_fields["data"].annotation
            assert data_cls is not None and data_cls.identity, f"{cls.event_type} has no identity fields"
            assert cls.model_fields["type"].default == cls.event_type
    assert set(seen) == set(EVENT_TYPES)


REQUIRED = {
    "mailsync.inbox.connected",
    "mailsync.inbox.syncing",
    "mailsync.inbox.initial_sync_completed",
    "mailsync.inbox.auth_failed",
    "mailsync.inbox.connect_failed",
    "mailsync.inbox.throttled",
    "mailsync.inbox.paused",
    "mailsync.inbox.deactivation_warning",
    "mailsync.inbox.deactivated",
    "mailsync.inbox.reactivated",
    "mailsync.inbox.removed",
    "mailsync.message.received",
    "mailsync.message.updated",
    "mailsync.message.deleted",
    "mailsync.message.linked",
    "mailsync.message.link_changed",
    "mailsync.message.reply_received",
    "mailsync.message.auto_reply_received",
    "mailsync.message.bounce_received",
    "mailsync.contact.discovered",
    "mailsync.send.requested",
    "mailsync.send.message_sent",
    "mailsync.send.failed",
    "mailsync.send.sent_copy_stored",
    "mailsync.send.sent_copy_failed",
    "crm.record.upserted",
    "crm.record.deleted",
    "crm.activity.email_opened",
    "crm.activity.user_active",
}


def test_the_catalog_covers_the_required_events() -> None:
    assert set(EVENT_TYPES) >= REQUIRED


def test_per_inbox_topics_refuse_events_without_inbox_id() -> None:
    data = CrmRecordUpsertedData(record_id="r", record_type="lead", revision=1, owner_user_id="u")
    record = CrmRecordUpserted.build(data=data, tenant_id="t", source="/t")  # no subject
    with pytest.raises(ValueError, match="subject"):
        topic_of(record).key_for(record)
    keyed = CrmRecordUpserted.build(data=data, tenant_id="t", source="/t", subject="r")
    assert topic_of(keyed).key_for(keyed) == b"r"
    msg = _received(1)
    assert topic_of(msg).key_for(msg) == b"i1"


def test_send_command_needs_a_recipient() -> None:
    with pytest.raises(ValidationError, match="recipient"):
        SendRequestedData(idempotency_key="k", from_=Address(email="a@b.c"))
    ok = SendRequestedData(idempotency_key="k", from_=Address(email="a@b.c"), to=[Address(email="d@e.f")])
    assert ok.model_dump(by_alias=True)["from"]["email"] == "a@b.c"


def test_naive_time_is_refused() -> None:
    raw = _received(1).model_dump(mode="json")
    raw["time"] = "2026-01-01T00:00:00"
    with pytest.raises(ValidationError):
        MessageReceived.model_validate(raw)
