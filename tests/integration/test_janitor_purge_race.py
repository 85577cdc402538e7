"""The purge of a deactivated inbox against a reactivation, on the real FerretDB (and a real publisher):
documents stored after the deactivation survive it, a reactivation mid-purge stops it (the fetcher's
registry or the janitor's new generation), and a purge resumed after a crash keeps the deactivation
as its bound."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from mailsync.kafka import EventPublisher, make_broker
from services.janitor.activity import ActivityClock
from services.janitor.cleanup_policy import Thresholds
from services.janitor.clock import ManualClock
from services.janitor.lifecycle import InboxLifecycle
from services.janitor.purge import CASES, PURGES, REGISTRY, Purger
from services.janitor.schedule import Schedule
from services.janitor.settings import DEFAULT_PURGE, JanitorSettings
from tests.integration.test_janitor_cleanup import DAY, T0, sweeper

pytestmark = pytest.mark.integration
Mongo = AsyncMongoClient[dict[str, Any]]
D = T0 + 30 * DAY  # every test's inbox is connected at T0 and deactivated (unopened, no warning) at D
SECOND = timedelta(seconds=1)
SEEDED = ("messages", "message_bodies", "link_messages")


@pytest_asyncio.fixture
async def publisher(kafka_bootstrap: str) -> AsyncIterator[EventPublisher]:
    broker = make_broker(
        JanitorSettings(kafka_bootstrap_servers=kafka_bootstrap, service_name="janitor-purge-test")
    )
    await broker.start()
    yield EventPublisher(broker)
    await broker.stop()


@pytest_asyncio.fixture
async def db(mongo: Mongo) -> AsyncIterator[Any]:
    database = mongo[f"test_janitor_purge_{uuid.uuid4().hex[:8]}"]
    yield database
    await mongo.drop_database(database.name)


def lifecycle_of(db: Any, purger: Purger) -> InboxLifecycle:
    return InboxLifecycle(db, ActivityClock(db, Schedule(db, Thresholds.days(30, 150, 0))), purger)


async def seed(db: Any, tenant: str, inbox: str, label: str, n: int, *, at: datetime | None) -> set[str]:
    """`n` documents in each seeded collection, stamped `at` onwards (None: no stamp); their ids."""
    ids: set[str] = set()
    for name in SEEDED:
        docs = []
        for i in range(n):
            doc: dict[str, Any] = {
                "_id": f"{tenant}:{inbox}:{name}:{label}:{i}",
                "tenant_id": tenant,
                "inbox_id": inbox,
            }
            if at is not None:
                doc["stored_at"] = at + i * SECOND
            docs.append(doc)
        await db[name].insert_many(docs)
        ids.update(d["_id"] for d in docs)
    return ids


async def left(db: Any, tenant: str, inbox: str) -> set[str]:
    found: set[str] = set()
    for name in DEFAULT_PURGE:
        found.update(
            [d["_id"] async for d in db[name].find({"tenant_id": tenant, "inbox_id": inbox}, {"_id": 1})]
        )
    return found


async def test_documents_stored_after_the_deactivation_survive_its_purge(  # type: ignore[no-untyped-def]
    db, publisher: EventPublisher
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    purger = Purger(db, DEFAULT_PURGE, batch_size=50)
    await lifecycle_of(db, purger).fresh_start(tenant, "x", "owner", T0)
    old = await seed(db, tenant, "x", "old", 120, at=D - timedelta(hours=2))  # synced before: deleted
    unstamped = await seed(db, tenant, "x", "unstamped", 30, at=None)  # a writer that stamps nothing: older
    at_d = await seed(db, tenant, "x", "at", 5, at=D)  # stored at the deactivation instant: kept
    after = await seed(db, tenant, "x", "after", 40, at=D + SECOND)  # the resync's: kept
    other = await seed(db, tenant, "y", "other", 20, at=D - DAY)  # another inbox: untouched

    stats = await sweeper(db, publisher, ManualClock(D), warning=0, purger=purger).sweep()

    assert [a for a in stats.actions if a[0].startswith(tenant)] == [(f"{tenant}:x", "deactivate")]
    assert stats.purged_documents == len(old) + len(unstamped) == 450
    assert await left(db, tenant, "x") == at_d | after
    assert await left(db, tenant, "y") == other
    case = await db[CASES].find_one({"_id": f"{tenant}:x"})
    assert case is not None and case["status"] == "deactivated" and case["purged"] == 450
    assert case["deactivated_at"] == D and "purge_stopped" not in case
    assert await db[PURGES].find_one({"_id": f"{tenant}:x"}) is None


async def test_a_resume_mid_purge_stops_it_and_the_resynced_mail_stays(  # type: ignore[no-untyped-def]
    db, publisher: EventPublisher
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    key = f"{tenant}:x"
    resumed_at = D + 5 * SECOND
    resynced: set[str] = set()
    batches: list[tuple[str, int]] = []

    async def resume_after_first_batch(collection: str, deleted: int) -> None:
        """What the fetcher does on `resume` while the janitor is purging: the registry records the
        resync request, then the resync stores documents (same id scheme, stamped now)."""
        batches.append((collection, deleted))
        if len(batches) == 1:
            await db[REGISTRY].update_one(
                {"_id": key},
                {"$set": {"status": "connecting", "resync_requested_at": resumed_at}},
                upsert=True,
            )
            resynced.update(await seed(db, tenant, "x", "resync", 25, at=resumed_at + SECOND))

    purger = Purger(db, DEFAULT_PURGE, batch_size=40, on_batch=resume_after_first_batch)
    lifecycle = lifecycle_of(db, purger)
    await lifecycle.fresh_start(tenant, "x", "owner", T0)
    # A manual resync long before the deactivation: no reason to stop.
    await db[REGISTRY].insert_one({"_id": key, "status": "idle", "resync_requested_at": T0 + DAY})
    old = await seed(db, tenant, "x", "old", 100, at=D - DAY)

    stats = await sweeper(db, publisher, ManualClock(D), warning=0, purger=purger).sweep()

    assert batches == [("messages", 40)]  # stopped before its second batch
    assert stats.purged_documents == 40
    kept = await left(db, tenant, "x")
    assert resynced <= kept and len(kept) == len(old) - 40 + len(resynced)
    case = await db[CASES].find_one({"_id": key})
    assert case is not None and case["status"] == "deactivated" and case["purge_stopped"] == "reactivated"
    assert await db[PURGES].find_one({"_id": key}) is None

    # The janitor then consumes `reactivated`: the case is closed, the inbox starts a new generation,
    # and later sweeps delete nothing of it.
    await lifecycle.fresh_start(tenant, "x", "owner", resumed_at)
    assert await db[CASES].find_one({"_id": key}) is None
    activity = await db.inbox_activity.find_one({"_id": key})
    assert activity is not None and activity["generation"] == 1
    later = await sweeper(db, publisher, ManualClock(D + DAY), warning=0, purger=purger).sweep()
    assert later.purged_documents == 0 and await left(db, tenant, "x") == kept


async def test_the_janitors_own_reactivation_stops_a_purge_under_way(  # type: ignore[no-untyped-def]
    db, publisher: EventPublisher
) -> None:
    """No registry sign here (the janitor consumed `reactivated` before the fetcher's registry write was
    visible): the new generation the lifecycle writes stops the sweep's purge at its next batch."""
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    key = f"{tenant}:c"
    batches: list[str] = []
    lifecycles: list[InboxLifecycle] = []

    async def reactivate_after_first_batch(collection: str, deleted: int) -> None:
        batches.append(collection)
        if len(batches) == 1:
            await lifecycles[0].fresh_start(tenant, "c", "owner", D + 3 * SECOND)

    purger = Purger(db, DEFAULT_PURGE, batch_size=30, on_batch=reactivate_after_first_batch)
    lifecycles.append(lifecycle_of(db, purger))
    await lifecycles[0].fresh_start(tenant, "c", "owner", T0)
    old = await seed(db, tenant, "c", "old", 50, at=D - DAY)

    stats = await sweeper(db, publisher, ManualClock(D), warning=0, purger=purger).sweep()

    assert batches == ["messages"] and stats.purged_documents == 30
    kept = await left(db, tenant, "c")
    assert len(kept) == len(old) - 30 and kept <= old
    assert await db[CASES].find_one({"_id": key}) is None  # closed by the reactivation
    assert stats.purged_inboxes == 0
    assert await db[PURGES].find_one({"_id": key}) is None
    activity = await db.inbox_activity.find_one({"_id": key})
    assert activity is not None and activity["generation"] == 1


