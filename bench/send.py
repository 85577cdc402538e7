"""P6: send throughput of one sender process through the local Postfix, with the Sent-copy APPEND to
Dovecot.

Candidate: a real `python -m services.sender` process; N `send requested` commands are published to
Kafka at once and the clock stops when the last `sent copy stored` arrives (SMTP via Postfix submission
with STARTTLS + AUTH, `message sent` event, Message-ID search and APPEND to the Sent folder over TLS).
Baseline, measured in the same run: a bare sequential client doing the same wire work per message with
no outbox, no Kafka and no bookkeeping — aiosmtplib over one reused STARTTLS session, then one imaplib
`UID SEARCH` + `APPEND` over one reused TLS session.

With `--inboxes K` the commands are spread over K sending inboxes (one inbox: its SMTP connection and
IMAP session limits bind). The sender's fresh consumer group starts at the end of the shared topics
(what other tests left there is skipped, not timed). BENCH_PROFILE=FILE runs the sender under cProfile.

    deploy/local/stack.sh up && .venv/bin/python bench/send.py [--messages 1000] [--inboxes 1]
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata
from pymongo import AsyncMongoClient

from contracts import TOPICS, TOPICS_BY_NAME
from contracts.common import Address
from contracts.sending import SendRequested, SendRequestedData
from mailsync.credentials import Keyring, generate_key
from mailsync.inbox_record import InboxRecord, PasswordAuth, ServerSettings
from mailsync.kafka import EventPublisher, apply_topics, make_broker
from mailsync.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
STACK = Path(os.environ.get("MAILSYNC_STACK_DIR", ROOT / ".stack"))
LAB_CA = STACK / "mail" / "tls" / "cert.pem"
HOST = "127.0.0.1"
DOMAIN = os.environ.get("MAIL_DOMAIN", "mailsync.test")
IMAPS = int(os.environ.get("IMAPS_PORT", "31993"))
SUBMISSION = int(os.environ.get("SUBMISSION_PORT", "31587"))


def add_user(prefix: str) -> tuple[str, str]:
    email, password = f"{prefix}-{uuid.uuid4().hex[:8]}@{DOMAIN}", f"pw-{uuid.uuid4().hex}"
    subprocess.run(
        [str(ROOT / "deploy/local/mail.sh"), "adduser", email, password], check=True, capture_output=True
    )
    return email, password


def message(sender: str, to: str, i: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, f"baseline {i}"
    msg["Message-ID"] = f"<baseline.{uuid.uuid4().hex}@{DOMAIN}>"
    msg.set_content("A short note from the baseline client.\n" * 5)
    return msg


async def baseline(n: int, sender: str, password: str, to: str) -> float:
    ctx = ssl.create_default_context(cafile=str(LAB_CA))
    smtp = aiosmtplib.SMTP(hostname=HOST, port=SUBMISSION, start_tls=True, tls_context=ctx, timeout=30)
    await smtp.connect()
    await smtp.login(sender, password)
    imap = imaplib.IMAP4_SSL(HOST, IMAPS, ssl_context=ctx, timeout=30)
    imap.login(sender, password)
    imap.select('"Sent"', readonly=True)
    t0 = time.perf_counter()
    for i in range(n):
        msg = message(sender, to, i)
        await smtp.send_message(msg)
        await asyncio.to_thread(imap.uid, "SEARCH", "HEADER", "Message-ID", f'"{msg["Message-ID"]}"')
        raw = msg.as_bytes()
        await asyncio.to_thread(
            imap.append, '"Sent"', "(\\Seen)", imaplib.Time2Internaldate(time.time()), raw
        )
    elapsed = time.perf_counter() - t0
    await smtp.quit()
    imap.logout()
    return n / elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_sender(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    # BENCH_PROFILE=FILE: run the sender under cProfile (stats written to FILE when it stops).
    profile = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if os.environ.get("BENCH_PROFILE") else []
    proc = subprocess.Popen(
        [sys.executable, *profile, "-m", "services.sender"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"sender exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("sender not ready in 60s")


def stop_sender(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        print(f"sender did not stop within 30 s of SIGTERM; killed (log: {log})")
        proc.kill()
        proc.wait(10)


SUBSCRIBED = ("mailsync.send.commands.v1", "mailsync.messages.v1")


async def skip_backlog(bootstrap: str, group: str) -> int:
    """Commit the sender's fresh consumer group at the end of the shared topics it reads: what other
    tests left there (commands for inboxes this database does not know, synced messages) is not this
    benchmark's work. Returns how many records were skipped."""
    parts = [TopicPartition(t, p) for t in SUBSCRIBED for p in range(TOPICS_BY_NAME[t].partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        await consumer.commit({tp: OffsetAndMetadata(end, "") for tp, end in ends.items()})
    finally:
        await consumer.stop()
    return sum(ends.values())


async def wait_caught_up(bootstrap: str, group: str, limit_s: float = 600.0) -> float:
    """A fresh consumer group reads the shared topics it subscribes to (commands, and synced messages
    for the reply index) from the start: wait until the sender has worked through what was there
    before, so the clock measures only our commands. Returns seconds."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await probe.start()
    t0 = time.monotonic()
    try:
        parts = [
            TopicPartition(topic, p) for topic in SUBSCRIBED for p in range(TOPICS_BY_NAME[topic].partitions)
        ]
        ends = await probe.end_offsets(parts)
        while time.monotonic() - t0 < limit_s:
            done = await admin.list_consumer_group_offsets(group)
            if all(
                done.get(tp) is not None and done[tp].offset >= end for tp, end in ends.items() if end > 0
            ):
                break
            await asyncio.sleep(0.5)
    finally:
        await probe.stop()
        await admin.close()
    return time.monotonic() - t0


async def watch_until(
    consumer: AIOKafkaConsumer, inbox_ids: set[str], n: int, limit_s: float
) -> tuple[float | None, float | None, dict[str, int]]:
    """Seconds (monotonic) when the n-th `message sent` and n-th `sent copy stored` arrived."""
    counts: dict[str, int] = {}
    sent_at = stored_at = None
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and stored_at is None:
        batch = await consumer.getmany(timeout_ms=200)
        for records in batch.values():
            for record in records:
                event: dict[str, Any] = json.loads(record.value)
                if event.get("inbox_id") not in inbox_ids:
                    continue
                counts[event["type"]] = counts.get(event["type"], 0) + 1
                if event["type"] == "mailsync.send.message_sent" and counts[event["type"]] == n:
                    sent_at = time.monotonic()
                if event["type"] == "mailsync.send.sent_copy_stored" and counts[event["type"]] == n:
                    stored_at = time.monotonic()
    return sent_at, stored_at, counts


def inbox_record(inbox_id: str, email: str, password: str, keyring: Keyring) -> InboxRecord:
    rid = InboxRecord.key("bench", inbox_id)
    return InboxRecord(
        id=rid,
        tenant_id="bench",
        inbox_id=inbox_id,
        owner_user_id="u1",
        email=email,
        imap=ServerSettings(host=HOST, port=IMAPS, security="tls"),
        smtp=ServerSettings(host=HOST, port=SUBMISSION, security="starttls"),
        imap_auth=PasswordAuth(
            username=email, password=keyring.encrypt(password, f"{rid}:imap_auth.password")
        ),
        status="idle",
        sent_copy="always",
    )


def commands(n: int, inbox_id: str, sender: str, to: str) -> list[SendRequested]:
    return [
        SendRequested.build(
            data=SendRequestedData(
                idempotency_key=f"bench-{i}",
                from_=Address(email=sender, name="Alice Bench"),
                to=[Address(email=to)],
                subject=f"bench message {i}",
                text="A short note from the sender benchmark.\n" * 5,
            ),
            tenant_id="bench",
            inbox_id=inbox_id,
            source="/bench",
        )
        for i in range(n)
    ]


def report(
    n: int,
    *,
    t0: float,
    sent_at: float | None,
    stored_at: float | None,
    counts: dict[str, int],
    base_rate: float,
    log: Path,
    inboxes: int = 1,
) -> None:
    if stored_at is None:
        print(f"incomplete within the time limit: {counts}; sender log: {log}")
        print(f"RESULT p6_msgs_per_s=0 messages={n} complete=false")
        raise SystemExit(1)
    assert sent_at is not None
    rate = n / (stored_at - t0)
    sent_rate = n / (sent_at - t0)
    failed = counts.get("mailsync.send.failed", 0)
    print(f"({inboxes} sending inbox(es))")
    print(f"sender process ({n} msgs, Kafka → SMTP → message sent):        {sent_rate:8.1f} msgs/s")
    print(f"sender process ({n} msgs, … → Sent-copy APPEND → copy stored): {rate:8.1f} msgs/s")
    print(f"ratio sender / bare sequential client: {rate / base_rate:.2f}; failures: {failed}")
    print(
        f"RESULT p6_msgs_per_s={rate:.1f} p6_sent_msgs_per_s={sent_rate:.1f} "
        f"baseline_sequential_msgs_per_s={base_rate:.1f} ratio={rate / base_rate:.2f} "
        f"messages={n} inboxes={inboxes} target=100 pass={'true' if rate >= 100 and not failed else 'false'}"
    )


async def main(n: int, n_base: int, n_inboxes: int) -> None:
    settings = ServiceSettings(service_name="bench")
    await apply_topics(settings.kafka_bootstrap_servers, TOPICS)
    senders = [add_user("bench-alice") for _ in range(n_inboxes)]
    alice, alice_pw = senders[0]
    bob, _ = add_user("bench-bob")
    await asyncio.sleep(0.5)

    base_rate = await baseline(n_base, alice, alice_pw, bob)
    print(f"baseline (bare sequential SMTP + SEARCH + APPEND, {n_base} msgs): {base_rate:8.1f} msgs/s")

    keys = f"k1:{generate_key()}"
    run = uuid.uuid4().hex[:8]
    database = f"bench_sender_{run}"
    inbox_ids = [f"bench-{run}-{k}" for k in range(n_inboxes)]
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_uri.get_secret_value(), tz_aware=True
    )
    await mongo[database].inboxes.insert_many(
        [
            inbox_record(inbox_id, email, pw, Keyring.from_spec(keys)).model_dump(by_alias=True)
            for inbox_id, (email, pw) in zip(inbox_ids, senders, strict=True)
        ]
    )

    port = free_port()
    env = {
        **os.environ,
        "MAILSYNC_MONGO_DATABASE": database,
        "MAILSYNC_KAFKA_CONSUMER_GROUP_PREFIX": f"bench-{run}",
        "MAILSYNC_HTTP_PORT": str(port),
        "MAILSYNC_CREDENTIALS_KEYS": keys,
        "MAILSYNC_SENDER_TLS_CAFILE": str(LAB_CA),
        "MAILSYNC_SENDER_EHLO_HOSTNAME": "bench.mailsync.test",
        "MAILSYNC_LOG_LEVEL": "WARNING",
    }
    log = Path(f"/tmp/mailsync-bench-sender-{run}.log")
    skipped = await skip_backlog(settings.kafka_bootstrap_servers, f"bench-{run}.sender")
    print(f"(skipped {skipped} records other tests left in the shared topics)")
    proc = start_sender(env, port, log)
    backlog_s = await wait_caught_up(settings.kafka_bootstrap_servers, f"bench-{run}.sender")
    print(f"(sender worked through the shared topics' backlog in {backlog_s:.1f} s; not timed)")
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    broker = make_broker(settings)
    try:
        await consumer.start()
        parts = [TopicPartition("mailsync.send.events.v1", p) for p in range(12)]
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)
        for tp in parts:
            await consumer.position(tp)
        await broker.start()
        pub = EventPublisher(broker)
        # Round robin over the inboxes (one inbox: the per-inbox SMTP/IMAP connection limits bind).
        batch = [
            cmd
            for k, (inbox_id, (email, _)) in enumerate(zip(inbox_ids, senders, strict=True))
            for cmd in commands(n // n_inboxes + (k < n % n_inboxes), inbox_id, email, bob)
        ]
        t0 = time.monotonic()
        await pub.publish_all(batch)
        sent_at, stored_at, counts = await watch_until(consumer, set(inbox_ids), n, max(120.0, n / 5))
    finally:
        await consumer.stop()
        await broker.stop()
        stop_sender(proc, log)
        if not os.environ.get("BENCH_KEEP_DB"):
            await mongo.drop_database(database)
        else:
            print("kept database", database)
        await mongo.close()
    report(
        n,
        t0=t0,
        sent_at=sent_at,
        stored_at=stored_at,
        counts=counts,
        base_rate=base_rate,
        log=log,
        inboxes=n_inboxes,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--baseline", type=int, default=200)
    parser.add_argument(
        "--inboxes", type=int, default=1, help="sending inboxes (users), commands spread round robin"
    )
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.baseline, max(1, args.inboxes)))
