"""The cleanup policy end to end: real Kafka, real FerretDB, an injected clock for the sweep.

A janitor process consumes the activity and inbox events into its database (its own sweep switched
off); the tests run `Sweeper`s in-process on that database with a `ManualClock` and a real publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from contracts import parse_event
from contracts.crm import EmailOpened, EmailOpenedData, UserActive, UserActiveData
from contracts.inbox import InboxConnected, InboxConnectedData, InboxReactivated, InboxReactivatedData
from mailsync.kafka import EventPublisher, make_broker
from services.janitor.activity import ActivityClock
from services.janitor.cleanup_policy import Thresholds
from services.janitor.clock import ManualClock
from services.janitor.lease import Lease
from services.janitor.lifecycle import InboxLifecycle
from services.janitor.purge import CASES, Purger
from services.janitor.schedule import Schedule
from services.janitor.settings import DEFAULT_PURGE, JanitorSettings
from services.janitor.sweep import Sweeper
from tests.integration.conftest import TopicWatcher, eventually
from tests.integration.test_operations import scrape, total

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)


@pytest_asyncio.fixture
async def publisher(kafka_bootstrap: str) -> AsyncIterator[EventPublisher]:
    broker = make_broker(
        JanitorSettings(kafka_bootstrap_servers=kafka_bootstrap, service_name="janitor-test")
    )
    await broker.start()
    yield EventPublisher(broker)
    await broker.stop()


def sweeper(
    db: Any,
    publisher: EventPublisher,
    clock: ManualClock,
    *,
    owner: str = "test",
    warning: int = 7,
    purger: Purger | None = None,
) -> Sweeper:
    return Sweeper(
        db,
        publisher,
        clock,
        thresholds=Thresholds.days(30, 150, warning),
        schedule=Schedule(db, Thresholds.days(30, 150, warning)),
        lease=Lease(db, "sweep", owner, timedelta(minutes=2)),
        purger=purger or Purger(db, DEFAULT_PURGE, batch_size=100),
        source="/mailsync/janitor",
        batch_size=50,
    )


def connected(tenant: str, inbox: str, owner: str, at: datetime) -> InboxConnected:
    data = InboxConnectedData(connection_id=f"c-{inbox}", email=f"{inbox}@x.test", owner_user_id=owner)
    return InboxConnected.build(data=data, tenant_id=tenant, inbox_id=inbox, source="/test", time=at)


def opened(tenant: str, inbox: str, user: str, at: datetime) -> EmailOpened:
    data = EmailOpenedData(user_id=user, target=f"inbox:{inbox}", opened_at=at)
    return EmailOpened.build(data=data, tenant_id=tenant, source="/crm", subject=user)


async def seed_mail(db: Any, tenant: str, inbox: str, n: int) -> None:
    for name in ("messages", "message_bodies", "link_messages"):
        docs = [
            {"_id": f"{tenant}:{inbox}:{name}:{i}", "tenant_id": tenant, "inbox_id": inbox} for i in range(n)
        ]
        await db[name].insert_many(docs)


async def stored(db: Any, tenant: str, inbox: str) -> int:
    return sum([await db[n].count_documents({"tenant_id": tenant, "inbox_id": inbox}) for n in DEFAULT_PURGE])


def mine(stats: Any, tenant: str) -> list[tuple[str, str]]:
    """The sweep's actions on this test's tenant (the topic replays other tests' inboxes too)."""
    return [a for a in stats.actions if a[0].startswith(f"{tenant}:")]


async def settle(w: TopicWatcher, seconds: float = 2.0) -> list[dict[str, Any]]:
    """Everything the watcher sees within `seconds` (to count events, duplicates included)."""
    with contextlib.suppress(AssertionError):
        await w.wait_for(lambda e: False, timeout=seconds)
    return w.seen


def of(events: list[dict[str, Any]], tenant: str, inbox: str, kind: str) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e["tenant_id"] == tenant and e.get("inbox_id") == inbox and e["type"] == f"mailsync.inbox.{kind}"
    ]


