"""What a record published by `EventPublisher` looks like on the real Kafka: keyed by inbox, the event id
in `ce_id` and as FastStream's correlation id (the same on a replay), the event as the JSON value, in
order, whichever of `publish` and `publish_all` sent it."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from opentelemetry.sdk.trace import TracerProvider

from contracts import topic_of
from contracts.common import MessageRef
from contracts.messages import MessageReceived, MessageReceivedData
from mailsync.kafka import EventPublisher, make_broker
from mailsync.settings import ServiceSettings
from tests.integration.conftest import consumer_at_end

pytestmark = pytest.mark.integration


def received(inbox: str, uid: int) -> MessageReceived:
    data = MessageReceivedData(
        ref=MessageRef(message_key=f"m:{inbox}-{uid}", folder="INBOX", uidvalidity=1, uid=uid),
        history=False,
        direction="inbound",
        size=100,
    )
    return MessageReceived.build(data=data, tenant_id="t1", inbox_id=inbox, source="/test")


@pytest.mark.parametrize("path", ["producer", "faststream"])
async def test_records_carry_the_event_id_as_ce_id_and_correlation_id(
    kafka_bootstrap: str, path: str
) -> None:
    inbox = f"i-{uuid.uuid4().hex[:8]}"
    events = [received(inbox, uid) for uid in (1, 2, 3)]
    topic = topic_of(events[0])
    key = topic.key_for(events[0])
    # Where aiokafka's default partitioner puts this key: our records must land there too.
    probe = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await probe.start()
    try:
        expected_partition = (await probe.send_and_wait(topic.name, b"probe", key=key)).partition
    finally:
        await probe.stop()
    consumer = await consumer_at_end(kafka_bootstrap, topic.name)
    # With a tracer provider FastStream's middleware must see each record, so FastStream publishes;
    # without one the publisher sends through aiokafka's producer itself.
    provider = TracerProvider() if path == "faststream" else None
    settings = ServiceSettings(service_name="test", kafka_bootstrap_servers=kafka_bootstrap)
    broker = make_broker(settings, tracer_provider=provider)
    await broker.start()
    try:
        publisher = EventPublisher(broker)
        await publisher.publish_all(events[:2])
        await publisher.publish(events[2])
        await publisher.publish(events[2])  # a replay: same id, same correlation id
        mine: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(30):
            while len(mine) < 4:
                batch = await consumer.getmany(timeout_ms=500)
                mine += [r for records in batch.values() for r in records if r.key == key]
        assert {r.partition for r in mine} == {expected_partition}
        ids = [e.id for e in events] + [events[2].id]
        assert [json.loads(r.value)["id"] for r in mine] == ids, "in order, the event as the value"
        for record, event_id in zip(mine, ids, strict=True):
            headers = {k: v.decode() for k, v in record.headers}
            assert headers["ce_id"] == event_id
            assert headers["correlation_id"] == event_id
            assert headers["ce_type"] == "mailsync.message.received"
            assert headers["content-type"] == "application/cloudevents+json"
    finally:
        await broker.stop()
        await consumer.stop()
