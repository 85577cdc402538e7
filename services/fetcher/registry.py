"""The inbox registry (collection `inboxes`), owned by the fetcher; the sender reads it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from contracts import Envelope
from contracts.errors import InputRejected, InputRejectedData
from contracts.inbox import (
    InboxCommandRequested,
    InboxDeactivated,
    InboxPaused,
    InboxPausedData,
    InboxReactivated,
    InboxReactivatedData,
    InboxRemoved,
    InboxRemovedData,
)
from mailsync.kafka import EventPublisher
from mailsync.store import Document

from .inbox_commands import decide

INBOXES = "inboxes"


def inbox_key(tenant_id: str, inbox_id: str) -> str:
    return f"{tenant_id}:{inbox_id}"


class InboxRegistry:
    def __init__(self, db: AsyncDatabase[Document], publisher: EventPublisher, source: str) -> None:
        self._db = db
        self._publisher = publisher
        self._source = source

    async def get(self, tenant_id: str, inbox_id: str) -> Document | None:
        return await self._db[INBOXES].find_one({"_id": inbox_key(tenant_id, inbox_id)})

    async def apply(self, event: Envelope[Any]) -> None:
        if isinstance(event, InboxCommandRequested):
            await self.command(event)
        elif isinstance(event, InboxDeactivated):
            await self.deactivated(event)

    async def apply_all(self, events: list[Envelope[Any]]) -> None:
        for event in events:
            if isinstance(event, InboxDeactivated):
                await self.deactivated(event)

    async def deactivated(self, event: InboxDeactivated) -> None:
        """The janitor deactivated the inbox (issue #7): sync stops (the sync manager stops inboxes
        that are not active and closes their connections); cursors are kept. A `resume` command
        reactivates it and asks for a resync, since the janitor purged the stored mail."""
        key = inbox_key(event.tenant_id, event.inbox_id or "")
        await self._db[INBOXES].update_one(
            {"_id": key, "status": {"$nin": ["deactivated", "removed"]}},
            {
                "$set": {
                    "status": "deactivated",
                    "status_reason": f"janitor: {event.data.reason}",
                    "status_changed_at": datetime.now(UTC),
                }
            },
        )

    async def command(self, event: InboxCommandRequested) -> None:
        tenant, inbox_id, cmd = event.tenant_id, event.inbox_id or "", event.data
        inbox = await self.get(tenant, inbox_id)
        if inbox is None:
            await self._refuse(event, f"unknown inbox id {inbox_id!r} for tenant {tenant!r}")
            return
        decision = decide(inbox.get("status", "connecting"), cmd.action)
        if decision.refused:
            await self._refuse(event, decision.refused)
            return
        update: dict[str, Any] = {"status": decision.status, "status_changed_at": datetime.now(UTC)}
        if decision.resync:
            update["resync_requested_at"] = datetime.now(UTC)
        # Emit first, then store: a crash in between redelivers the command, which emits the same id.
        owner = inbox.get("owner_user_id", "")
        if decision.emit == "paused":
            reason = cmd.reason or "requested"
            data = InboxPausedData(request_id=cmd.request_id, reason=reason, by_user_id=cmd.by_user_id)
            await self._publisher.publish(
                InboxPaused.build(data=data, tenant_id=tenant, inbox_id=inbox_id, source=self._source)
            )
        elif decision.emit == "reactivated":
            rdata = InboxReactivatedData(
                reactivation_id=cmd.request_id, owner_user_id=owner, by_user_id=cmd.by_user_id
            )
            await self._publisher.publish(
                InboxReactivated.build(data=rdata, tenant_id=tenant, inbox_id=inbox_id, source=self._source)
            )
        elif decision.emit == "removed":
            xdata = InboxRemovedData(inbox_id=inbox_id, owner_user_id=owner, by_user_id=cmd.by_user_id)
            await self._publisher.publish(
                InboxRemoved.build(data=xdata, tenant_id=tenant, inbox_id=inbox_id, source=self._source)
            )
        await self._db[INBOXES].update_one({"_id": inbox_key(tenant, inbox_id)}, {"$set": update})

    async def _refuse(self, event: InboxCommandRequested, reason: str) -> None:
        data = InputRejectedData(
            consumer="fetcher",
            topic="mailsync.inbox.commands.v1",
            partition=-1,
            offset=-1,
            key=event.inbox_id,
            reason=reason,
            event_id=event.id,
        )
        rejected = InputRejected.build(
            data=data,
            tenant_id=event.tenant_id,
            inbox_id=event.inbox_id,
            source=self._source,
            subject=event.id,
        )
        await self._publisher.publish(rejected)
