"""Activity clocks: when each inbox's mail was last opened and each user was last active.

Timestamps only move forward (`$max`), so late, duplicate or reordered activity events are harmless.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from contracts import Envelope
from contracts.crm import EmailOpened, UserActive
from mailsync.store import Document

INBOX_ACTIVITY = "inbox_activity"
USER_ACTIVITY = "user_activity"


def inbox_of(event: EmailOpened) -> str | None:
    """The inbox an open counts for: the envelope's inbox, or `inbox:<id>` as target."""
    if event.inbox_id:
        return event.inbox_id
    kind, _, ident = event.data.target.partition(":")
    return ident if kind == "inbox" and ident else None


class ActivityClock:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db

    async def apply(self, event: Envelope[Any]) -> None:
        if isinstance(event, UserActive):
            await self._touch(USER_ACTIVITY, event.tenant_id, event.data.user_id, event.data.active_at)
        elif isinstance(event, EmailOpened):
            # Opening mail is also activity of the user.
            await self._touch(USER_ACTIVITY, event.tenant_id, event.data.user_id, event.data.opened_at)
            inbox_id = inbox_of(event)
            if inbox_id is not None:
                await self._touch(
                    INBOX_ACTIVITY, event.tenant_id, inbox_id, event.data.opened_at, "last_opened_at"
                )

    async def _touch(
        self, collection: str, tenant: str, ident: str, at: Any, field: str = "last_active_at"
    ) -> None:
        await self._db[collection].update_one(
            {"_id": f"{tenant}:{ident}"},
            {"$max": {field: at}, "$set": {"tenant_id": tenant, "id": ident}},
            upsert=True,
        )
