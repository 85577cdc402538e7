"""P2: delivery → `message received` on Kafka, with N idle inboxes on one fetcher, against Dovecot's floor.

The bench's own mail lab (bench/biglab.py: /tmp/cb5, ports 41xxx, limits raised) gets N users; one
fetcher process syncs all N inboxes (INBOX + Sent each: two IDLE connections per inbox). Once every
inbox finished its initial sync, mail is delivered over LMTP (Dovecot's own delivery path, what Postfix
uses) to sampled inboxes:
- spread: one message every `--spacing` seconds, each to another random inbox;
- burst: `--burst` messages, one every 100 ms, to the same inbox.
For each message the bench times, from the end of the LMTP transaction (mail stored):
- ours: until the fetcher's `message received` event is read from Kafka (consumer polls with a 5 ms
  wait, so this includes the read);
- floor: until a raw IDLE client of the bench, on the same mailbox, sees `* N EXISTS` — the
  server's own notification latency, measured in the same run.
overhead = ours - floor per message (`overhead_p99_ms`: its p99); also p99(ours) - p99(floor). The raw
client is another session: Dovecot notifies the two at slightly different moments, which widens the
per-message difference both ways (negative values occur).

    .venv/bin/python bench/latency.py [--inboxes 1000] [--messages 200] [--burst 50]

The fetcher's store defaults to the shared FerretDB; `--mongo` (or BENCH_MONGO_URI) points it at one of
the bench's own, e.g. `ferretdb -listen-addr 127.0.0.1:41017 -sqlite-dir /tmp/cb5/fdb`, when other
work loads the shared one (every store round trip of the wake path then waits on theirs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import smtplib
import statistics
import sys
import time
import uuid
from email.utils import formatdate
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

import biglab


class FloorClient:
    """A raw IDLE client: timestamps every `* N EXISTS` on one mailbox."""

    def __init__(self, email: str, password: str) -> None:
        self.email = email
        self.password = password
        self.exists: list[tuple[float, int]] = []  # (time, message count)
        self.delivered = 0
        self.event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", biglab.PORTS["IMAP_PORT"])
        self._writer = writer
        await reader.readline()
        writer.write(f'a LOGIN "{self.email}" "{self.password}"\r\nb EXAMINE INBOX\r\nc IDLE\r\n'.encode())
        while True:
            line = await reader.readline()
            if line.startswith(b"+"):
                break
            if line.startswith((b"a NO", b"b NO", b"c NO", b"a BAD", b"b BAD", b"c BAD")):
                raise RuntimeError(f"floor client: {line!r}")
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            parts = line.split()
            if len(parts) == 3 and parts[0] == b"*" and parts[2] == b"EXISTS":
                self.exists.append((time.perf_counter(), int(parts[1])))
                self.event.set()

    def floor_time(self, nth: int) -> float:
        """When this client first saw the mailbox hold `nth` messages (EXISTS may cover several)."""
        return next((t for t, n in self.exists if n >= nth), float("nan"))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self._writer:
            self._writer.close()


def message(token: str, to: str) -> bytes:
    return (
        f"From: Latency Bench <bench@example.com>\r\nTo: {to}\r\nSubject: latency {token}\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: <{token}@bench.example>\r\n\r\nhello {token}\r\n"
    ).encode()


def deliver(lmtp: smtplib.LMTP, to: str, raw: bytes) -> None:
    lmtp.sendmail("bench@example.com", [to], raw)


class KafkaTimes:
    """Reads mailsync.messages.v1 from its end; perf_counter time of each bench token's received event."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.initial: set[str] = set()
        self.read_lag_ms: list[float] = []  # wall clock at read - the record's CreateTime
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        consumers = []
        for topic in ("mailsync.messages.v1", "mailsync.inbox.v1"):
            c = AIOKafkaConsumer(
                bootstrap_servers=biglab.KAFKA, enable_auto_commit=False, fetch_max_wait_ms=5
            )
            await c.start()
            meta = AIOKafkaProducer(bootstrap_servers=biglab.KAFKA)
            await meta.start()
            try:
                parts = [TopicPartition(topic, p) for p in sorted(await meta.partitions_for(topic))]
            finally:
                await meta.stop()
            c.assign(parts)
            await c.seek_to_end(*parts)
            for tp in parts:
                await c.position(tp)
            consumers.append(c)
        self._consumers = consumers
        self._tasks = [
            asyncio.create_task(self._read(consumers[0], self._on_message)),
            asyncio.create_task(self._read(consumers[1], self._on_inbox)),
        ]

    def _on_message(self, event: dict[str, object], now: float) -> None:
        if event.get("type") != "mailsync.message.received":
            return
        data = event.get("data")
        if isinstance(data, dict):
            mid = str(data.get("message_id") or "")
            if mid.endswith("@bench.example>") or mid.endswith("@bench.example"):
                token = mid.strip("<>").split("@", 1)[0]
                self.seen.setdefault(token, now)

    def _on_inbox(self, event: dict[str, object], now: float) -> None:
        if event.get("type") == "mailsync.inbox.initial_sync_completed":
            self.initial.add(str(event.get("inbox_id")))

    async def _read(self, consumer: AIOKafkaConsumer, handle: object) -> None:
        assert callable(handle)
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batches.values():
                for r in records:
                    try:
                        handle(json.loads(r.value or b"{}"), now)
                        self.read_lag_ms.append(time.time() * 1000 - r.timestamp)
                    except ValueError:
                        continue

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for c in self._consumers:
            await c.stop()


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


