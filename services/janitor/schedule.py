"""When to look at an inbox again: hourly buckets keyed by `_id`, so a sweep reads only what is due.

FerretDB v1 (SQLite) serves a filter on anything but `_id` equality by scanning the whole collection
(measured: ~3 s per 100,000 documents, with or without an index), so "find the inboxes due now" as
a range query cannot be fast there. Instead every fact that moves a rule's date adds the inbox (or,
for user activity, the user) to the bucket of the hour in which that rule's warning window opens:
`janitor_schedule` documents `{_id: "h<hour number>", m: [members]}`, members `i:<tenant>:<inbox>` and
`u:<tenant>:<user>`. A sweep reads the buckets from its checkpoint up to now by `_id`. Entries never
need removing when a date moves later: the sweep re-checks each candidate's real facts, and the
bucket holding the latest date is read when its hour comes. A fact older than the checkpoint lands in
the checkpoint's bucket, and the sweep re-reads the bucket before its checkpoint, so nothing is
skipped. Without a usable checkpoint (first sweep, thresholds changed, a long gap) the sweep falls
back to one full scan.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime

from pymongo.asynchronous.database import AsyncDatabase

from mailsync.store import Document

from .cleanup_policy import Thresholds

SCHEDULE = "janitor_schedule"
STATE = "janitor_state"
CHECKPOINT = "sweep_checkpoint"


def hour_of(t: datetime) -> int:
    return int(t.timestamp() // 3600)


def bucket_id(hour: int) -> str:
    # A string: FerretDB v1 looks up string `_id`s directly but scans for integer ones (measured).
    return f"h{hour:09d}"


def fingerprint(th: Thresholds) -> str:
    return "/".join(f"{t.total_seconds():.0f}" for t in (th.unopened, th.inactive, th.warning))


class Schedule:
    def __init__(self, db: AsyncDatabase[Document], thresholds: Thresholds) -> None:
        self._db = db
        self.th = thresholds

    async def checkpoint(self) -> Document | None:
        return await self._db[STATE].find_one({"_id": CHECKPOINT})

    async def set_checkpoint(self, hour: int) -> None:
        await self._db[STATE].update_one(
            {"_id": CHECKPOINT}, {"$set": {"hour": hour, "thresholds": fingerprint(self.th)}}, upsert=True
        )

    async def add(self, entries: Iterable[tuple[datetime, str]]) -> None:
        cp = await self.checkpoint()
        floor = cp["hour"] if cp else None
        for when, member in entries:
            hour = hour_of(when)
            if floor is not None and hour < floor:
                hour = floor
            await self._db[SCHEDULE].update_one(
                {"_id": bucket_id(hour)}, {"$addToSet": {"m": member}}, upsert=True
            )

    async def inbox_opened(self, tenant: str, inbox_id: str, at: datetime) -> None:
        await self.add([(at + self.th.unopened - self.th.warning, f"i:{tenant}:{inbox_id}")])

    async def user_active(self, tenant: str, user_id: str, at: datetime) -> None:
        await self.add([(at + self.th.inactive - self.th.warning, f"u:{tenant}:{user_id}")])

    async def fresh_start(self, tenant: str, inbox_id: str, at: datetime) -> None:
        member = f"i:{tenant}:{inbox_id}"
        await self.add(
            [
                (at + self.th.unopened - self.th.warning, member),
                (at + self.th.inactive - self.th.warning, member),
            ]
        )

    async def members(self, first_hour: int, last_hour: int) -> set[str]:
        found: set[str] = set()
        docs = await asyncio.gather(
            *(self._db[SCHEDULE].find_one({"_id": bucket_id(h)}) for h in range(first_hour, last_hour + 1))
        )
        for doc in docs:
            if doc:
                found.update(doc.get("m", []))
        return found

    async def forget(self, first_hour: int, last_hour: int) -> None:
        """Drop buckets already swept (hours before `last_hour`)."""
        for hour in range(first_hour, last_hour):
            await self._db[SCHEDULE].delete_one({"_id": bucket_id(hour)})
