"""Activity clocks: when each inbox's mail was last opened and each user was last active.

Timestamps only move forward (`$max`), so late, duplicate or reordered activity events are harmless.

Each tracked inbox document (collection `inbox_activity`, `_id` = `tenant:inbox`) also carries its
owner's last activity (`user_active_at`) and two precomputed references the sweep filters on
(`opened_ref` = latest of baseline and last open, `active_ref` = latest of baseline and the owner's
last activity). All of them only grow, so `$max` keeps them right under any event order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from contracts import Envelope
from contracts.crm import EmailOpened, UserActive
from mailsync.store import Document

from .schedule import Schedule

INBOX_ACTIVITY = "inbox_activity"
USER_ACTIVITY = "user_activity"


def inbox_of(event: EmailOpened) -> str | None:
    """The inbox an open counts for: the envelope's inbox, or `inbox:<id>` as target."""
    if event.inbox_id:
        return event.inbox_id
    kind, _, ident = event.data.target.partition(":")
    return ident if kind == "inbox" and ident else None


def key(tenant_id: str, ident: str) -> str:
    return f"{tenant_id}:{ident}"


class ActivityClock:
    def __init__(self, db: AsyncDatabase[Document], schedule: Schedule | None = None) -> None:
        self._db = db
        self.schedule = schedule

    async def apply(self, event: Envelope[Any]) -> None:
        if isinstance(event, UserActive):
            await self.user_active(event.tenant_id, event.data.user_id, event.data.active_at)
        elif isinstance(event, EmailOpened):
            # Opening mail is also activity of the user.
            await self.user_active(event.tenant_id, event.data.user_id, event.data.opened_at)
            inbox_id = inbox_of(event)
            if inbox_id is not None:
                await self._db[INBOX_ACTIVITY].update_one(
                    {"_id": key(event.tenant_id, inbox_id)},
                    {
                        "$max": {"last_opened_at": event.data.opened_at, "opened_ref": event.data.opened_at},
                        "$set": {"tenant_id": event.tenant_id, "id": inbox_id},
                    },
                    upsert=True,
                )
                if self.schedule is not None:
                    await self.schedule.inbox_opened(event.tenant_id, inbox_id, event.data.opened_at)

    async def user_active(self, tenant: str, user_id: str, at: datetime) -> None:
        await self._db[USER_ACTIVITY].update_one(
            {"_id": key(tenant, user_id)},
            {"$max": {"last_active_at": at}, "$set": {"tenant_id": tenant, "id": user_id}},
            upsert=True,
        )
        # Denormalised onto the user's inboxes so a sweep reads one collection only.
        await self._db[INBOX_ACTIVITY].update_many(
            {"tenant_id": tenant, "owner_user_id": user_id},
            {"$max": {"user_active_at": at, "active_ref": at}},
        )
        if self.schedule is not None:
            await self.schedule.user_active(tenant, user_id, at)

    async def own(self, tenant: str, user_id: str, inbox_id: str) -> None:
        """Remember the user's inboxes, so the sweep finds them from a user's schedule entry."""
        await self._db[USER_ACTIVITY].update_one(
            {"_id": key(tenant, user_id)},
            {"$addToSet": {"inboxes": inbox_id}, "$set": {"tenant_id": tenant, "id": user_id}},
            upsert=True,
        )

    async def last_active(self, tenant: str, user_id: str) -> datetime | None:
        doc = await self._db[USER_ACTIVITY].find_one({"_id": key(tenant, user_id)})
        return doc.get("last_active_at") if doc else None
