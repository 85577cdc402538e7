"""Cleanup sweep over many inboxes against the real local FerretDB and Kafka.

Builds N tracked inboxes (default 100,000) in a scratch database, as the janitor's consumers leave
them: most recently opened and active, 1% whose warning window opened within the last hour, 0.1%
whose warning has run out (each with stored mail to delete). Then measures, in the same run:

- baseline "naive full scan": read every inbox whole and ask the policy about each one (no writes);
- the janitor's sweep as configured by default on FerretDB (`Sweeper.sweep` with one projected pass,
  bulk warnings, claimed deactivations with batched deletion, events published to Kafka);
- a second sweep right after (idempotent: nothing left to do).

The schedule-driven incremental mode (`MAILSYNC_JANITOR_INCREMENTAL`) is not measured here: on
FerretDB v1 every `_id` lookup scans the table, so it only pays off on MongoDB.

    deploy/local/stack.sh up kafka ferretdb && .venv/bin/python bench/janitor_sweep.py [--inboxes 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import AsyncMongoClient

from contracts import TOPICS
from mailsync.kafka import EventPublisher, apply_topics, make_broker
from services.janitor.activity import INBOX_ACTIVITY
from services.janitor.cleanup_policy import InboxFacts, Thresholds, decide
from services.janitor.clock import ManualClock
from services.janitor.lease import Lease
from services.janitor.purge import CASES, Purger
from services.janitor.settings import DEFAULT_PURGE, JanitorSettings
from services.janitor.sweep import Sweeper

DAY = timedelta(days=1)
TARGET_SECONDS = 10.0
MAIL_PER_DEACTIVATED = 5


def inbox_doc(i: int, now: datetime) -> dict[str, object]:
    if i % 1000 == 1:  # warned a week ago, warning ran out now
        opened, active = now - 31 * DAY, now - 31 * DAY
    elif i % 100 == 0:  # the 7-day warning window of the 30-day rule opened half an hour ago
        opened, active = now - 23 * DAY - timedelta(minutes=30), now - 2 * DAY
    else:
        opened, active = now - (i % 10) * DAY, now - (i % 30) * DAY
    baseline = now - 400 * DAY
    return {
        "_id": f"bench:i{i:07d}",
        "tenant_id": "bench",
        "id": f"i{i:07d}",
        "owner_user_id": f"u{i:07d}",
        "tracked": True,
        "generation": 0,
        "baseline_at": baseline,
        "last_opened_at": opened,
        "user_active_at": active,
        "opened_ref": max(opened, baseline),
        "active_ref": max(active, baseline),
    }


async def build(db: Any, n: int, now: datetime, th: Thresholds) -> None:
    """The scratch database as the janitor's consumers and earlier sweeps would have left it."""
    docs = [inbox_doc(i, now) for i in range(n)]
    for start in range(0, n, 2000):
        await db[INBOX_ACTIVITY].insert_many(docs[start : start + 2000], ordered=False)
    due = [d for i, d in enumerate(docs) if i % 1000 == 1]
    await db[CASES].insert_many(
        [
            {
                "_id": d["_id"],
                "tenant_id": "bench",
                "inbox_id": d["id"],
                "owner_user_id": d["owner_user_id"],
                "generation": 0,
                "status": "warned",
                "reason": "unopened",
                "deactivate_at": now - DAY,
                "warned_at": now - 8 * DAY,
                "outbox": [],
            }
            for d in due
        ]
    )
    mail = [
        {"_id": f"{d['_id']}:{k}", "tenant_id": "bench", "inbox_id": d["id"]}
        for d in due
        for k in range(MAIL_PER_DEACTIVATED)
    ]
    await db["messages"].insert_many(mail)


async def main(n: int) -> None:
    settings = JanitorSettings(service_name="bench-janitor")
    await apply_topics(settings.kafka_bootstrap_servers, TOPICS)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        settings.mongo_uri.get_secret_value(), tz_aware=True
    )
    db = client[f"bench_janitor_{uuid.uuid4().hex[:8]}"]
    now = datetime.now(UTC).replace(microsecond=0)
    th = Thresholds.days(30, 150, 7)
    broker = make_broker(settings)
    await broker.start()
    try:
        t0 = time.perf_counter()
        await build(db, n, now, th)
        setup = time.perf_counter() - t0

        t0 = time.perf_counter()
        naive_actions = 0
        async for doc in db[INBOX_ACTIVITY].find({}, batch_size=2000):
            facts = InboxFacts(doc["baseline_at"], doc.get("last_opened_at"), doc.get("user_active_at"))  # type: ignore[arg-type]
            naive_actions += decide(facts, None, now, th).action != "none"
        naive = time.perf_counter() - t0

        sweeper = Sweeper(
            db,  # type: ignore[arg-type]
            EventPublisher(broker),
            ManualClock(now),
            thresholds=th,
            lease=Lease(db, "sweep", "bench", timedelta(minutes=5)),  # type: ignore[arg-type]
            purger=Purger(db, DEFAULT_PURGE, batch_size=500),  # type: ignore[arg-type]
            source="/mailsync/janitor",
            batch_size=1000,
        )
        t0 = time.perf_counter()
        stats = await sweeper.sweep()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = await sweeper.sweep()
        second = time.perf_counter() - t0
        left = await db["messages"].count_documents({})
    finally:
        await broker.stop()
        await client.drop_database(db.name)
        await client.close()

    print(f"inboxes                      : {n:>10,}   (setup {setup:.1f} s)")
    print(
        f"naive full scan + policy     : {naive:10.2f} s  ({n / naive:,.0f} inboxes/s, {naive_actions} due)"
    )
    print(
        f"sweep ({stats.mode:<11})          : {first:10.2f} s  ({n / first:,.0f} inboxes/s; examined "
        f"{stats.examined}, warned {stats.warned}, deactivated {stats.deactivated}, "
        f"deleted {stats.purged_documents} documents)"
    )
    print(f"second sweep (nothing to do) : {second:10.2f} s  (acted {len(again.actions)}, {again.mode})")
    print(f"ratio naive scan / sweep     : {naive / first:10.2f}x   stored mail left: {left}")
    ok = first < TARGET_SECONDS and left == 0 and not again.actions
    print(
        f"RESULT inboxes={n} sweep_s={first:.2f} second_sweep_s={second:.2f} "
        f"naive_scan_s={naive:.2f} "
        f"ratio={naive / first:.2f} warned={stats.warned} deactivated={stats.deactivated} "
        f"target_s={TARGET_SECONDS:.0f} pass={'yes' if ok else 'no'}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--inboxes", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().inboxes))