async def test_a_purge_resumed_after_a_crash_keeps_the_deactivation_as_its_bound(  # type: ignore[no-untyped-def]
    db, publisher: EventPublisher
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:6]}"
    key = f"{tenant}:k"
    batches = 0

    async def crash_after_two(collection: str, deleted: int) -> None:
        nonlocal batches
        batches += 1
        if batches == 2:
            raise ConnectionError("janitor killed mid-deletion")

    purger = Purger(db, DEFAULT_PURGE, batch_size=30, on_batch=crash_after_two)
    await lifecycle_of(db, purger).fresh_start(tenant, "k", "owner", T0)
    old = await seed(db, tenant, "k", "old", 50, at=D - DAY)
    with pytest.raises(ConnectionError):
        await sweeper(db, publisher, ManualClock(D), warning=0, purger=purger).sweep()
    case = await db[CASES].find_one({"_id": key})
    assert case is not None and case["status"] == "deactivating" and case["deactivated_at"] == D
    assert len(await left(db, tenant, "k")) == len(old) - 50

    # Mail stored after the deactivation (the last minute of sync before the fetcher stopped, say);
    # the next sweep, two hours later, resumes the purge: bounded by D, not by its own start.
    tail = await seed(db, tenant, "k", "tail", 10, at=D + timedelta(minutes=1))
    resumed = await sweeper(
        db, publisher, ManualClock(D + timedelta(hours=2)), warning=0, purger=Purger(db, DEFAULT_PURGE, 30)
    ).sweep()
    assert resumed.purged_documents == len(old) - 50 and resumed.purged_inboxes == 1
    assert await left(db, tenant, "k") == tail
    case = await db[CASES].find_one({"_id": key})
    assert case is not None and case["status"] == "deactivated" and case["purged"] == len(old)