FED = {
    "crm.activity.email_opened",
    "crm.activity.user_active",
    "mailsync.inbox.connected",
    "mailsync.inbox.reactivated",
    "mailsync.inbox.removed",
}


class Feeder:
    """Hands this test's events, read from the real topics, to the janitor's handlers in-process.

    (A janitor process would first replay every test's backlog on these topics from the earliest
    offset; reading from the end keeps the test fast. The process path is covered by the e2e tests.)
    """

    def __init__(self, tenant: str, pairs: list[tuple[TopicWatcher, Any]]) -> None:
        self.tenant = tenant
        self.pairs = pairs
        self.applied: set[str] = set()

    async def pump(self) -> None:
        for watcher, handler in self.pairs:
            with contextlib.suppress(AssertionError):
                await watcher.wait_for(lambda e: False, timeout=0.3)
            for e in list(watcher.seen):
                if e["tenant_id"] == self.tenant and e["type"] in FED and e["id"] not in self.applied:
                    await handler(parse_event(json.dumps(e)))
                    self.applied.add(e["id"])


async def test_rules_fire_at_threshold_warning_cancel_deactivate_reactivate(  # type: ignore[no-untyped-def]
    producer, watch, mongo: Mongo, publisher: EventPublisher
) -> None:
    db = mongo[f"test_janitor_rules_{uuid.uuid4().hex[:8]}"]
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    owner, idle_owner, teammate = "ann", "bob", "cid"
    events = await watch("mailsync.inbox.v1")
    schedule = Schedule(db, Thresholds.days(30, 150, 7))
    activity = ActivityClock(db, schedule)
    lifecycle = InboxLifecycle(db, activity, Purger(db, DEFAULT_PURGE))
    feeder = Feeder(tenant, [(await watch("crm.activity.v1"), activity.apply), (events, lifecycle.apply)])

    async def fed(check: Any) -> Any:
        await feeder.pump()
        return await check()

    # a: never opened (unopened rule); d: opened by a teammate, owner idle (user_inactive rule);
    # keep: another inbox whose data must survive.
    await producer(
        UserActive.build(
            data=UserActiveData(user_id=owner, active_at=T0 + 200 * DAY),
            tenant_id=tenant,
            source="/crm",
            subject=owner,
        )
    )
    await producer(
        UserActive.build(
            data=UserActiveData(user_id=idle_owner, active_at=T0),
            tenant_id=tenant,
            source="/crm",
            subject=idle_owner,
        )
    )
    for inbox, who in (("a", owner), ("d", idle_owner), ("keep", owner)):
        await producer(connected(tenant, inbox, who, T0))
    await producer(opened(tenant, "d", teammate, T0 + 140 * DAY))
    await producer(opened(tenant, "keep", owner, T0 + 200 * DAY))

    async def tracked() -> bool:
        docs = await db.inbox_activity.find({"tenant_id": tenant, "tracked": True}).to_list()
        by_id = {d["id"]: d for d in docs}
        return (
            len(by_id) == 3
            and by_id["a"].get("user_active_at") == T0 + 200 * DAY
            and by_id["d"].get("last_opened_at") == T0 + 140 * DAY
            and by_id["keep"].get("last_opened_at") == T0 + 200 * DAY
        )

    await eventually(lambda: fed(tracked))
    await seed_mail(db, tenant, "a", 120)
    await seed_mail(db, tenant, "keep", 5)
    clock = ManualClock(T0)
    sw = sweeper(db, publisher, clock)

    # The unopened rule: warning 7 days ahead of 30 days, not a second before.
    clock.set(T0 + 23 * DAY - SECOND)
    assert mine(await sw.sweep(), tenant) == []
    clock.set(T0 + 23 * DAY)
    assert mine(await sw.sweep(), tenant) == [(f"{tenant}:a", "warn")]
    warning = await events.wait_for(
        lambda e: e["tenant_id"] == tenant and e["type"] == "mailsync.inbox.deactivation_warning"
    )
    assert warning["type"] == "mailsync.inbox.deactivation_warning"
    assert warning["data"]["reason"] == "unopened"
    assert warning["data"]["deactivate_at"].startswith("2026-02-04T09:00:00")  # T0 + 30 days
    assert mine(await sw.sweep(), tenant) == []  # idempotent: the warning is not repeated

    # An open cancels the warning.
    await producer(opened(tenant, "a", owner, T0 + 25 * DAY))
    await eventually(
        lambda: fed(
            lambda: db.inbox_activity.find_one({"_id": f"{tenant}:a", "last_opened_at": T0 + 25 * DAY})
        )
    )
    clock.set(T0 + 25 * DAY)
    assert mine(await sw.sweep(), tenant) == [(f"{tenant}:a", "cancel")]
    cancel = await events.wait_for(
        lambda e: (
            e["type"].endswith("warning_cancelled") and e.get("inbox_id") == "a" and e["tenant_id"] == tenant
        )
    )
    assert cancel["data"]["deactivate_at"] == warning["data"]["deactivate_at"]
    assert await db[CASES].find_one({"_id": f"{tenant}:a"}) is None

    # Counted again from the open: warning at +48 days, deactivation at +55 days and not before.
    clock.set(T0 + 48 * DAY - SECOND)
    assert mine(await sw.sweep(), tenant) == []
    clock.set(T0 + 48 * DAY)
    assert mine(await sw.sweep(), tenant) == [(f"{tenant}:a", "warn")]
    clock.set(T0 + 55 * DAY - SECOND)
    assert mine(await sw.sweep(), tenant) == []
    assert await stored(db, tenant, "a") == 360
    clock.set(T0 + 55 * DAY)
    stats = await sw.sweep()
    assert mine(stats, tenant) == [(f"{tenant}:a", "deactivate")] and stats.purged_documents == 360
    deactivated = await events.wait_for(
        lambda e: e["type"].endswith(".deactivated") and e.get("inbox_id") == "a" and e["tenant_id"] == tenant
    )
    assert deactivated["data"]["reason"] == "unopened" and deactivated["data"]["disable_salesinbox"] is True
    assert deactivated["data"]["owner_user_id"] == owner
    assert await stored(db, tenant, "a") == 0
    assert await stored(db, tenant, "keep") == 15
    case = await db[CASES].find_one({"_id": f"{tenant}:a"})
    assert case is not None and case["status"] == "deactivated" and case["purged"] == 360

    # The user-inactive rule on d (its mail is opened, its owner idle since T0): 143 / 150 days.
    clock.set(T0 + 143 * DAY - SECOND)
    assert mine(await sw.sweep(), tenant) == []
    clock.set(T0 + 143 * DAY)
    assert mine(await sw.sweep(), tenant) == [(f"{tenant}:d", "warn")]
    clock.set(T0 + 150 * DAY - SECOND)
    assert mine(await sw.sweep(), tenant) == []
    clock.set(T0 + 150 * DAY)
    assert mine(await sw.sweep(), tenant) == [(f"{tenant}:d", "deactivate")]
    inactive = await events.wait_for(
        lambda e: e["type"].endswith(".deactivated") and e.get("inbox_id") == "d" and e["tenant_id"] == tenant
    )
    assert inactive["data"]["reason"] == "user_inactive"

    # Reactivation (as the fetcher announces it on `resume`): a fresh clock and a new generation.
    back = T0 + 160 * DAY
    rdata = InboxReactivatedData(reactivation_id=f"r-{uuid.uuid4().hex}", owner_user_id=owner)
    await producer(
        InboxReactivated.build(data=rdata, tenant_id=tenant, inbox_id="a", source="/test", time=back)
    )
    await eventually(lambda: fed(lambda: db.inbox_activity.find_one({"_id": f"{tenant}:a", "generation": 1})))
    assert await db[CASES].find_one({"_id": f"{tenant}:a"}) is None
    clock.set(back + 23 * DAY - SECOND)
    assert mine(await sw.sweep(), tenant) == []
    clock.set(back + 23 * DAY)
    assert (f"{tenant}:a", "warn") in mine(await sw.sweep(), tenant)
    seen = await settle(events, 1.0)
    assert (
        len(of(seen, tenant, "a", "deactivated")) == 1
        and len(of(seen, tenant, "keep", "deactivation_warning")) == 0
    )
    await mongo.drop_database(db.name)


