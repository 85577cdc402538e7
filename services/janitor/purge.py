"""Batched, resumable deletion of everything mailsync stored for one inbox (never on the mail server).

The data lives in collections other services own (messages, bodies, attachments, links), all keyed by
`tenant_id` + `inbox_id`. Deletion goes batch by batch; after each batch a progress document in
`janitor_purges` (one small document per deletion under way, removed when it is finished) records the
collections done and the documents deleted, so a crash half-way resumes on the next sweep, and
deleting what is already gone is harmless.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from pymongo.asynchronous.database import AsyncDatabase

from mailsync.store import Document

CASES = "janitor_cases"
PURGES = "janitor_purges"
BatchHook = Callable[[str, int], Awaitable[None]]


class Purger:
    def __init__(
        self,
        db: AsyncDatabase[Document],
        collections: Sequence[str],
        batch_size: int = 500,
        on_batch: BatchHook | None = None,
    ) -> None:
        self._db = db
        self.collections = tuple(collections)
        self.batch_size = batch_size
        self._on_batch = on_batch  # called after each deleted batch (progress, lease renewal, tests)

    async def run(self, case_id: str, tenant_id: str, inbox_id: str) -> tuple[int, int]:
        """Delete the inbox's data collection by collection; returns (deleted now, deleted in all)."""
        progress = await self._db[PURGES].find_one({"_id": case_id}) or {}
        done: list[str] = list(progress.get("done", []))
        total = before = int(progress.get("deleted", 0))
        present = set(await self._db.list_collection_names())
        for name in self.collections:
            if name in done or name not in present:
                continue
            col = self._db[name]
            selector = {"tenant_id": tenant_id, "inbox_id": inbox_id}
            while True:
                batch = await col.find(selector, {"_id": 1}).limit(self.batch_size).to_list()
                ids = [d["_id"] for d in batch]
                if not ids:
                    break
                result = await col.delete_many({"_id": {"$in": ids}, **selector})
                total += result.deleted_count
                # Collections finished before this one are recorded along with each batch's count.
                await self._save(case_id, done, total)
                if self._on_batch is not None:
                    await self._on_batch(name, result.deleted_count)
            done.append(name)
        return total - before, total

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
