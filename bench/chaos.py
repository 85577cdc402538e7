"""Chaos run (issue #9): all four services under a supervisor on a private stack, SIGKILLs and restarts.

    make chaos            # or: .venv/bin/python bench/chaos.py
    CHAOS_MESSAGES=3000 CHAOS_WINDOW=240 make chaos      # smaller and quicker

1. A private stack instance (`bench/chaoslib.py`: own dir `/tmp/cx`, own ports 24xxx), wiped first.
2. Seeds `CHAOS_INBOXES` (4) Dovecot inboxes with `CHAOS_MESSAGES` (20,000) messages in all
   (MULTIAPPEND), from `CHAOS_CUSTOMERS` (400) customer addresses; registers the inboxes in the fetcher's
   registry.
3. CRM records (`crm.records.v1`) for `CHAOS_RECORDS` (300) customers and the send recipients, applied
   by the linker before the inboxes are registered, and `CHAOS_MOVED` (3) address changes during the
   chaos, which must move links.
4. Starts fetcher, linker, sender and janitor under `deploy/local/supervise.py` and, during
   `CHAOS_WINDOW` seconds (300) while initial sync, linking and `CHAOS_SENDS` (200) send commands (10% of
   them published twice) run: SIGKILLs a random service `CHAOS_KILLS` (20) times at random moments, and
   restarts Kafka, FerretDB and Dovecot once each.
5. Waits until everything settled (stores complete, Postfix queue empty, zero consumer lag; at most
   `CHAOS_TIMEOUT`, 2400 s), then compares against the mailboxes:
   - fetcher store vs IMAP UIDs (INBOX and Sent of every inbox): every message stored exactly once;
   - `message received` on `mailsync.messages.v1`: at least one per IMAP message;
   - linker store vs links expected from the final CRM records and each message's From/To/Cc;
   - every send: handed to SMTP once (Postfix queue ids per Message-ID in Postfix's log), delivered to
     its recipient's mailbox and one copy in the Sent folder (counted by `X-Mailsync-Send-Id`).
Ends with `RESULT lost=… duplicates=… sends_duplicated=… kills=… restarts=…`.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter, defaultdict
from typing import Any

from chaoslib import (
    DOMAIN,
    SERVICES,
    TENANT,
    Instance,
    MailItem,
    Producer,
    consumer_lag,
    customer,
    imap_append,
    imap_inventory,
    inbox_doc,
    log,
    new_keys,
    read_topic,
    record_event,
    run_main,
    run_tag,
    seed_message,
    send_command,
    send_id,
    smtp_submissions,
)
from pymongo import AsyncMongoClient
from supervise import Supervisor


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


N_MSGS = env_int("CHAOS_MESSAGES", 20000)
N_INBOXES = env_int("CHAOS_INBOXES", 4)
N_CUSTOMERS = env_int("CHAOS_CUSTOMERS", 400)
N_RECORDS = env_int("CHAOS_RECORDS", 300)
N_SENDS = env_int("CHAOS_SENDS", 200)
N_RCPT = 4
N_KILLS = env_int("CHAOS_KILLS", 20)
WINDOW = float(os.environ.get("CHAOS_WINDOW", "300"))
TIMEOUT = float(os.environ.get("CHAOS_TIMEOUT", "2400"))
SEED = env_int("CHAOS_SEED", int(time.time()))
MOVED = env_int("CHAOS_MOVED", 3)  # records whose address changes during the chaos

# Faster recovery than production defaults, so 20 kills fit in one run (same code paths).
SERVICE_TUNING = {
    "fetcher": {
        "MAILSYNC_FETCHER_SYNC_LEASE_SECONDS": "10",
        "MAILSYNC_FETCHER_SYNC_SCAN_INTERVAL_SECONDS": "2",
        "MAILSYNC_FETCHER_SYNC_BACKOFF_CAP_SECONDS": "10",
        "MAILSYNC_FETCHER_SYNC_COMMAND_TIMEOUT_SECONDS": "60",
    },
    "sender": {
        "MAILSYNC_SENDER_LEASE_SECONDS": "30",
        "MAILSYNC_SENDER_BACKOFF_BASE_SECONDS": "1",
        "MAILSYNC_SENDER_BACKOFF_MAX_SECONDS": "10",
        "MAILSYNC_SENDER_MAX_ATTEMPTS": "40",
        "MAILSYNC_SENDER_COPY_MAX_ATTEMPTS": "40",
        "MAILSYNC_SENDER_SMTP_TIMEOUT_SECONDS": "20",
        "MAILSYNC_SENDER_IMAP_TIMEOUT_SECONDS": "20",
    },
    "linker": {},
    "janitor": {},
}


class Run:
    def __init__(self) -> None:
        self.inst = Instance()
        self.rng = random.Random(SEED)
        self.tag = run_tag()
        self.inboxes = [(f"chaos-in{k}", f"in{k}@{DOMAIN}", f"pw-in{k}-{self.tag}") for k in range(N_INBOXES)]
        self.rcpts = [(f"rcpt{k}@{DOMAIN}", f"pw-rcpt{k}-{self.tag}") for k in range(N_RCPT)]
        self.sends: list[tuple[str, str, str]] = []  # (inbox_id, idempotency key, recipient)
        self.events: list[str] = []
        self.infra_restarts: Counter[str] = Counter()
        self.mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.inst.mongo_uri, tz_aware=True)
        self.db = self.mongo["mailsync"]

    # ---- expected state ---------------------------------------------------------------------------
    def records(self, wave: int) -> list[Any]:
        """Wave 1 (before the services start): every record. Wave 2 (during the chaos): address
        changes, each relinking the history of two addresses. (A relink costs ~40 s per record on
        FerretDB with a few thousand stored messages, see docs/reliability.md, so wave 2 stays small.)"""
        if wave == 1:
            out = [record_event(f"rec-{c}", customer(c)) for c in range(N_RECORDS)]
            return out + [record_event(f"rec-r{k}", email) for k, (email, _) in enumerate(self.rcpts)]
        # address changes: rec-c moves from customer c to an unlinked customer
        return [record_event(f"rec-{c}", customer(N_RECORDS + c), revision=2) for c in range(MOVED)]

    def record_map(self) -> dict[str, set[str]]:
        emails: dict[str, set[str]] = defaultdict(set)
        for c in range(N_RECORDS):
            emails[customer(N_RECORDS + c if c < MOVED else c)].add(f"rec-{c}")
        for k, (email, _) in enumerate(self.rcpts):
            emails[email].add(f"rec-r{k}")
        return emails

    def seed_messages(self, first: int, n: int, to: str) -> list[bytes]:
        return [seed_message(first + i, self.tag, to, N_CUSTOMERS) for i in range(n)]

    # ---- phases -----------------------------------------------------------------------------------
    async def setup(self) -> tuple[Producer, Supervisor]:
        log(f"stack instance {self.inst.stack_dir} (ports {self.inst.base}+), wiping it first")
        self.inst.lock()
        await asyncio.to_thread(self.inst.prepare, fresh=True)
        for _, email, pw in self.inboxes:
            await asyncio.to_thread(self.inst.adduser, email, pw)
        for email, pw in self.rcpts:
            await asyncio.to_thread(self.inst.adduser, email, pw)
        t = time.monotonic()
        per = N_MSGS // N_INBOXES
        counts = await asyncio.gather(
            *(
                asyncio.to_thread(
                    imap_append,
                    self.inst.ports["IMAP_PORT"],
                    email,
                    pw,
                    self.seed_messages(k * per, per, email),
                )
                for k, (_, email, pw) in enumerate(self.inboxes)
            )
        )
        log(f"seeded {sum(counts)} messages into {N_INBOXES} inboxes in {time.monotonic() - t:.1f}s")
        keys, keyring = new_keys()
        producer = Producer(self.inst.bootstrap)
        await producer.start()
        await producer.publish(self.records(1))
        children = {name: self.inst.service_env(name, keys, SERVICE_TUNING[name]) for name in SERVICES}
        sup = Supervisor(children, self.inst.stack_dir / "services-chaos")
        await sup.start_all()
        log("all four services ready")
        # The directory first, then the inboxes: on FerretDB the linker's record path slows to tens of
        # seconds per record while it links thousands of messages (docs/reliability.md), so records
        # arriving together with the initial sync would take hours. The address changes still come
        # during the chaos.
        t = time.monotonic()
        want = N_RECORDS + N_RCPT
        while await self.db["crm_records"].count_documents({}) < want:
            if time.monotonic() - t > 600:
                raise SystemExit(f"the linker did not apply {want} CRM records in 600 s")
            await asyncio.sleep(2)
        log(f"linker applied {want} CRM records in {time.monotonic() - t:.0f}s; registering the inboxes")
        await self.db["inboxes"].insert_many(
            [inbox_doc(iid, email, pw, keyring, self.inst) for iid, email, pw in self.inboxes]
        )
        return producer, sup

    async def send_stream(self, producer: Producer) -> None:
        gap = WINDOW * 0.8 / max(1, N_SENDS)
        repeats = []
        for i in range(N_SENDS):
            iid, email, _ = self.inboxes[i % N_INBOXES]
            to = self.rcpts[i % N_RCPT][0]
            key = f"chaos-{self.tag}-{i}"
            self.sends.append((iid, key, to))
            cmd = send_command(key, iid, email, to)
            await producer.publish([cmd])
            if self.rng.random() < 0.1:
                repeats.append(cmd)
            if repeats and self.rng.random() < 0.2:
                await producer.publish([repeats.pop()])  # the same command again: must not send twice
            await asyncio.sleep(gap)
        for cmd in repeats:
            await producer.publish([cmd])

    async def kills(self, sup: Supervisor, t0: float) -> None:
        moments = sorted(self.rng.uniform(5, WINDOW) for _ in range(N_KILLS))
        for at in moments:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            name = self.rng.choice(SERVICES)
            while sup.pid(name) is None:  # noqa: ASYNC110 (still restarting from the last kill)
                await asyncio.sleep(0.2)
            sup.kill(name)
            self.events.append(f"{time.monotonic() - t0:6.1f}s SIGKILL {name}")

    async def infra(self, t0: float) -> None:
        plan = [
            (WINDOW * self.rng.uniform(0.15, 0.3), "kafka", self.inst.restart_kafka),
            (WINDOW * self.rng.uniform(0.4, 0.55), "ferretdb", self.inst.restart_ferretdb),
            (WINDOW * self.rng.uniform(0.65, 0.8), "dovecot", self.inst.restart_dovecot),
        ]
        for at, name, fn in plan:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            started = time.monotonic()
            await asyncio.to_thread(fn)
            self.infra_restarts[name] += 1
            self.events.append(
                f"{started - t0:6.1f}s restart {name} (back after {time.monotonic() - started:.1f}s)"
            )

    async def records_wave2(self, producer: Producer, t0: float) -> None:
        await asyncio.sleep(max(0.0, t0 + WINDOW * 0.35 - time.monotonic()))
        await producer.publish(self.records(2))
        self.events.append(f"{time.monotonic() - t0:6.1f}s CRM records: {MOVED} address changes")

    # ---- checks -----------------------------------------------------------------------------------
    def inventory(self) -> tuple[dict[tuple[str, str], list[MailItem]], dict[str, list[MailItem]]]:
        port = self.inst.ports["IMAP_PORT"]
        boxes = {
            (iid, folder): imap_inventory(port, email, pw, folder)
            for iid, email, pw in self.inboxes
            for folder in ("INBOX", "Sent")
        }
        rcpt = {email: imap_inventory(port, email, pw, "INBOX") for email, pw in self.rcpts}
        return boxes, rcpt

    async def settled(self) -> tuple[bool, str]:
        await asyncio.to_thread(self.inst.postfix_flush)
        boxes, rcpt = await asyncio.to_thread(self.inventory)
        imap_total = sum(len(v) for v in boxes.values())
        stored = await self.db["messages"].count_documents({"tenant_id": TENANT, "deleted": False})
        linked = await self.db["link_messages"].count_documents(
            {"tenant_id": TENANT, "link_version": {"$ne": None}}
        )
        pending_links = await self.db["link_messages"].count_documents(
            {"tenant_id": TENANT, "link_version": None}
        )
        delivered = len({m.send_id for ms in rcpt.values() for m in ms if m.send_id})
        copies = len({m.send_id for (_, f), ms in boxes.items() if f == "Sent" for m in ms if m.send_id})
        queue_empty = await asyncio.to_thread(self.inst.postfix_queue_empty)
        lag = await consumer_lag(self.inst.bootstrap, [f"mailsync.{s}" for s in SERVICES])
        state = (
            f"imap={imap_total} stored={stored} link_docs_settled={linked} unsettled={pending_links} "
            f"delivered={delivered}/{N_SENDS} sent_copies={copies}/{N_SENDS} "
            f"postfix_queue_empty={queue_empty} consumer_lag={lag}"
        )
        done = (
            stored >= imap_total
            and linked >= imap_total
            and pending_links == 0
            and delivered >= N_SENDS
            and copies >= N_SENDS
            and queue_empty
            and not any(lag.values())
        )
        return done, state

    async def verify(self) -> dict[str, int]:
        boxes, rcpt = await asyncio.to_thread(self.inventory)
        res: Counter[str] = Counter()
        # 1. fetcher store vs IMAP
        docs: dict[tuple[str, str, int], int] = Counter()
        async for d in self.db["messages"].find(
            {"tenant_id": TENANT, "deleted": False}, {"inbox_id": 1, "folder": 1, "uid": 1}
        ):
            docs[(d["inbox_id"], d["folder"], d["uid"])] += 1
        imap_keys = {(iid, f, m.uid) for (iid, f), ms in boxes.items() for m in ms}
        res["imap_messages"] = len(imap_keys)
        res["store_missing"] = len(imap_keys - set(docs))
        res["store_duplicates"] = sum(n - 1 for n in docs.values()) + len(set(docs) - imap_keys)
        # 2. message received events
        received: dict[tuple[str, str, int], set[str]] = defaultdict(set)
        for e in await read_topic(self.inst.bootstrap, "mailsync.messages.v1"):
            if e.get("type") == "mailsync.message.received" and e.get("tenant_id") == TENANT:
                ref = e["data"]["ref"]
                received[(e["inbox_id"], ref["folder"], ref["uid"])].add(e["id"])
        rejected = len(await read_topic(self.inst.bootstrap, "mailsync.rejected.v1"))
        res["events_missing"] = len(imap_keys - set(received))
        res["events_distinct_ids_gt1"] = sum(1 for k in imap_keys if len(received.get(k, ())) > 1)
        res["rejected_records"] = rejected
        # 3. links: expected from the final records and the IMAP headers
        rmap = self.record_map()
        expected: dict[str, set[str]] = {}
        for ms in boxes.values():
            for m in ms:
                if m.message_id:
                    want: set[str] = set()
                    for a in m.addresses:
                        want |= rmap.get(a, set())
                    expected[m.message_id] = want
        actual: dict[str, set[str]] = defaultdict(set)
        async for d in self.db["link_messages"].find(
            {"tenant_id": TENANT}, {"message_id": 1, "record_ids": 1}
        ):
            mid = (d.get("message_id") or "").strip("<> ")
            actual[mid] |= set(d.get("record_ids") or [])
        res["links_expected"] = sum(len(v) for v in expected.values())
        res["links_missing"] = sum(len(v - actual.get(k, set())) for k, v in expected.items())
        res["links_wrong"] = sum(len(actual.get(k, set()) - v) for k, v in expected.items())
        res["link_docs_missing"] = sum(1 for k in expected if k not in actual)
        # 4. sends
        deliveries = Counter(m.send_id for ms in rcpt.values() for m in ms if m.send_id)
        copies = Counter(m.send_id for (_, f), ms in boxes.items() if f == "Sent" for m in ms if m.send_id)
        submitted = smtp_submissions(self.inst.stack_dir / "mail" / "log" / "postfix.log")
        for iid, key, _ in self.sends:
            sid = send_id(iid, key)
            d, c, s = deliveries.get(sid, 0), copies.get(sid, 0), submitted.get(sid, 0)
            res["sends_lost"] += d == 0
            # Sent twice = handed to Postfix twice (SMTP submissions, by queue id in Postfix's log).
            res["sends_duplicated"] += max(0, s - 1)
            # A delivery beyond the submissions is the lab's Postfix → Dovecot LMTP hop retrying
            # (Dovecot saved the mail, then answered 421 while shutting down): not a mailsync send.
            res["mta_redeliveries"] += max(0, d - max(1, s))
            res["sent_copy_missing"] += c == 0
            res["sent_copy_duplicated"] += max(0, c - 1)
        res["sends"] = len(self.sends)
        return dict(res)


async def main() -> None:
    run = Run()
    log(
        f"chaos: {N_MSGS} messages in {N_INBOXES} inboxes, {N_RECORDS} CRM records, {N_SENDS} sends, "
        f"{N_KILLS} SIGKILLs + Kafka/FerretDB/Dovecot restarts in a {WINDOW:.0f}s window, seed {SEED}"
    )
    producer, sup = await run.setup()
    t0 = time.monotonic()
    try:
        await asyncio.gather(
            run.send_stream(producer), run.kills(sup, t0), run.infra(t0), run.records_wave2(producer, t0)
        )
        log(f"chaos window over after {time.monotonic() - t0:.0f}s; waiting for everything to settle")
        for line in run.events:
            print("   ", line)
        deadline = t0 + TIMEOUT
        state, done = "", False
        while time.monotonic() < deadline:
            try:
                done, state = await run.settled()
            except Exception as exc:  # a check racing a restart: try again
                done, state = False, f"check failed: {exc!r}"
            log(state)
            if done:
                break
            await asyncio.sleep(15)
        settle_s = time.monotonic() - t0
        await asyncio.sleep(5)  # let in-flight outbox flushes land before reading the topics
        res = await run.verify()
    finally:
        await sup.stop_all()
        await producer.stop()
        await run.mongo.close()
        if not os.environ.get("CHAOS_KEEP_STACK"):
            await asyncio.to_thread(run.inst.down)
    kills, restarts = sup.kills, sup.restarts
    infra = sum(run.infra_restarts.values())
    lost = res["store_missing"] + res["events_missing"] + res["links_missing"] + res["sends_lost"]
    lost += res["sent_copy_missing"]
    dups = res["store_duplicates"] + res["links_wrong"] + res["sent_copy_duplicated"]
    print()
    print(f"{'check':52} {'value':>8}")
    rows = [
        ("IMAP messages (INBOX + Sent of every inbox)", res["imap_messages"]),
        ("fetcher store: IMAP messages not stored", res["store_missing"]),
        ("fetcher store: extra/duplicate documents", res["store_duplicates"]),
        ("message received: IMAP messages without an event", res["events_missing"]),
        ("message received: messages with >1 distinct event id", res["events_distinct_ids_gt1"]),
        ("links expected (final CRM records x participants)", res["links_expected"]),
        ("links missing in the linker store", res["links_missing"]),
        ("links wrong (present, not expected)", res["links_wrong"]),
        ("messages without a linker document", res["link_docs_missing"]),
        ("send commands (distinct)", res["sends"]),
        ("sends never delivered", res["sends_lost"]),
        ("sends submitted to SMTP more than once (extra)", res["sends_duplicated"]),
        ("extra deliveries by Postfix→Dovecot LMTP retries", res["mta_redeliveries"]),
        ("sends without a Sent copy", res["sent_copy_missing"]),
        ("extra Sent copies", res["sent_copy_duplicated"]),
        ("records on mailsync.rejected.v1", res["rejected_records"]),
        ("service SIGKILLs", kills),
        ("service restarts by the supervisor", restarts),
        ("Kafka / FerretDB / Dovecot restarts", infra),
        ("seconds from first chaos to settled", int(settle_s)),
    ]
    for name, value in rows:
        print(f"{name:52} {value:>8}")
    exits = {n: c.exits for n, c in sup.children.items()}
    print(f"exit codes seen by the supervisor: {exits}")
    print(
        f"RESULT lost={lost} duplicates={dups} sends_duplicated={res['sends_duplicated']} kills={kills} "
        f"restarts={restarts + infra} mta_redeliveries={res['mta_redeliveries']} "
        f"messages={res['imap_messages']} sends={res['sends']} "
        f"settle_s={settle_s:.0f} settled={'true' if done else 'false'}"
    )


if __name__ == "__main__":
    run_main(main())
