"""The cleanup sweep: periodic, incremental, idempotent, one replica at a time.

Each sweep
1. takes the lease (`lease.py`); without it, it does nothing;
2. finishes what an earlier sweep left half-done: events still in a case's outbox are published again
   (same deterministic ids, so consumers drop duplicates) and interrupted deletions resume;
3. reads only the candidate inboxes — those the schedule (`schedule.py`) lists for the hours since
   the last sweep, plus those with an open warning; without a usable checkpoint, one pass over all
   inboxes whose precomputed references are old enough — and asks the pure policy
   (`cleanup_policy.decide`) what to do.

Per-inbox state of the janitor lives in a small `janitor_cases` collection (one document per inbox
that has a warning or was deactivated). FerretDB's `update_one` is not an atomic compare-and-set
(two concurrent conditional updates can both match), but a unique `_id` is enforced atomically, so
every action is claimed by an `insert_one` under a deterministic id: a warning by inserting the case
(one per inbox), a cancellation or deactivation by inserting a `janitor_actions` document. Only the
replica whose insert wins acts, so even two sweeps that overlapped (say, after a lease expired in a
long pause) never act twice on one inbox. The claim carries the event and the change: it is the
outbox. Publishing and applying it are idempotent, and an unfinished claim is redone next sweep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from contracts import Envelope, parse_event
from contracts.inbox import (
    DeactivationWarningCancelledData,
    DeactivationWarningData,
    InboxDeactivated,
    InboxDeactivatedData,
    InboxDeactivationWarning,
    InboxDeactivationWarningCancelled,
)
from mailsync.kafka import EventPublisher
from mailsync.store import Document, insert_new

from .activity import INBOX_ACTIVITY, USER_ACTIVITY
from .cleanup_policy import Case, Decision, InboxFacts, Thresholds, decide
from .clock import Clock
from .lease import Lease
from .purge import CASES, Purger
from .purge_policy import purge_bound
from .schedule import SCHEDULE, Schedule, bucket_id, fingerprint, hour_of

log = logging.getLogger("mailsync.janitor.sweep")

ACTIONS = "janitor_actions"
LOOKUPS_IN_FLIGHT = 32  # concurrent `_id` lookups of an incremental sweep
DEACTIVATIONS_IN_FLIGHT = 8  # inboxes deactivated (claimed, announced, purged) at once

FIELDS = {
    "_id": 1,
    "tenant_id": 1,
    "id": 1,
    "owner_user_id": 1,
    "baseline_at": 1,
    "last_opened_at": 1,
    "user_active_at": 1,
    "generation": 1,
}


@dataclass
class SweepStats:
    acquired: bool = False
    examined: int = 0
    warned: int = 0
    cancelled: int = 0
    deactivated: int = 0
    purged_inboxes: int = 0
    purged_documents: int = 0
    republished: int = 0
    lost_lease: bool = False
    mode: str = ""
    actions: list[tuple[str, str]] = field(default_factory=list)


def facts_of(doc: Document) -> InboxFacts:
    return InboxFacts(
        baseline_at=doc["baseline_at"],
        last_opened_at=doc.get("last_opened_at"),
        user_active_at=doc.get("user_active_at"),
    )


def case_of(doc: Document | None) -> Case | None:
    if doc is None or doc.get("status") not in ("warned", "deactivating", "deactivated"):
        return None
    return Case(doc["status"], doc["reason"], doc["deactivate_at"])


class Sweeper:
    def __init__(
        self,
        db: AsyncDatabase[Document],
        publisher: EventPublisher,
        clock: Clock,
        *,
        thresholds: Thresholds,
        lease: Lease,
        purger: Purger,
        source: str,
        schedule: Schedule | None = None,
        batch_size: int = 1000,
        max_gap_hours: int = 45 * 24,
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._clock = clock
        self.th = thresholds
        self._lease = lease
        self._purger = purger
        self._source = source
        self._batch_size = batch_size
        self._schedule = schedule
        self._max_gap_hours = max_gap_hours

    @property
    def cases(self) -> Any:
        return self._db[CASES]

    async def ensure_indexes(self) -> None:
        await self._db[INBOX_ACTIVITY].create_index([("tenant_id", 1), ("owner_user_id", 1)])

    async def sweep(self) -> SweepStats:
        stats = SweepStats()
        now = self._clock.now()
        if not await self._lease.acquire(now):
            return stats
        stats.acquired = True
        open_cases = {c["_id"]: c for c in await self.cases.find({}).to_list()}
        await self._finish_pending(open_cases, stats)
        warned = [k for k, c in open_cases.items() if c.get("status") == "warned"]
        now_hour = hour_of(now)
        cp = await self._schedule.checkpoint() if self._schedule is not None else None
        incremental = (
            cp is not None
            and cp.get("thresholds") == fingerprint(self.th)
            and 0 <= now_hour - cp["hour"] <= self._max_gap_hours
        )
        if incremental and cp is not None:
            stats.mode = "incremental"
            docs = self._scheduled(cp["hour"] - 1, now_hour, warned)
        else:
            stats.mode = "full"
            docs = self._scan(now, warned)
        # Read the candidates first, act afterwards: writes while FerretDB streams a pass slow it down.
        candidates = [doc async for doc in docs]
        warnings: list[tuple[Document, Decision]] = []
        deactivations: list[tuple[Document, Document | None, Decision]] = []
        renewed = now
        for doc in candidates:
            stats.examined += 1
            if stats.examined % self._batch_size == 0:
                await self._warn_all(warnings, now, stats)
                await self._deactivate_all(deactivations, now, stats)
            if self._clock.now() - renewed >= self._lease.ttl / 3:
                renewed = self._clock.now()
                if not await self._lease.acquire(renewed):
                    stats.lost_lease = True
                    log.warning("lost the sweep lease; stopping this sweep")
                    return stats
            await self._consider(
                doc, open_cases.get(doc["_id"]), now, stats, warnings, deactivations=deactivations
            )
        await self._warn_all(warnings, now, stats)
        await self._deactivate_all(deactivations, now, stats)
        if self._schedule is not None:
            if incremental and cp is not None:
                await self._schedule.forget(cp["hour"] - 1, now_hour - 1)
            else:
                await self._db[SCHEDULE].delete_many({"_id": {"$lt": bucket_id(now_hour - 1)}})
            await self._schedule.set_checkpoint(now_hour)
        return stats

    async def _scan(self, now: datetime, warned: list[str]) -> AsyncIterator[Document]:
        """Every inbox a rule could be about to fire on, in one pass over the collection.

        The candidate test runs here rather than as a query filter or projection: FerretDB v1 applies
        both document by document in its own process, and a plain read of whole documents measured
        fastest there (100,000 inboxes: about the time of the naive read; a filtered or projected
        pass took up to twice as long).
        """
        opened_cut = now - (self.th.unopened - self.th.warning)
        active_cut = now - (self.th.inactive - self.th.warning)
        open_warnings = set(warned)
        async for doc in self._db[INBOX_ACTIVITY].find({}, batch_size=self._batch_size):
            if not doc.get("tracked") or doc.get("removed") or "baseline_at" not in doc:
                continue
            opened_ref, active_ref = doc.get("opened_ref"), doc.get("active_ref")
            if (
                (opened_ref is not None and opened_ref <= opened_cut)
                or (active_ref is not None and active_ref <= active_cut)
                or doc["_id"] in open_warnings
            ):
                yield doc

    async def _scheduled(self, first_hour: int, last_hour: int, warned: list[str]) -> AsyncIterator[Document]:
        """The inboxes named in the schedule's buckets for these hours, and those with a warning."""
        assert self._schedule is not None
        keys: set[str] = set(warned)
        users: list[str] = []
        for member in await self._schedule.members(first_hour, last_hour):
            kind, ident = member[:2], member[2:]
            if kind == "i:":
                keys.add(ident)
            elif kind == "u:":
                users.append(ident)
        # Lookups by `_id` only, several in flight: each is an index lookup, also on FerretDB v1 when
        # built with deploy/local/ferretdb.sh's _id-index patch.
        for user in await self._by_id(USER_ACTIVITY, sorted(users), {"inboxes": 1, "tenant_id": 1}):
            if user:
                keys.update(f"{user['tenant_id']}:{inbox}" for inbox in user.get("inboxes", []))
        ordered = sorted(keys)
        for start in range(0, len(ordered), self._batch_size):
            chunk = ordered[start : start + self._batch_size]
            for doc in await self._by_id(INBOX_ACTIVITY, chunk, FIELDS | {"tracked": 1, "removed": 1}):
                if doc and doc.get("tracked") and not doc.get("removed"):
                    yield doc

    async def _by_id(
        self, collection: str, ids: list[str], projection: dict[str, int]
    ) -> list[Document | None]:
        """Documents by `_id`, in order, `LOOKUPS_IN_FLIGHT` lookups at a time."""
        found: list[Document | None] = []
        for start in range(0, len(ids), LOOKUPS_IN_FLIGHT):
            found += await asyncio.gather(
                *(
                    self._db[collection].find_one({"_id": ident}, projection)
                    for ident in ids[start : start + LOOKUPS_IN_FLIGHT]
                )
            )
        return found

    async def _finish_pending(self, open_cases: dict[str, Document], stats: SweepStats) -> None:
        """Finish what an interrupted sweep left: unpublished outboxes, claimed actions, deletions."""
        for case in list(open_cases.values()):
            if case.get("outbox"):
                await self._flush(case)
                stats.republished += len(case["outbox"])
        for action in await self._db[ACTIONS].find({"done": False}).to_list():
            await self._perform(action)
            stats.republished += 1
        for case in await self.cases.find({"status": "deactivating"}).to_list():
            await self._purge(case, stats)
        open_cases.clear()
        open_cases.update({c["_id"]: c for c in await self.cases.find({}).to_list()})

    async def _consider(
        self,
        doc: Document,
        case_doc: Document | None,
        now: datetime,
        stats: SweepStats,
        warnings: list[tuple[Document, Decision]],
        *,
        deactivations: list[tuple[Document, Document | None, Decision]],
    ) -> None:
        if case_doc is not None and case_doc.get("generation", 0) < doc.get("generation", 0):
            return  # a case of an earlier generation; the reactivation handler closes it
        decision = decide(facts_of(doc), case_of(case_doc), now, self.th)
        if decision.action == "none":
            return
        if (
            decision.action == "cancel"
            and case_doc is not None
            and await self._cancel(doc, case_doc, decision, stats)
        ):
            # Another rule may already be in its warning window.
            decision = decide(facts_of(doc), None, now, self.th)
            case_doc = None
        if decision.action == "warn":
            warnings.append((doc, decision))  # sent in bulk at the end of the batch
        elif decision.action == "deactivate":
            deactivations.append((doc, case_doc, decision))  # run together at the end of the batch

    def _envelope(self, doc: Document, event_cls: Any, data: Any, now: datetime) -> Envelope[Any]:
        built: Envelope[Any] = event_cls.build(
            data=data, tenant_id=doc["tenant_id"], inbox_id=doc["id"], source=self._source, time=now
        )
        return built

    def _new_case(self, doc: Document, d: Decision, now: datetime, **extra: Any) -> Document:
        return {
            "_id": doc["_id"],
            "tenant_id": doc["tenant_id"],
            "inbox_id": doc["id"],
            "owner_user_id": doc.get("owner_user_id", ""),
            "generation": doc.get("generation", 0),
            "reason": d.reason,
            "deactivate_at": d.deactivate_at,
            "warned_at": now,
            **extra,
        }

    async def _warn_all(
        self, warnings: list[tuple[Document, Decision]], now: datetime, stats: SweepStats
    ) -> None:
        """Open the batch's warning cases in one insert, publish their events, clear their outboxes."""
        if not warnings:
            return
        cases: list[Document] = []
        for doc, d in warnings:
            assert d.reason is not None and d.deactivate_at is not None
            data = DeactivationWarningData(
                reason=d.reason,
                owner_user_id=doc.get("owner_user_id", ""),
                deactivate_at=d.deactivate_at,
                last_opened_at=doc.get("last_opened_at"),
                last_active_at=doc.get("user_active_at"),
            )
            event = self._envelope(doc, InboxDeactivationWarning, data, now)
            cases.append(self._new_case(doc, d, now, status="warned", outbox=[event.model_dump_json()]))
        warnings.clear()
        # The unique `_id` (the inbox) is the claim: one replica, one open case per inbox.
        lost = await insert_new(self.cases, cases)
        won = [c for i, c in enumerate(cases) if i not in lost]
        if not won:
            return
        await self._publisher.publish_all([parse_event(raw) for c in won for raw in c["outbox"]])
        await self.cases.update_many({"_id": {"$in": [c["_id"] for c in won]}}, {"$set": {"outbox": []}})
        stats.warned += len(won)
        stats.actions += [(c["_id"], "warn") for c in won]

    async def _deactivate_all(
        self,
        deactivations: list[tuple[Document, Document | None, Decision]],
        now: datetime,
        stats: SweepStats,
    ) -> None:
        """The batch's deactivations, `DEACTIVATIONS_IN_FLIGHT` at a time (each inbox's own claim,
        event and purge; they touch different inboxes). A failure stops the sweep once the others in
        flight have finished; what it left is finished by the next sweep."""
        todo, deactivations[:] = list(deactivations), []
        for start in range(0, len(todo), DEACTIVATIONS_IN_FLIGHT):
            results = await asyncio.gather(
                *(
                    self._deactivate(doc, case, d, now, stats)
                    for doc, case, d in todo[start : start + DEACTIVATIONS_IN_FLIGHT]
                ),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    async def _claim(
        self, action_id: str, case_id: str, kind: str, event: Envelope[Any], **change: Any
    ) -> bool:
        """Insert the action under its deterministic id; only the replica whose insert wins acts."""
        action = {
            "_id": action_id,
            "case_id": case_id,
            "kind": kind,
            "event": event.model_dump_json(),
            "change": change,
            "done": False,
            "at": self._clock.now(),
        }
        try:
            await self._db[ACTIONS].insert_one(action)
        except DuplicateKeyError:
            return False
        await self._perform(action)
        return True

    async def _perform(self, action: Document) -> None:
        """Publish the action's event and apply its change to the case; safe to repeat."""
        await self._publisher.publish(parse_event(action["event"]))
        change = action["change"]
        if action["kind"] == "cancel":
            await self.cases.delete_one(
                {"_id": action["case_id"], "status": "warned", "warned_at": change["warned_at"]}
            )
        else:
            await self.cases.update_one({"_id": action["case_id"], "status": "warned"}, {"$set": change})
        await self._db[ACTIONS].update_one({"_id": action["_id"]}, {"$set": {"done": True}})

    async def _cancel(self, doc: Document, case: Document, d: Decision, stats: SweepStats) -> bool:
        assert d.reason is not None and d.deactivate_at is not None
        data = DeactivationWarningCancelledData(
            reason=d.reason, owner_user_id=case.get("owner_user_id", ""), deactivate_at=d.deactivate_at
        )
        event = self._envelope(doc, InboxDeactivationWarningCancelled, data, self._clock.now())
        warned_at = case["warned_at"]
        action_id = f"{case['_id']}:{case.get('generation', 0)}:cancel:{warned_at.isoformat()}"
        if not await self._claim(action_id, case["_id"], "cancel", event, warned_at=warned_at):
            return False
        stats.cancelled += 1
        stats.actions.append((doc["_id"], "cancel"))
        return True

    async def _deactivate(
        self, doc: Document, case: Document | None, d: Decision, now: datetime, stats: SweepStats
    ) -> None:
        assert d.reason is not None
        generation = doc.get("generation", 0)
        data = InboxDeactivatedData(
            deactivation_id=f"{doc['_id']}:{generation}",
            reason=d.reason,
            owner_user_id=doc.get("owner_user_id", ""),
            disable_salesinbox=True,
        )
        event = self._envelope(doc, InboxDeactivated, data, now)
        change = {"status": "deactivating", "deactivated_at": now}
        if case is None:
            # No warning period configured: open the case in the `warned` state, then move it on.
            try:
                await self.cases.insert_one(self._new_case(doc, d, now, status="warned"))
            except DuplicateKeyError:
                return
        action_id = f"{doc['_id']}:{generation}:deactivate"
        if not await self._claim(action_id, doc["_id"], "deactivate", event, **change):
            return
        stats.deactivated += 1
        stats.actions.append((doc["_id"], "deactivate"))
        await self._purge({**self._new_case(doc, d, now), **change}, stats)

    async def _purge(self, fresh: Document, stats: SweepStats) -> None:
        if fresh.get("status") != "deactivating":
            return
        result = await self._purger.run(
            fresh["_id"],
            fresh["tenant_id"],
            fresh["inbox_id"],
            bound=purge_bound(fresh, self._clock.now()),
            generation=fresh.get("generation", 0),
        )
        stats.purged_documents += result.deleted_now
        change: dict[str, Any] = {
            "status": "deactivated",
            "purged_at": self._clock.now(),
            "purged": result.deleted_total,
        }
        if result.stopped is not None:
            # Reactivated mid-purge: what is left is the inbox's mail again; the reactivation closes the case.
            change["purge_stopped"] = result.stopped
            log.info("purge stopped: inbox reactivated", extra={"case": fresh["_id"], "why": result.stopped})
        done = await self.cases.update_one(
            {"_id": fresh["_id"], "status": "deactivating", "generation": fresh.get("generation", 0)},
            {"$set": change},
        )
        await self._purger.forget(fresh["_id"])
        if done.modified_count == 1:
            stats.purged_inboxes += 1

    async def _flush(self, case: Document) -> None:
        """Publish a case's outbox, then clear it (only if nobody changed the case meanwhile)."""
        events = [parse_event(raw) for raw in case.get("outbox", [])]
        if not events:
            return
        await self._publisher.publish_all(events)
        await self.cases.update_one({"_id": case["_id"]}, {"$set": {"outbox": []}})
