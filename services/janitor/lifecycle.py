"""Inbox lifecycle events → the janitor's view of each inbox.

- `connected`: the inbox is tracked from now on; sync begins, so this is the baseline from which an
  inbox never opened counts. Connecting again (e.g. after a deactivation) is a fresh start.
- `reactivated` (an admin resumed, or the user reconnected): a fresh start too — the baseline moves to
  the reactivation, a deactivated case is closed (a deletion still under way is abandoned, so nothing
  deletes the mail the fetcher resyncs) and the inbox moves to a new generation.
- `removed`: no longer tracked; a pending warning is dropped (deletion already under way finishes).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from contracts import Envelope
from contracts.inbox import InboxConnected, InboxReactivated, InboxRemoved
from mailsync.store import Document

from .activity import INBOX_ACTIVITY, ActivityClock, key
from .purge import CASES, Purger


class InboxLifecycle:
    def __init__(self, db: AsyncDatabase[Document], clock: ActivityClock, purger: Purger) -> None:
        self._db = db
        self._activity = clock
        self._purger = purger

    async def apply(self, event: Envelope[Any]) -> None:
        inbox_id = event.inbox_id
        if not inbox_id:
            return
        if isinstance(event, InboxConnected | InboxReactivated):
            await self.fresh_start(event.tenant_id, inbox_id, event.data.owner_user_id, event.time)
        elif isinstance(event, InboxRemoved):
            await self.removed(event.tenant_id, inbox_id)

    async def fresh_start(self, tenant: str, inbox_id: str, owner: str, at: datetime) -> None:
        ident = key(tenant, inbox_id)
        case = await self._db[CASES].find_one({"_id": ident})
        inbox = await self._db[INBOX_ACTIVITY].find_one({"_id": ident}, {"generation": 1})
        generation = (inbox or {}).get("generation", 0)
        closing = case is not None and case.get("status") in ("deactivating", "deactivated")
        if closing and case is not None:
            if case.get("status") == "deactivating":
                # A deletion under way is abandoned, not finished: the fetcher may already be resyncing,
                # and it keeps (does not store again) the documents it finds. A purge running elsewhere
                # stops at its next batch when it sees the new generation written below.
                await self._purger.forget(ident)
            generation = max(generation, case.get("generation", 0) + 1)
        user_at = await self._activity.last_active(tenant, owner) if owner else None
        refs: dict[str, Any] = {"baseline_at": at, "opened_ref": at, "active_ref": max(at, user_at or at)}
        if user_at is not None:
            refs["user_active_at"] = user_at
        await self._db[INBOX_ACTIVITY].update_one(
            {"_id": ident},
            {
                "$max": {**refs, "generation": generation},
                "$set": {"tenant_id": tenant, "id": inbox_id, "owner_user_id": owner, "tracked": True},
                "$unset": {"removed": ""},
            },
            upsert=True,
        )
        if owner:
            await self._activity.own(tenant, owner, inbox_id)
        if self._activity.schedule is not None:
            await self._activity.schedule.fresh_start(tenant, inbox_id, at)
        if closing and case is not None:
            await self._db[CASES].delete_one({"_id": ident, "generation": case.get("generation", 0)})

    async def removed(self, tenant: str, inbox_id: str) -> None:
        ident = key(tenant, inbox_id)
        await self._db[INBOX_ACTIVITY].update_one({"_id": ident}, {"$set": {"removed": True}})
        await self._db[CASES].delete_one({"_id": ident, "status": "warned"})
