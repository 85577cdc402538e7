"""Plain inserts of new documents where a duplicate `_id` means a replay, not an error.

Plain inserts, not upserts: on FerretDB an upsert is a read and a write (~60x slower). Splitting a
batch into concurrent requests was measured too (bench/sync.py, 20,000 messages, 1 vs 4 requests):
no gain while this process and FerretDB already share the machine's two cores, so one request.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

DUPLICATE_KEY = 11000


async def insert_new(col: AsyncCollection[dict[str, Any]], docs: list[dict[str, Any]]) -> None:
    """Insert `docs`; a duplicate `_id` is a replay of a document already stored (same content)."""
    if not docs:
        return
    try:
        await col.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
            raise
