"""Publishing throughput of `EventPublisher` against the real local Kafka.

Baseline: `publish` one event at a time (one acknowledged round trip each).
Candidate: `publish_all` (pipelined sends, one wait for all acknowledgements).
Prints events/s for both and the ratio, measured in the same run.

    deploy/local/stack.sh up kafka && .venv/bin/python bench/publish.py [--events 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from contracts import TOPICS
from contracts.common import Address, MessageRef
from contracts.messages import MessageReceived, MessageReceivedData
from mailsync.kafka import EventPublisher, apply_topics, make_broker
from mailsync.settings import ServiceSettings


def events(n: int, inbox: str) -> list[MessageReceived]:
    return [
        MessageReceived.build(
            data=MessageReceivedData(
                ref=MessageRef(message_key=f"{inbox}-{i}", folder="INBOX", uidvalidity=1, uid=i),
                history=True,
                direction="inbound",
                size=820,
                subject=f"message {i}",
                from_=[Address(name="Ann", email="ann@example.com")],
                to=[Address(email="bob@example.com")],
            ),
            tenant_id="bench",
            inbox_id=inbox,
            source="/bench",
        )
        for i in range(n)
    ]


async def main(n: int) -> None:
    settings = ServiceSettings(service_name="bench")
    await apply_topics(settings.kafka_bootstrap_servers, TOPICS)
    broker = make_broker(settings)
    await broker.start()
    try:
        pub = EventPublisher(broker)
        warm = events(200, "warmup")
        await pub.publish_all(warm)

        base = events(min(n, 2000), f"seq-{uuid.uuid4().hex[:6]}")
        t0 = time.perf_counter()
        for e in base:
            await pub.publish(e)
        seq_rate = len(base) / (time.perf_counter() - t0)

        batch = events(n, f"pipe-{uuid.uuid4().hex[:6]}")
        t0 = time.perf_counter()
        for i in range(0, len(batch), 500):
            await pub.publish_all(batch[i : i + 500])
        pipe_rate = len(batch) / (time.perf_counter() - t0)
    finally:
        await broker.stop()
    print(f"publish one at a time : {seq_rate:10.0f} events/s ({len(base)} events)")
    print(f"publish_all (500/call): {pipe_rate:10.0f} events/s ({len(batch)} events)")
    print(f"ratio                 : {pipe_rate / seq_rate:10.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10000)
    asyncio.run(main(parser.parse_args().events))
