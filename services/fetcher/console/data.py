"""What the console reads besides the registry: sync cursors and state (the fetcher's own collections),
message counts, and the event log. `progress` is pure."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from mailsync.inbox_record import RUNNING_STATUSES
from mailsync.store import Document

from .tail import EventLog, InboxEvents

CURSORS = "sync_cursors"
SYNC_STATE = "sync_state"
MESSAGES = "messages"


@dataclass(frozen=True)
class Progress:
    done: int
    total: int | None  # None: not known yet (no progress event seen)
    completed: bool

    @property
    def percent(self) -> int | None:
        if self.completed:
            return 100
        if not self.total:
            return None
        return min(99, int(self.done * 100 / self.total))

    def as_dict(self) -> dict[str, Any]:
        return {"done": self.done, "total": self.total, "completed": self.completed, "percent": self.percent}


def progress(cursors: list[Document], state: Document | None, events: InboxEvents | None) -> Progress:
    """Initial-sync progress: the database says what is done and whether it completed; totals come from
    the `sync progress` events (the cursor does not store them)."""
    completed = bool(state and state.get("initial_completed")) or bool(events and events.completed)
    done_db = {str(c.get("folder")): int(c.get("initial_done_count") or 0) for c in cursors}
    folders = set(done_db) | set(events.progress if events else {})
    done = total = 0
    known_total = True
    for folder in folders:
        ev = events.progress.get(folder) if events else None
        folder_done = max(done_db.get(folder, 0), ev[0] if ev else 0)
        cursor = next((c for c in cursors if c.get("folder") == folder), None)
        if cursor is not None and cursor.get("initial_done"):
            folder_total = ev[1] if ev else folder_done
            folder_done = folder_total
        elif ev:
            folder_total = ev[1]
        else:
            known_total = False
            folder_total = folder_done
        done += folder_done
        total += max(folder_total, folder_done)
    if completed:
        return Progress(max(done, total), max(done, total), True)
    return Progress(done, total if known_total and folders else None, False)


def shown_status(status: str, prog: Progress, live: str | None = None) -> str:
    """The registry keeps `connecting` while the inbox runs (paused, removed, ... are its word); the
    sync engine's live status (`sync_state.live_status`) tells more, and failing that the progress."""
    if status in RUNNING_STATUSES and live:
        return live
    if status == "connecting" and prog.completed:
        return "idle"
    if status == "connecting" and (prog.done or prog.total):
        return "syncing"
    return status


