"""A lease in MongoDB so that only one janitor replica sweeps at a time.

FerretDB has no transactions or TTL indexes, so the lease is one document `{_id, owner, expires_at}`
taken with a conditional `update_one` (free or expired or already ours) and, when it does not exist
yet, created with `insert_one` (the unique `_id` lets exactly one replica win). The holder renews it
between batches and stops sweeping as soon as a renewal fails.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from mailsync.store import Document

LEASES = "janitor_leases"


class Lease:
    def __init__(self, db: AsyncDatabase[Document], name: str, owner: str, ttl: timedelta) -> None:
        self._col = db[LEASES]
        self.name = name
        self.owner = owner
        self.ttl = ttl

    async def acquire(self, now: datetime) -> bool:
        """Take or renew the lease; False when another owner holds an unexpired one."""
        result = await self._col.update_one(
            {"_id": self.name, "$or": [{"owner": self.owner}, {"expires_at": {"$lte": now}}]},
            {"$set": {"owner": self.owner, "expires_at": now + self.ttl, "renewed_at": now}},
        )
        if result.matched_count == 1:
            return True
        try:
            await self._col.insert_one(
                {"_id": self.name, "owner": self.owner, "expires_at": now + self.ttl, "renewed_at": now}
            )
        except DuplicateKeyError:
            return False  # it exists and someone else holds it
        return True

    async def release(self) -> None:
        await self._col.delete_one({"_id": self.name, "owner": self.owner})

    async def holder(self) -> Document | None:
        return await self._col.find_one({"_id": self.name})
