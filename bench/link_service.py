"""The real linker service's throughput on the real Kafka and FerretDB, one record at a time vs in batches.

Seeds a CRM directory (records and the address index, as the linker stores them) and an inbox registry,
starts `python -m services.linker` on its own database and consumer group, produces N `message received`
events (every one naming at least one directory address; some answering earlier messages) and times from
the first produced event until the last `message linked` is on `mailsync.links.v1`. Baseline, measured in
the same run on a fresh database: the same process with `MAILSYNC_LINKER_BATCH=false` (the single-record
path: about ten round trips per message).

FerretDB v1 reads a whole collection for any filter (even `_id` equality), so every figure here falls as
the collections grow; the batch path pays a few such reads per batch instead of several per message.

    .venv/bin/python bench/link_service.py [--messages 3000] [--baseline-messages 200] [--records 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymongo import AsyncMongoClient

from contracts import TOPICS
from contracts.common import Address, MessageRef
from contracts.messages import MessageReceived, MessageReceivedData

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = os.environ.get("MAILSYNC_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:39092")
MONGO_URI = os.environ.get("MAILSYNC_MONGO_URI", "mongodb://127.0.0.1:37017/")
INBOXES = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def skip_history(group: str) -> None:
    """Commit the current end of every registry topic for `group`: the run sees only its own records."""
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False)
    meta = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
    await asyncio.gather(consumer.start(), meta.start())
    try:
        parts = [TopicPartition(t.name, p) for t in TOPICS for p in sorted(await meta.partitions_for(t.name))]
        ends = await consumer.end_offsets(parts)
        consumer.assign(parts)
        await consumer.commit(dict(ends))
    finally:
        await asyncio.gather(consumer.stop(), meta.stop())


async def seed(db: Any, tenant: str, records: int) -> list[str]:
    """Directory and inbox registry as the linker (and the fetcher) store them; returns the addresses."""
    recs, addrs, emails = [], [], []
    for r in range(records):
        mine = [f"person{r}@company{r % 97}.example", f"p{r}.home@mail{r % 13}.example"]
        emails += mine
        rtype = "lead" if r % 3 == 0 else "contact"
        recs.append(
            {
                "_id": f"{tenant}:rec{r}",
                "tenant_id": tenant,
                "record_id": f"rec{r}",
                "record_type": rtype,
                "revision": 1,
                "owner_user_id": "owner",
                "name": f"Person {r}",
                "primary_email": mine[0],
                "emails": sorted(mine),
                "invalid_emails": [],
                "deleted": False,
                "relink_pending": [],
                "relink_cause": None,
            }
        )
        addrs += [
            {"_id": f"{tenant}:{e}", "tenant_id": tenant, "email": e, "record_ids": [f"rec{r}"]} for e in mine
        ]
    for i in range(0, len(recs), 1000):
        await db.crm_records.insert_many(recs[i : i + 1000])
    for i in range(0, len(addrs), 1000):
        await db.crm_addresses.insert_many(addrs[i : i + 1000])
    await db.inboxes.insert_many(
        [
            {
                "_id": f"{tenant}:inbox{i}",
                "tenant_id": tenant,
                "inbox_id": f"inbox{i}",
                "owner_user_id": f"user{i}",
                "email": f"user{i}@corp.example",
                "contact_discovery": "sent_and_received",
            }
            for i in range(INBOXES)
        ]
    )
    return emails


def messages(n: int, tenant: str, emails: Sequence[str], rng: random.Random) -> list[MessageReceived]:
    """Every message names a directory address; one in five answers an earlier message of its inbox."""
    base = datetime(2026, 6, 1, tzinfo=UTC)
    earlier: dict[int, list[str]] = {}
    out = []
    for i in range(n):
        inbox = i % INBOXES
        mid = f"m{i}.{uuid.uuid4().hex[:8]}@mail.example"
        parents = earlier.setdefault(inbox, [])
        answer = [rng.choice(parents)] if parents and rng.random() < 0.2 else []
        stranger = Address(email=f"x{rng.randrange(10**6)}@elsewhere.example")
        data = MessageReceivedData(
            ref=MessageRef(message_key=f"k{i}", folder="INBOX", uidvalidity=1, uid=i + 1),
            history=False,
            direction="inbound",
            message_id=mid,
            in_reply_to=answer,
            references=answer,
            subject=f"subject {i}",
            from_=[Address(name="Known", email=rng.choice(emails).upper())],
            to=[Address(email=f"user{inbox}@corp.example"), stranger],
            cc=[Address(email=rng.choice(emails))] if rng.random() < 0.5 else [],
            date=base + timedelta(seconds=i),
            size=2000,
        )
        out.append(
            MessageReceived.build(data=data, tenant_id=tenant, source="/bench", inbox_id=f"inbox{inbox}")
        )
        parents.append(mid)
    return out


def start_linker(database: str, prefix: str, batch: bool, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "MAILSYNC_KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP,
        "MAILSYNC_MONGO_URI": MONGO_URI,
        "MAILSYNC_MONGO_DATABASE": database,
        "MAILSYNC_KAFKA_CONSUMER_GROUP_PREFIX": prefix,
        "MAILSYNC_HTTP_PORT": str(port),
        "MAILSYNC_LINKER_BATCH": "true" if batch else "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.linker"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"linker exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"linker not ready in 60s; see {log}")


async def links_watcher() -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
    await consumer.start()
    meta = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
    await meta.start()
    try:
        parts = [
            TopicPartition("mailsync.links.v1", p)
            for p in sorted(await meta.partitions_for("mailsync.links.v1"))
        ]
    finally:
        await meta.stop()
    consumer.assign(parts)
    await consumer.seek_to_end(*parts)
    for tp in parts:
        await consumer.position(tp)
    return consumer


async def measure(n: int, records: int, batch: bool, workdir: Path) -> tuple[float, int]:
    """Messages per second from the first produced event to the last `message linked`; and the count."""
    run = uuid.uuid4().hex[:8]
    tenant, database, prefix = f"bench-{run}", f"bench_link_{run}", f"bench-{run}"
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGO_URI)
    db = mongo[database]
    rng = random.Random(2026)
    try:
        emails = await seed(db, tenant, records)
        events = messages(n, tenant, emails, rng)
        await skip_history(f"{prefix}.linker")
        proc, _ = start_linker(
            database, prefix, batch, workdir / f"linker-{'batch' if batch else 'single'}.log"
        )
        watcher = await links_watcher()
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            started = time.perf_counter()
            futures = [
                await producer.send(
                    "mailsync.messages.v1",
                    e.model_dump_json().encode(),
                    key=(e.inbox_id or "").encode(),
                    headers=[("ce_id", e.id.encode()), ("ce_type", e.type.encode())],
                )
                for e in events
            ]
            await asyncio.gather(*futures)
            wanted = {e.data.ref.message_key for e in events if e.data.ref}
            linked: set[str] = set()
            last = started
            deadline = time.monotonic() + max(120.0, n / 5)
            while linked < wanted and time.monotonic() < deadline:
                got = await watcher.getmany(timeout_ms=500)
                for recs in got.values():
                    for r in recs:
                        ev = json.loads(r.value)
                        if ev["tenant_id"] == tenant and ev["type"] == "mailsync.message.linked":
                            linked.add(ev["data"]["message_key"])
                            last = time.perf_counter()
                if proc.poll() is not None:
                    raise SystemExit(f"linker died; see {workdir}")
            took = last - started
        finally:
            await producer.stop()
            await watcher.stop()
            proc.terminate()
            proc.wait(30)
        return len(linked) / took, len(linked)
    finally:
        await mongo.drop_database(database)
        await mongo.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--baseline-messages", type=int, default=200)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--keep-logs", action="store_true", help="keep the linker logs (path printed)")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-link-"))
    try:
        print(f"directory: {args.records:,} records, {2 * args.records:,} addresses; {INBOXES} inboxes")
        if args.keep_logs:
            print(f"logs: {workdir}")
        base, base_n = 0.0, 0
        if not args.skip_baseline:
            base, base_n = await measure(args.baseline_messages, args.records, False, workdir)
            print(f"baseline (one record at a time): {base_n} messages linked, {base:,.1f} msgs/s")
        rate, n = await measure(args.messages, args.records, True, workdir)
        print(f"batched: {n} messages linked, {rate:,.1f} msgs/s")
    finally:
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    ratio = rate / base if base else float("inf")
    print(f"target >= 10x the one-record path: {'met' if ratio >= 10 else 'NOT met'}")
    print(
        f"RESULT link_service_msgs_per_s={rate:.1f} baseline_single_msgs_per_s={base:.1f} "
        f"ratio_vs_baseline={ratio:.1f} messages={n} baseline_messages={base_n} records={args.records}"
    )


if __name__ == "__main__":
    asyncio.run(main())