class ConsoleData:
    def __init__(self, db: AsyncDatabase[Document], events: EventLog) -> None:
        self.db = db
        self.events = events
        self._counts: dict[str, tuple[float, int | None]] = {}
        self._tenant_counts: dict[str, tuple[float, dict[str, int] | None]] = {}

    async def cursors(self, tenant: str, inbox_id: str) -> list[Document]:
        query = {"tenant_id": tenant, "inbox_id": inbox_id}
        return [c async for c in self.db[CURSORS].find(query).sort("folder", 1).limit(200)]

    async def sync_state(self, tenant: str, inbox_id: str) -> Document | None:
        return await self.db[SYNC_STATE].find_one({"_id": f"{tenant}:{inbox_id}"})

    async def message_count(self, tenant: str, inbox_id: str, max_age: float = 2.0) -> int | None:
        key = f"{tenant}:{inbox_id}"
        cached = self._counts.get(key)
        if cached and time.monotonic() - cached[0] < max_age:
            return cached[1]
        try:
            n: int | None = await self.db[MESSAGES].count_documents(
                {"tenant_id": tenant, "inbox_id": inbox_id, "deleted": False}, maxTimeMS=3000
            )
        except PyMongoError:
            n = None
        self._counts[key] = (time.monotonic(), n)
        return n

    async def tenant_counts(self, tenant: str, max_age: float = 2.0) -> dict[str, int] | None:
        """Stored (not deleted) messages per inbox of a tenant, in one aggregation."""
        key = f"{tenant}:*"
        cached = self._tenant_counts.get(key)
        if cached and time.monotonic() - cached[0] < max_age:
            return cached[1]
        pipeline: list[dict[str, Any]] = [
            {"$match": {"tenant_id": tenant, "deleted": False}},
            {"$group": {"_id": "$inbox_id", "n": {"$sum": 1}}},
        ]
        counts: dict[str, int] | None
        try:
            cursor = await self.db[MESSAGES].aggregate(pipeline, maxTimeMS=5000)
            counts = {str(d["_id"]): int(d["n"]) async for d in cursor}
        except PyMongoError:
            counts = None
        self._tenant_counts[key] = (time.monotonic(), counts)
        return counts

    async def live_rows(self, tenant: str, inbox_views: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The moving parts of each inbox row (polled by the pages): one query per collection for a
        whole tenant, per-inbox queries for a single inbox."""
        if len(inbox_views) == 1:
            inbox_id = str(inbox_views[0]["inbox_id"])
            cursors = {inbox_id: await self.cursors(tenant, inbox_id)}
            state = await self.sync_state(tenant, inbox_id)
            states = {inbox_id: state} if state else {}
            n = await self.message_count(tenant, inbox_id)
            counts: dict[str, int] | None = None if n is None else {inbox_id: n}
        else:
            cursors = {}
            async for c in self.db[CURSORS].find({"tenant_id": tenant}).sort("folder", 1).limit(50_000):
                cursors.setdefault(str(c.get("inbox_id")), []).append(c)
            states = {
                str(d.get("inbox_id")): d async for d in self.db[SYNC_STATE].find({"tenant_id": tenant})
            }
            counts = await self.tenant_counts(tenant) if inbox_views else {}
        return [
            self._live(
                tenant,
                view,
                cursors.get(str(view["inbox_id"]), []),
                states.get(str(view["inbox_id"])),
                None if counts is None else counts.get(str(view["inbox_id"]), 0),
            )
            for view in inbox_views
        ]

    def _live(
        self,
        tenant: str,
        inbox_view: dict[str, Any],
        cursors: list[Document],
        state: Document | None,
        messages: int | None,
    ) -> dict[str, Any]:
        inbox_id = str(inbox_view["inbox_id"])
        ev = self.events.inbox(tenant, inbox_id)
        stats = self.events.messages.get(inbox_id)
        prog = progress(cursors, state, ev)
        last_sync = _latest(
            [stats.last_at if stats else None, *(_aware(c.get("last_reconciled_at")) for c in cursors)]
        )
        now = datetime.now(UTC)
        throttled = ev.throttled_until if ev and ev.throttled_until and ev.throttled_until > now else None
        return {
            "inbox_id": inbox_id,
            "status": shown_status(
                str(inbox_view.get("status")),
                prog,
                str(state["live_status"]) if state and state.get("live_status") else None,
            ),
            "registry_status": inbox_view.get("status"),
            "status_reason": inbox_view.get("status_reason"),
            "progress": prog.as_dict(),
            "messages": messages,
            "last_sync": last_sync.isoformat() if last_sync else None,
            "failure": _failure(ev),
            "throttled_until": throttled.isoformat() if throttled else None,
            "throttled_limit": ev.throttled_limit if throttled and ev else None,
            "deactivation": _deactivation(ev),
        }


def _aware(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


def _latest(values: list[datetime | None]) -> datetime | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _failure(ev: InboxEvents | None) -> dict[str, Any] | None:
    if ev is None or ev.failure is None:
        return None
    f = ev.failure
    retry = f.get("retry_at")
    return {
        "type": f["type"],
        "error": f.get("error"),
        "retry_at": retry.isoformat() if isinstance(retry, datetime) else None,
    }


def _deactivation(ev: InboxEvents | None) -> dict[str, Any] | None:
    if ev is None or ev.deactivation is None:
        return None
    at = ev.deactivation.get("deactivate_at")
    return {"reason": ev.deactivation.get("reason"), "deactivate_at": at.isoformat() if at else None}