async def _track(
    db: Any, tenant: str, inboxes: list[str], at: datetime, purger: Purger, *, warning: int = 7
) -> None:
    schedule = Schedule(db, Thresholds.days(30, 150, warning))
    lifecycle = InboxLifecycle(db, ActivityClock(db, schedule), purger)
    for inbox in inboxes:
        await lifecycle.fresh_start(tenant, inbox, "owner", at)


async def test_crash_mid_deletion_finishes_on_the_next_sweep(  # type: ignore[no-untyped-def]
    watch, mongo: Mongo, publisher: EventPublisher
) -> None:
    db = mongo[f"test_janitor_crash_{uuid.uuid4().hex[:8]}"]
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    events = await watch("mailsync.inbox.v1")
    batches = 0

    async def crash_after_three(collection: str, deleted: int) -> None:
        nonlocal batches
        batches += 1
        if batches == 3:
            raise ConnectionError("janitor killed mid-deletion")

    await _track(db, tenant, ["x"], T0, Purger(db, DEFAULT_PURGE), warning=0)
    await seed_mail(db, tenant, "x", 200)  # 600 documents, 100 per batch
    clock = ManualClock(T0 + 30 * DAY)
    first = sweeper(db, publisher, clock, warning=0, purger=Purger(db, DEFAULT_PURGE, 100, crash_after_three))
    with pytest.raises(ConnectionError):
        await first.sweep()
    case = await db[CASES].find_one({"_id": f"{tenant}:x"})
    assert case is not None and case["status"] == "deactivating"
    progress = await db["janitor_purges"].find_one({"_id": f"{tenant}:x"})
    assert progress is not None and progress["deleted"] == 300
    assert await stored(db, tenant, "x") == 300

    clock.advance(timedelta(minutes=1))
    stats = await sweeper(db, publisher, clock, warning=0).sweep()
    assert stats.purged_documents == 300 and stats.purged_inboxes == 1 and stats.actions == []
    assert await stored(db, tenant, "x") == 0
    case = await db[CASES].find_one({"_id": f"{tenant}:x"})
    assert case is not None and case["status"] == "deactivated" and case["purged"] == 600
    assert await db["janitor_purges"].find_one({"_id": f"{tenant}:x"}) is None
    seen = await settle(events, 2.0)
    assert len(of(seen, tenant, "x", "deactivated")) == 1  # the crash did not make it act twice
    await mongo.drop_database(db.name)


