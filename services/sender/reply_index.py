"""Which Message-ID and References a reply answers: an index of synced messages by message key.

Fed from `mailsync.messages.v1` (the fetcher's `message received`); a send request's
`in_reply_to_message_key` is looked up here to set In-Reply-To and References. Insert-only.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from contracts import Envelope
from contracts.messages import MessageReceived
from mailsync.store import Document, insert_new

from .delivery import REPLY_CONTEXT


def _bracket(mid: str) -> str:
    mid = mid.strip()
    return mid if mid.startswith("<") else f"<{mid}>"


class ReplyIndex:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db

    async def apply_batch(self, events: list[Envelope[Any]]) -> None:
        """One insert for a poll's worth of messages; entries indexed before stay as they are."""
        docs = {d["_id"]: d for d in map(self._doc, events) if d is not None}
        if not docs:
            return
        await insert_new(self._db[REPLY_CONTEXT], list(docs.values()))

    async def apply(self, event: Envelope[Any]) -> None:
        doc = self._doc(event)
        if doc is not None:
            with contextlib.suppress(DuplicateKeyError):
                await self._db[REPLY_CONTEXT].insert_one(doc)

    @staticmethod
    def _doc(event: Envelope[Any]) -> dict[str, Any] | None:
        if not isinstance(event, MessageReceived) or not event.data.message_id:
            return None
        data = event.data
        assert data.message_id is not None
        return {
            "_id": f"{event.tenant_id}:{event.inbox_id}:{data.ref.message_key}",
            "message_id": _bracket(data.message_id),
            "references": [_bracket(r) for r in data.references][-20:],
            "subject": data.subject,
        }
