"""Per-folder sync cursor (collection `sync_cursors`, `_id` = `tenant:inbox:folder`).

A cursor is written only after Kafka acknowledged every event up to it, so a crash replays (same event
ids) and never skips. The initial sync runs newest first: `initial_below` is the lowest UID already
done, so a restart resumes below it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pymongo.asynchronous.database import AsyncDatabase

CURSORS = "sync_cursors"


class FolderCursor(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str = Field(alias="_id")
    tenant_id: str
    inbox_id: str
    folder: str
    uidvalidity: int
    uidnext: int = Field(description="UIDs below this were seen (synced or outside the window).")
    highestmodseq: int | None = None
    exists: int = 0
    # Initial (backfill) sync, newest first, of UIDs below `initial_high`.
    initial_done: bool = False
    initial_high: int = 0
    initial_below: int = 0
    initial_done_count: int = 0
    initial_since: datetime | None = None
    run_id: str = ""
    # Bodies of the backfill, after its headers, newest first below `bodies_below`.
    bodies_below: int = 0
    bodies_done: bool = False
    rebuild: bool = Field(default=False, description="A UIDVALIDITY change is being rebuilt.")
    previous_uidvalidity: int | None = None
    repairs: int = Field(default=0, description="Drift repaired by reconciliation; each one is a bug.")
    last_reconciled_at: datetime | None = None


class CursorStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._col = db[CURSORS]

    async def load(self, key: str) -> FolderCursor | None:
        doc = await self._col.find_one({"_id": key})
        return None if doc is None else FolderCursor.model_validate(doc)

    async def save(self, cursor: FolderCursor) -> None:
        doc = cursor.model_dump(by_alias=True)
        await self._col.replace_one({"_id": cursor.id}, doc, upsert=True)

    async def delete_inbox(self, tenant_id: str, inbox_id: str) -> None:
        await self._col.delete_many({"tenant_id": tenant_id, "inbox_id": inbox_id})