async def test_two_sweepers_at_once_act_once(  # type: ignore[no-untyped-def]
    watch, mongo: Mongo, publisher: EventPublisher
) -> None:
    db = mongo[f"test_janitor_twice_{uuid.uuid4().hex[:8]}"]
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    inboxes = [f"i{n}" for n in range(12)]
    events = await watch("mailsync.inbox.v1")
    await _track(db, tenant, inboxes, T0, Purger(db, DEFAULT_PURGE))
    clock = ManualClock(T0 + 24 * DAY)

    # Distinct owners: the lease lets one of them sweep.
    a, b = sweeper(db, publisher, clock, owner="a"), sweeper(db, publisher, clock, owner="b")
    sa, sb = await asyncio.gather(a.sweep(), b.sweep())
    assert sorted([sa.acquired, sb.acquired]) == [False, True]
    assert len(sa.actions) + len(sb.actions) == 12

    # Same owner (a lease that both believe they hold): the claims by unique id still hold, for
    # deactivations (of `inboxes`) and for warnings (of `later`, connected a week later).
    later = [f"l{n}" for n in range(6)]
    await _track(db, tenant, later, T0 + 7 * DAY, Purger(db, DEFAULT_PURGE))
    clock.set(T0 + 31 * DAY)
    c, d = sweeper(db, publisher, clock, owner="same"), sweeper(db, publisher, clock, owner="same")
    sc, sd = await asyncio.gather(c.sweep(), d.sweep())
    assert sc.acquired and sd.acquired
    acted = sorted(sc.actions + sd.actions)
    assert acted == sorted(
        [(f"{tenant}:{i}", "deactivate") for i in inboxes] + [(f"{tenant}:{i}", "warn") for i in later]
    )
    seen = await settle(events, 2.0)
    for inbox in inboxes:
        assert len(of(seen, tenant, inbox, "deactivation_warning")) == 1
        assert len(of(seen, tenant, inbox, "deactivated")) == 1
    for inbox in later:
        assert len(of(seen, tenant, inbox, "deactivation_warning")) == 1
    await mongo.drop_database(db.name)


