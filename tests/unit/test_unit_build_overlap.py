"""The initial sync builds a unit in slices, yielding between them: the tasks started just before the
build (the next FETCH, the previous unit's writes) run meanwhile instead of after it. Built in one
synchronous go, they sent nothing until it ended and the stages ran in turn (bench/sync.py: 100,000
messages took 43-49 s that way, 33-39 s in slices)."""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo import AsyncMongoClient

from contracts import Envelope
from services.fetcher.imap.protocol import Value
from services.fetcher.sync.folder import BUILD_SLICE, FolderSync, SyncTuning
from services.fetcher.sync.messages import FolderContext

CTX = FolderContext("t", "i", "INBOX", 1, "/test", frozenset())


class NoPublisher:
    async def publish_all(self, events: list[Envelope[Any]]) -> None:
        raise AssertionError("building a unit publishes nothing")


def header_items(uid: int) -> dict[str, Value]:
    head = f"From: a@example.com\r\nSubject: m {uid}\r\nMessage-ID: <m{uid}@example.com>\r\n\r\n".encode()
    return {"UID": uid, "FLAGS": [], "RFC822.SIZE": 100 + uid, "BODY[HEADER]": head}


async def test_tasks_started_before_a_unit_is_built_run_while_it_is_built() -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient("mongodb://127.0.0.1:9", connect=False)
    fs = FolderSync(CTX, db=client["unused"], publisher=NoPublisher(), tuning=SyncTuning())
    count = 3 * BUILD_SLICE
    building = True
    turns = 0

    async def other_stage() -> None:
        nonlocal turns
        while building:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(other_stage())
    batch, records = await fs._build_unit([header_items(u) for u in range(1, count + 1)], {}, inline=False)
    building = False
    await task
    assert records is None and len(batch.events) == len(batch.inserts) == count
    assert [e.data.ref.uid for e in batch.events] == list(range(count, 0, -1)), "newest first"
    assert turns >= 3, "the other stage ran once per slice at least, not only after the build"
    await client.close()