async def wait_until(cond: object, limit: float, what: str) -> None:
    assert callable(cond)
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def measure(args: argparse.Namespace) -> int:  # noqa: PLR0915
    biglab.MONGO = args.mongo  # read by start_fetcher too
    ca = biglab.start_lab(args.inboxes * (1 if args.inbox_only else 2) + 200)
    inboxes = biglab.make_users(args.inboxes)
    kafka = KafkaTimes()
    await kafka.start()
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(biglab.MONGO)
    fetcher = await biglab.start_fetcher(
        inboxes,
        ca,
        MAILSYNC_FETCHER_SYNC_SCAN_INTERVAL_SECONDS=str(args.scan_interval),
        MAILSYNC_FETCHER_SYNC_LEASE_SECONDS=str(max(60.0, args.scan_interval * 4)),
        MAILSYNC_FETCHER_SYNC_IDLE_RESTART_SECONDS="1500",
    )
    floors: list[FloorClient] = []
    try:
        db = mongo[fetcher.database]
        records = inboxes.records(args.security, ["INBOX"] if args.inbox_only else None)
        started = time.perf_counter()
        # Onboarded in waves: FerretDB on SQLite (the local store) answers SQLITE_BUSY when a
        # thousand initial syncs write at once; MongoDB would not need this.
        for i in range(0, len(records), args.wave):
            wave = records[i : i + args.wave]
            await db["inboxes"].insert_many(wave)
            wanted = {r["inbox_id"] for r in wave}
            await wait_until(
                lambda w=wanted: w <= kafka.initial or fetcher.proc.poll() is not None,
                args.startup_timeout,
                "every inbox's initial sync",
            )
            if fetcher.proc.poll() is not None:
                raise RuntimeError(f"fetcher exited: see {fetcher.log}")
        ready_s = time.perf_counter() - started
        print(f"{args.inboxes} inboxes synced and idling after {ready_s:.1f}s", flush=True)
        await asyncio.sleep(args.settle)  # IDLE is entered right after each folder's pass
        rss = fetcher.rss_mb()

        targets = random.Random(7).sample(range(args.inboxes), min(args.targets, args.inboxes))
        floor_by: dict[int, FloorClient] = {}
        for i in targets:
            fc = FloorClient(inboxes.emails[i], inboxes.password)
            await fc.start()
            floor_by[i] = fc
            floors.append(fc)
        lmtp = smtplib.LMTP("127.0.0.1", biglab.PORTS["LMTP_PORT"])
        lmtp.ehlo("bench")
        rows: list[tuple[str, float, float]] = []  # (phase, ours_ms, floor_ms)

        async def one(i: int, phase: str, gap: float) -> None:
            token = f"{phase}-{uuid.uuid4().hex[:12]}"
            fc = floor_by[i]
            fc.delivered += 1
            nth = fc.delivered
            raw = message(token, inboxes.emails[i])
            await asyncio.to_thread(deliver, lmtp, inboxes.emails[i], raw)
            t0 = time.perf_counter()
            await asyncio.sleep(gap)
            pending.append((phase, token, fc, nth, t0))

        pending: list[tuple[str, str, FloorClient, int, float]] = []
        rng = random.Random(11)
        for _ in range(args.messages):
            await one(rng.choice(targets), "spread", args.spacing)
        burst_target = targets[0]
        for _ in range(args.burst):
            await one(burst_target, "burst", 0.1)
        await asyncio.sleep(3)
        await wait_until(
            lambda: all(p[1] in kafka.seen for p in pending), 60, "every delivered message on Kafka"
        )
        # Floor: when that mailbox's raw IDLE client first saw the message count reach it.
        for phase, token, fc, nth, t0 in pending:
            floor_t = fc.floor_time(nth)
            rows.append((phase, (kafka.seen[token] - t0) * 1000, (floor_t - t0) * 1000))
        lmtp.quit()
    finally:
        for fc in floors:
            await fc.stop()
        fetcher.stop()
        await kafka.stop()
        await mongo.drop_database(fetcher.database)
        await mongo.close()
        if not args.keep_users:
            biglab.remove_users(inboxes)

    print(
        f"\n{'phase':8} {'n':>5} {'ours p50':>9} {'ours p99':>9} {'floor p50':>10} {'floor p99':>10} "
        f"{'overhead p50':>13} {'overhead p99':>13}"
    )
    for phase in ("spread", "burst", "all"):
        sel = [r for r in rows if phase in ("all", r[0])]
        ours = [r[1] for r in sel]
        floor = [r[2] for r in sel if r[2] == r[2]]
        over = [r[1] - r[2] for r in sel if r[2] == r[2]]
        print(
            f"{phase:8} {len(sel):5d} {pct(ours, 50):9.0f} {pct(ours, 99):9.0f} {pct(floor, 50):10.0f} "
            f"{pct(floor, 99):10.0f} {pct(over, 50):13.0f} {pct(over, 99):13.0f}"
        )
    ours = [r[1] for r in rows]
    floor = [r[2] for r in rows if r[2] == r[2]]
    over = [r[1] - r[2] for r in rows if r[2] == r[2]]
    print(
        f"\nfetcher RSS {rss:.0f} MB with {args.inboxes} idle inboxes; "
        f"mean ours {statistics.mean(ours):.0f} ms, mean floor {statistics.mean(floor):.0f} ms"
    )
    print(
        f"RESULT p50_ms={pct(ours, 50):.0f} p99_ms={pct(ours, 99):.0f} floor_p99_ms={pct(floor, 99):.0f} "
        f"overhead_p99_ms={pct(over, 99):.0f} overhead_p50_ms={pct(over, 50):.0f} "
        f"p99_minus_floor_p99_ms={pct(ours, 99) - pct(floor, 99):.0f} inboxes={args.inboxes} "
        f"messages={len(rows)}"
    )
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inboxes", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=200, help="spread deliveries")
    ap.add_argument("--burst", type=int, default=50, help="deliveries 100 ms apart to one inbox")
    ap.add_argument("--spacing", type=float, default=0.25)
    ap.add_argument(
        "--targets", type=int, default=50, help="inboxes that receive mail (each with a floor client)"
    )
    ap.add_argument("--security", choices=["starttls", "plain"], default="starttls")
    ap.add_argument("--inbox-only", action="store_true", help="sync INBOX only (one connection per inbox)")
    ap.add_argument("--scan-interval", type=float, default=15.0)
    ap.add_argument("--startup-timeout", type=float, default=900.0)
    ap.add_argument("--wave", type=int, default=100, help="inboxes registered at a time")
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--keep-users", action="store_true")
    ap.add_argument(
        "--mongo",
        default=os.environ.get("BENCH_MONGO_URI", biglab.MONGO),
        help="the fetcher's store; a FerretDB of the bench's own keeps other users' load out of the figures",
    )
    args = ap.parse_args()
    sys.exit(asyncio.run(measure(args)))


if __name__ == "__main__":
    main()