async def test_two_janitor_processes_act_once(service, watch, mongo: Mongo) -> None:  # type: ignore[no-untyped-def]
    """Two real janitor processes sweep one database at once (real clock); each inbox is acted on once."""
    shared = f"test_janitor_pair_{uuid.uuid4().hex[:8]}"
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    inboxes = [f"p{n}" for n in range(4)]
    db = mongo[shared]
    # Tracked as the consuming replicas would have; these two only sweep (no topic backlog to replay).
    await _track(db, tenant, inboxes, datetime.now(UTC) - 40 * DAY, Purger(db, DEFAULT_PURGE), warning=0)
    await seed_mail(db, tenant, "p0", 10)
    env = {
        "MAILSYNC_MONGO_DATABASE": shared,
        "MAILSYNC_JANITOR_CONSUME_ENABLED": "false",
        "MAILSYNC_JANITOR_WARNING_DAYS": "0",
        "MAILSYNC_JANITOR_SWEEP_INTERVAL_SECONDS": "0.3",
        "MAILSYNC_JANITOR_LEASE_SECONDS": "1",
    }
    events = await watch("mailsync.inbox.v1")
    first, second = service("janitor", **env), service("janitor", **env)
    for inbox in inboxes:
        await events.wait_for(
            lambda e, i=inbox: (
                e["type"].endswith(".deactivated") and e.get("inbox_id") == i and e["tenant_id"] == tenant
            )
        )
    seen = await settle(events, 3.0)
    # Acted on once: one claim and one event id per inbox. A replica that takes over an expired lease
    # (1 s here, so a loaded machine can trigger it) republishes an unfinished claim's outbox under the
    # same id, which consumers drop; a second id would be a second action.
    assert [len({e["id"] for e in of(seen, tenant, i, "deactivated")}) for i in inboxes] == [1, 1, 1, 1]
    assert await db.janitor_actions.count_documents({}) == len(inboxes)

    async def purged() -> bool:  # the purge follows the deactivation; a loaded machine takes seconds
        return await stored(db, tenant, "p0") == 0

    await eventually(purged, timeout=60)

    async def deactivations() -> bool:  # /metrics of both: the four deactivations, counted once
        scraped = [await asyncio.to_thread(scrape, j) for j in (first, second)]
        return sum(total(m, "mailsync_janitor_actions_total", action="deactivated") for m in scraped) == 4

    await eventually(deactivations, timeout=10)
    assert first.proc.poll() is None and second.proc.poll() is None
    assert first.stop() == 0 and second.stop() == 0
    await mongo.drop_database(shared)
