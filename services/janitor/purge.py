"""Batched, resumable deletion of what mailsync stored for one deactivated inbox (never on the mail server).

The data lives in collections other services own (messages, bodies, attachments, links), all keyed by
`tenant_id` + `inbox_id`. Deletion goes batch by batch; after each batch a progress document in
`janitor_purges` (one small document per deletion under way, removed when it is finished) records the
collections done and the documents deleted, so a crash half-way resumes on the next sweep, and
deleting what is already gone is harmless.

A purge is bounded by its deactivation (`purge_policy.py`): it deletes only documents stored before
that time and stops before the next batch once the inbox was reactivated, so mail the fetcher resyncs
after a `resume` survives. On FerretDB a filter other than an exact `_id` scans the collection; that
is acceptable for a purge, which reads one batch of ids per scan and deletes them in one call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pymongo.asynchronous.database import AsyncDatabase

from mailsync.store import Document

from .activity import INBOX_ACTIVITY
from .purge_policy import STORED_AT, StopReason, stop_reason, stored_before, stored_before_filter

CASES = "janitor_cases"
PURGES = "janitor_purges"
REGISTRY = "inboxes"  # the fetcher's inbox registry; read-only here
BatchHook = Callable[[str, int], Awaitable[None]]
# A batch that deletes nothing means its documents were rewritten (newer stamp) between the read and
# the delete; the next read no longer matches them. Repeated, something else is wrong: move on.
MAX_EMPTY_BATCHES = 3


@dataclass(frozen=True)
class PurgeResult:
    deleted_now: int
    deleted_total: int  # over every run of this purge, resumed ones included
    stopped: StopReason | None = None  # set when a reactivation ended the purge early


class Purger:
    def __init__(
        self,
        db: AsyncDatabase[Document],
        collections: Sequence[str],
        batch_size: int = 500,
        on_batch: BatchHook | None = None,
        *,
        stored_at_field: str = STORED_AT,
    ) -> None:
        self._db = db
        self.collections = tuple(collections)
        self.batch_size = batch_size
        self._on_batch = on_batch  # called after each deleted batch (progress, lease renewal, tests)
        self.stored_at_field = stored_at_field

    async def run(
        self, case_id: str, tenant_id: str, inbox_id: str, *, bound: datetime, generation: int = 0
    ) -> PurgeResult:
        """Delete the inbox's documents stored before `bound` (the deactivation), collection by
        collection, until done or until the inbox was reactivated after `bound`."""
        progress = await self._db[PURGES].find_one({"_id": case_id}) or {}
        done: list[str] = list(progress.get("done", []))
        total = before = int(progress.get("deleted", 0))
        present = set(await self._db.list_collection_names())
        field = self.stored_at_field
        selector = {"tenant_id": tenant_id, "inbox_id": inbox_id, **stored_before_filter(field, bound)}
        for name in self.collections:
            if name in done or name not in present:
                continue
            col = self._db[name]
            empty = 0
            while empty < MAX_EMPTY_BATCHES:
                # The stop check runs alongside the read, so it costs no extra round trip per batch.
                batch, stopped = await asyncio.gather(
                    col.find(selector, {"_id": 1, field: 1}).limit(self.batch_size).to_list(),
                    self._stop_reason(case_id, bound, generation),
                )
                if stopped is not None:
                    return PurgeResult(total - before, total, stopped)
                if not batch:
                    break
                ids = [d["_id"] for d in batch if stored_before(d.get(field), bound)]
                # The bound is in the delete too: a document rewritten since the read keeps its new stamp.
                deleted = (await col.delete_many({"_id": {"$in": ids}, **selector})).deleted_count
                empty = empty + 1 if deleted == 0 else 0
                total += deleted
                # Collections finished before this one are recorded along with each batch's count.
                await self._save(case_id, done, total)
                if self._on_batch is not None:
                    await self._on_batch(name, deleted)
            done.append(name)
        return PurgeResult(total - before, total)

    async def _stop_reason(self, case_id: str, bound: datetime, generation: int) -> StopReason | None:
        # Two `_id` lookups per batch, side by side: cheap next to the batch's scan.
        registry, inbox = await asyncio.gather(
            self._db[REGISTRY].find_one({"_id": case_id}, {"resync_requested_at": 1}),
            self._db[INBOX_ACTIVITY].find_one({"_id": case_id}, {"generation": 1}),
        )
        return stop_reason(
            registry,
            bound,
            case_generation=generation,
            current_generation=int((inbox or {}).get("generation", 0)),
        )

    async def _save(self, case_id: str, done: list[str], total: int) -> None:
        # A small collection of purges in progress: cheap to update even where updates scan.
        await self._db[PURGES].update_one(
            {"_id": case_id}, {"$set": {"done": done, "deleted": total}}, upsert=True
        )

    async def forget(self, case_id: str) -> None:
        await self._db[PURGES].delete_one({"_id": case_id})

    async def remaining(self, tenant_id: str, inbox_id: str) -> int:
        total = 0
        for name in self.collections:
            total += await self._db[name].count_documents({"tenant_id": tenant_id, "inbox_id": inbox_id})
        return total
