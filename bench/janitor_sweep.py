"""Cleanup sweep over many inboxes against the real local FerretDB and Kafka.

Builds N tracked inboxes (default 100,000) in a scratch database, as the janitor's consumers leave
them: most recently opened and active, 1% whose warning window opened within the last hour, 0.1%
whose warning has run out (each with stored mail to delete). Then measures, in the same run:

- baseline "naive full scan": read every inbox whole and ask the policy about each one (no writes);
- the janitor's sweep (`Sweeper.sweep`: bulk warnings, claimed deactivations with batched deletion,
  events published to Kafka) in its default incremental mode (`MAILSYNC_JANITOR_INCREMENTAL`): the
  database also holds what the activity consumers leave for it (the hourly schedule buckets, the
  users' inbox lists) and a checkpoint from a sweep an hour ago; the sweep reads only the due buckets
  and the inboxes they name, by `_id` (an index lookup on FerretDB v1 only when built with
  deploy/local/ferretdb.sh's _id-index patch; unpatched, each lookup scans the collection); then a
  second incremental sweep right after;
- with `--full-mode`, also the full-scan sweep (the fallback: first sweep, changed thresholds, long
  gap) on a second scratch database, and a second one right after.

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
from services.janitor.activity import INBOX_ACTIVITY, USER_ACTIVITY
from services.janitor.cleanup_policy import InboxFacts, Thresholds, decide
from services.janitor.clock import ManualClock
from services.janitor.lease import Lease
from services.janitor.purge import CASES, Purger
from services.janitor.schedule import SCHEDULE, Schedule, bucket_id, hour_of
from services.janitor.settings import DEFAULT_PURGE, JanitorSettings
from services.janitor.sweep import Sweeper, SweepStats

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


async def build_schedule(db: Any, n: int, now: datetime, th: Thresholds) -> None:
    """What ActivityClock (with the schedule) leaves: hourly buckets and each user's inboxes."""
    buckets: dict[str, set[str]] = {}
    users = []
    for i in range(n):
        doc = inbox_doc(i, now)
        opened, active = doc["last_opened_at"], doc["user_active_at"]
        assert isinstance(opened, datetime) and isinstance(active, datetime)
        buckets.setdefault(bucket_id(hour_of(opened + th.unopened - th.warning)), set()).add(
            f"i:bench:{doc['id']}"
        )
        buckets.setdefault(bucket_id(hour_of(active + th.inactive - th.warning)), set()).add(
            f"u:bench:{doc['owner_user_id']}"
        )
        users.append(
            {
                "_id": f"bench:{doc['owner_user_id']}",
                "tenant_id": "bench",
                "id": doc["owner_user_id"],
                "last_active_at": active,
                "inboxes": [doc["id"]],
            }
        )
    for start in range(0, n, 2000):
        await db[USER_ACTIVITY].insert_many(users[start : start + 2000], ordered=False)
    await db[SCHEDULE].insert_many([{"_id": b, "m": sorted(m)} for b, m in buckets.items()])
    await Schedule(db, th).set_checkpoint(hour_of(now) - 1)  # the previous sweep ran an hour ago


def make_sweeper(db: Any, broker: Any, now: datetime, th: Thresholds, *, incremental: bool) -> Sweeper:
    return Sweeper(
        db,
        EventPublisher(broker),
        ManualClock(now),
        thresholds=th,
        lease=Lease(db, "sweep", "bench", timedelta(minutes=5)),
        purger=Purger(db, DEFAULT_PURGE, batch_size=500),
        source="/mailsync/janitor",
        schedule=Schedule(db, th) if incremental else None,
        batch_size=1000,
    )


async def timed_sweeps(sweeper: Sweeper) -> tuple[SweepStats, float, SweepStats, float]:
    t0 = time.perf_counter()
    stats = await sweeper.sweep()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = await sweeper.sweep()
    return stats, first, again, time.perf_counter() - t0


async def main(n: int, full_mode: bool) -> None:
    settings = JanitorSettings(service_name="bench-janitor")
    await apply_topics(settings.kafka_bootstrap_servers, TOPICS)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        settings.mongo_uri.get_secret_value(), tz_aware=True
    )
    run = uuid.uuid4().hex[:8]
    db = client[f"bench_janitor_{run}"]
    full_db = client[f"bench_janitor_full_{run}"]
    now = datetime.now(UTC).replace(microsecond=0)
    th = Thresholds.days(30, 150, 7)
    broker = make_broker(settings)
    await broker.start()
    full: tuple[SweepStats, float, SweepStats, float] | None = None
    try:
        t0 = time.perf_counter()
        await build(db, n, now, th)
        await build_schedule(db, n, now, th)
        setup = time.perf_counter() - t0

        t0 = time.perf_counter()
        naive_actions = 0
        async for doc in db[INBOX_ACTIVITY].find({}, batch_size=2000):
            facts = InboxFacts(doc["baseline_at"], doc.get("last_opened_at"), doc.get("user_active_at"))  # type: ignore[arg-type]
            naive_actions += decide(facts, None, now, th).action != "none"
        naive = time.perf_counter() - t0

        stats, first, again, second = await timed_sweeps(make_sweeper(db, broker, now, th, incremental=True))
        left = await db["messages"].count_documents({})
        if full_mode:
            await build(full_db, n, now, th)
            full = await timed_sweeps(make_sweeper(full_db, broker, now, th, incremental=False))
            left += await full_db["messages"].count_documents({})
    finally:
        await broker.stop()
        await client.drop_database(db.name)
        await client.drop_database(full_db.name)
        await client.close()

    print(f"inboxes                      : {n:>10,}   (setup {setup:.1f} s)")
    print(
        f"baseline: naive full scan + policy : {naive:8.2f} s  "
        f"({n / naive:,.0f} inboxes/s, {naive_actions} due)"
    )
    print(
        f"sweep ({stats.mode:<11})        : {first:8.2f} s  (examined {stats.examined}, warned "
        f"{stats.warned}, deactivated {stats.deactivated}, deleted {stats.purged_documents} documents)"
    )
    print(f"second sweep (nothing new)   : {second:8.2f} s  (acted {len(again.actions)}, {again.mode})")
    if full is not None:
        fs, ff, fa, fsec = full
        print(
            f"full-scan sweep (fallback)   : {ff:8.2f} s  (examined {fs.examined}, warned {fs.warned}, "
            f"deactivated {fs.deactivated}); again: {fsec:.2f} s (acted {len(fa.actions)})"
        )
    print(
        f"target {TARGET_SECONDS:.0f} s; ratio naive scan / sweep: {naive / first:.2f}x; "
        f"stored mail left: {left}"
    )
    ok = first < TARGET_SECONDS and left == 0 and not again.actions
    extra = f"full_sweep_s={full[1]:.2f} " if full is not None else ""
    print(
        f"RESULT inboxes={n} sweep_s={first:.2f} mode={stats.mode} second_sweep_s={second:.2f} "
        f"naive_scan_s={naive:.2f} {extra}"
        f"ratio={naive / first:.2f} warned={stats.warned} deactivated={stats.deactivated} "
        f"target_s={TARGET_SECONDS:.0f} pass={'yes' if ok else 'no'}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--inboxes", type=int, default=100_000)
    parser.add_argument("--full-mode", action="store_true", help="also time the full-scan sweep")
    args = parser.parse_args()
    asyncio.run(main(args.inboxes, args.full_mode))
