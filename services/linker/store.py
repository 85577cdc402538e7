"""The linker's storage behind one small interface, with a MongoDB and an in-memory implementation.

Collections (MongoDB): `link_messages` (one document per email: facts, participants, links, thread,
signals and an outbox of events not yet acknowledged by Kafka), `link_participants` (the address →
messages index that makes relinking cheap), `discovered_contacts` (once per address). It reads the
directory (`crm_records`, `crm_addresses`) and the inbox registry (`inboxes`, written by the fetcher).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from mailsync.store import Document

from .directory import ADDRESSES, RECORDS, address_key, record_key
from .discovery_rules import Policy
from .link_rules import RecordRef
from .sharing import Sharing

MESSAGES = "link_messages"
PARTICIPANTS = "link_participants"
CONTACTS = "discovered_contacts"
THREADS = "link_threads"
INBOXES = "inboxes"
DUPLICATE_KEY = 11000


@dataclass(frozen=True)
class InboxView:
    """What the linker needs of an inbox registry document."""

    tenant_id: str
    inbox_id: str
    owner_user_id: str
    email: str
    aliases: tuple[str, ...] = ()
    sharing: Sharing = "private"
    shared_with: tuple[str, ...] = ()
    contact_discovery: Policy = "off"

    @classmethod
    def from_doc(cls, doc: Document) -> InboxView:
        return cls(
            tenant_id=doc["tenant_id"],
            inbox_id=doc["inbox_id"],
            owner_user_id=doc.get("owner_user_id", ""),
            email=doc.get("email", ""),
            aliases=tuple(doc.get("additional_from") or ()),
            sharing=doc.get("sharing") or "private",
            shared_with=tuple(doc.get("shared_with") or ()),
            contact_discovery=doc.get("contact_discovery") or "off",
        )


Cursor = tuple[datetime, str]


class LinkStore(Protocol):
    async def inbox(self, tenant: str, inbox_id: str) -> InboxView | None: ...
    async def inboxes(self, tenant: str) -> list[InboxView]: ...
    async def records_for(self, tenant: str, emails: Collection[str]) -> dict[str, list[RecordRef]]: ...
    async def record_exists(self, tenant: str, record_id: str) -> bool: ...
    async def get_message(self, doc_id: str) -> Document | None: ...
    async def insert_message(self, doc: Document) -> None: ...
    async def update_message(self, doc_id: str, rev: int, sets: Document, outbox: list[Document]) -> bool: ...
    async def patch_message(self, doc_id: str, sets: Document) -> None: ...
    async def pull_outbox(self, doc_id: str, entries: list[Document]) -> None: ...
    async def index_participants(self, tenant: str, doc_id: str, emails: Iterable[str]) -> None: ...
    async def messages_with(self, tenant: str, emails: Collection[str]) -> list[str]: ...
    async def by_message_ids(self, tenant: str, message_ids: Collection[str]) -> list[Document]: ...
    async def sent_in_thread(self, tenant: str, thread_id: str) -> Document | None: ...
    async def track_thread(self, tenant: str, thread_id: str, sent: Document) -> None: ...
    async def retarget_thread(self, tenant: str, old: str, new: str) -> None: ...
    async def claim_contact(self, tenant: str, email: str, doc_id: str) -> bool: ...
    async def linked(
        self, tenant: str, record_id: str, inbox_ids: Collection[str], after: Cursor | None, limit: int
    ) -> list[Document]: ...


# Inbox registry documents change rarely; linking reads them for every message.
INBOX_CACHE_SECONDS = 5.0


class MongoLinkStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db
        self._inbox_cache: dict[tuple[str, str], tuple[float, InboxView | None]] = {}

    async def ensure_indexes(self) -> None:
        m = self._db[MESSAGES]
        await m.create_index([("tenant_id", ASCENDING), ("message_id", ASCENDING)])
        await m.create_index([("tenant_id", ASCENDING), ("thread_id", ASCENDING)])
        await m.create_index([("tenant_id", ASCENDING), ("record_ids", ASCENDING), ("sort_at", DESCENDING)])
        await self._db[PARTICIPANTS].create_index([("tenant_id", ASCENDING), ("email", ASCENDING)])

    async def inbox(self, tenant: str, inbox_id: str) -> InboxView | None:
        now = time.monotonic()
        hit = self._inbox_cache.get((tenant, inbox_id))
        if hit and now - hit[0] < INBOX_CACHE_SECONDS:
            return hit[1]
        doc = await self._db[INBOXES].find_one({"_id": f"{tenant}:{inbox_id}"})
        view = InboxView.from_doc(doc) if doc else None
        self._inbox_cache[(tenant, inbox_id)] = (now, view)
        return view

    async def inboxes(self, tenant: str) -> list[InboxView]:
        return [InboxView.from_doc(d) async for d in self._db[INBOXES].find({"tenant_id": tenant})]

    async def records_for(self, tenant: str, emails: Collection[str]) -> dict[str, list[RecordRef]]:
        # One find by _id per key, concurrently: FerretDB v1 answers `_id: {$in: …}` with a scan.
        keys = sorted(emails)
        found = await asyncio.gather(
            *(self._db[ADDRESSES].find_one({"_id": address_key(tenant, e)}) for e in keys)
        )
        ids_by_email = {
            e: list(d["record_ids"]) for e, d in zip(keys, found, strict=True) if d and d.get("record_ids")
        }
        wanted = sorted({rid for ids in ids_by_email.values() for rid in ids})
        if not wanted:
            return {}
        records = await asyncio.gather(
            *(
                self._db[RECORDS].find_one({"_id": record_key(tenant, r)}, {"record_type": 1, "deleted": 1})
                for r in wanted
            )
        )
        types = {
            r: d["record_type"] for r, d in zip(wanted, records, strict=True) if d and not d.get("deleted")
        }
        return {
            e: [RecordRef(rid, types[rid]) for rid in sorted(ids) if rid in types]
            for e, ids in ids_by_email.items()
        }

    async def record_exists(self, tenant: str, record_id: str) -> bool:
        doc = await self._db[RECORDS].find_one({"_id": record_key(tenant, record_id), "deleted": False})
        return doc is not None

    async def get_message(self, doc_id: str) -> Document | None:
        return await self._db[MESSAGES].find_one({"_id": doc_id})

    async def insert_message(self, doc: Document) -> None:
        await self._db[MESSAGES].update_one({"_id": doc["_id"]}, {"$setOnInsert": doc}, upsert=True)

    async def update_message(self, doc_id: str, rev: int, sets: Document, outbox: list[Document]) -> bool:
        update: Document = {"$set": {**sets, "rev": rev + 1}}
        if outbox:
            update["$push"] = {"outbox": {"$each": outbox}}
        res = await self._db[MESSAGES].update_one({"_id": doc_id, "rev": rev}, update)
        return res.matched_count == 1

    async def patch_message(self, doc_id: str, sets: Document) -> None:
        await self._db[MESSAGES].update_one({"_id": doc_id}, {"$set": sets})

    async def pull_outbox(self, doc_id: str, entries: list[Document]) -> None:
        # $pullAll with whole entries: FerretDB v1 ignores $pull with a condition on a subfield.
        await self._db[MESSAGES].update_one({"_id": doc_id}, {"$pullAll": {"outbox": entries}})

    async def index_participants(self, tenant: str, doc_id: str, emails: Iterable[str]) -> None:
        docs = [
            {"_id": f"{tenant}:{e}:{doc_id}", "tenant_id": tenant, "email": e, "doc_id": doc_id}
            for e in sorted(set(emails))
        ]
        if not docs:
            return
        try:
            await self._db[PARTICIPANTS].insert_many(docs, ordered=False)
        except BulkWriteError as exc:  # entries from an earlier delivery are fine; anything else is not
            if any(err.get("code") != DUPLICATE_KEY for err in exc.details.get("writeErrors", [])):
                raise

    async def messages_with(self, tenant: str, emails: Collection[str]) -> list[str]:
        if not emails:
            return []
        cursor = self._db[PARTICIPANTS].find(
            {"tenant_id": tenant, "email": {"$in": list(emails)}}, {"doc_id": 1}
        )
        return sorted({d["doc_id"] async for d in cursor})

    async def by_message_ids(self, tenant: str, message_ids: Collection[str]) -> list[Document]:
        projection = {"message_id": 1, "thread_id": 1, "send_id": 1}
        found = await asyncio.gather(
            *(
                self._db[MESSAGES].find_one({"tenant_id": tenant, "message_id": mid}, projection)
                for mid in sorted(set(message_ids))
            )
        )
        return [d for d in found if d is not None]

    async def sent_in_thread(self, tenant: str, thread_id: str) -> Document | None:
        d = await self._db[THREADS].find_one({"_id": f"{tenant}:{thread_id}"})
        return (
            {"_id": d["doc_id"], "message_id": d.get("message_id"), "send_id": d.get("send_id")}
            if d
            else None
        )

    async def track_thread(self, tenant: str, thread_id: str, sent: Document) -> None:
        """Remember that a thread holds mail mailsync sent (the first such message answers for it)."""
        await self._db[THREADS].update_one(
            {"_id": f"{tenant}:{thread_id}"},
            {
                "$setOnInsert": {
                    "tenant_id": tenant,
                    "thread_id": thread_id,
                    "doc_id": sent["_id"],
                    "message_id": sent.get("message_id"),
                    "send_id": sent.get("send_id"),
                }
            },
            upsert=True,
        )

    async def retarget_thread(self, tenant: str, old: str, new: str) -> None:
        await self._db[MESSAGES].update_many(
            {"tenant_id": tenant, "thread_id": old}, {"$set": {"thread_id": new}}
        )
        tracked = await self.sent_in_thread(tenant, old)
        if tracked is not None:
            await self.track_thread(tenant, new, tracked)

    async def claim_contact(self, tenant: str, email: str, doc_id: str) -> bool:
        key = f"{tenant}:{email}"
        await self._db[CONTACTS].update_one(
            {"_id": key},
            {"$setOnInsert": {"tenant_id": tenant, "email": email, "first_doc": doc_id}},
            upsert=True,
        )
        doc = await self._db[CONTACTS].find_one({"_id": key})
        return doc is not None and doc["first_doc"] == doc_id

    async def linked(
        self, tenant: str, record_id: str, inbox_ids: Collection[str], after: Cursor | None, limit: int
    ) -> list[Document]:
        query: Document = {
            "tenant_id": tenant,
            "record_ids": record_id,
            "inbox_id": {"$in": list(inbox_ids)},
            "deleted": False,
        }
        if after is not None:
            at, last_id = after
            query["$or"] = [{"sort_at": {"$lt": at}}, {"sort_at": at, "_id": {"$lt": last_id}}]
        cursor = (
            self._db[MESSAGES]
            .find(query, {"outbox": 0, "participants": 0})
            .sort([("sort_at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit)
        )
        return [d async for d in cursor]


class MemoryLinkStore:
    """The same interface over dicts: unit tests and the benchmark's directory."""

    def __init__(self) -> None:
        self.inbox_docs: dict[tuple[str, str], InboxView] = {}
        self.addresses: dict[tuple[str, str], list[RecordRef]] = {}
        self.records: dict[tuple[str, str], RecordRef] = {}
        self.messages: dict[str, Document] = {}
        self.participants: dict[tuple[str, str], set[str]] = {}
        self.contacts: dict[tuple[str, str], str] = {}
        self.threads: dict[tuple[str, str], Document] = {}

    def add_record(self, tenant: str, ref: RecordRef, emails: Iterable[str]) -> None:
        self.records[(tenant, ref.record_id)] = ref
        for e in emails:
            self.addresses.setdefault((tenant, e), []).append(ref)

    def remove_record(self, tenant: str, record_id: str) -> None:
        self.records.pop((tenant, record_id), None)
        for refs in self.addresses.values():
            refs[:] = [r for r in refs if r.record_id != record_id]

    async def inbox(self, tenant: str, inbox_id: str) -> InboxView | None:
        return self.inbox_docs.get((tenant, inbox_id))

    async def inboxes(self, tenant: str) -> list[InboxView]:
        return [v for (t, _), v in self.inbox_docs.items() if t == tenant]

    async def records_for(self, tenant: str, emails: Collection[str]) -> dict[str, list[RecordRef]]:
        out: dict[str, list[RecordRef]] = {}
        for e in emails:
            refs = self.addresses.get((tenant, e))
            if refs:
                out[e] = sorted(refs, key=lambda r: r.record_id)
        return out

    async def record_exists(self, tenant: str, record_id: str) -> bool:
        return (tenant, record_id) in self.records

    async def get_message(self, doc_id: str) -> Document | None:
        doc = self.messages.get(doc_id)
        return {**doc, "outbox": list(doc.get("outbox", []))} if doc else None

    async def insert_message(self, doc: Document) -> None:
        self.messages.setdefault(doc["_id"], dict(doc))

    async def update_message(self, doc_id: str, rev: int, sets: Document, outbox: list[Document]) -> bool:
        doc = self.messages.get(doc_id)
        if doc is None or doc.get("rev") != rev:
            return False
        doc.update(sets)
        doc["rev"] = rev + 1
        doc["outbox"] = [*doc.get("outbox", []), *outbox]
        return True

    async def patch_message(self, doc_id: str, sets: Document) -> None:
        self.messages[doc_id].update(sets)

    async def pull_outbox(self, doc_id: str, entries: list[Document]) -> None:
        doc = self.messages[doc_id]
        doc["outbox"] = [e for e in doc.get("outbox", []) if e not in entries]

    async def index_participants(self, tenant: str, doc_id: str, emails: Iterable[str]) -> None:
        for e in emails:
            self.participants.setdefault((tenant, e), set()).add(doc_id)

    async def messages_with(self, tenant: str, emails: Collection[str]) -> list[str]:
        return sorted({d for e in emails for d in self.participants.get((tenant, e), ())})

    async def by_message_ids(self, tenant: str, message_ids: Collection[str]) -> list[Document]:
        ids = set(message_ids)
        return [d for d in self.messages.values() if d["tenant_id"] == tenant and d.get("message_id") in ids]

    async def sent_in_thread(self, tenant: str, thread_id: str) -> Document | None:
        return self.threads.get((tenant, thread_id))

    async def track_thread(self, tenant: str, thread_id: str, sent: Document) -> None:
        entry = {"_id": sent["_id"], "message_id": sent.get("message_id"), "send_id": sent.get("send_id")}
        self.threads.setdefault((tenant, thread_id), entry)

    async def retarget_thread(self, tenant: str, old: str, new: str) -> None:
        for d in self.messages.values():
            if d["tenant_id"] == tenant and d.get("thread_id") == old:
                d["thread_id"] = new
        tracked = self.threads.get((tenant, old))
        if tracked is not None:
            self.threads.setdefault((tenant, new), tracked)

    async def claim_contact(self, tenant: str, email: str, doc_id: str) -> bool:
        return self.contacts.setdefault((tenant, email), doc_id) == doc_id

    async def linked(
        self, tenant: str, record_id: str, inbox_ids: Collection[str], after: Cursor | None, limit: int
    ) -> list[Document]:
        rows = [
            d
            for d in self.messages.values()
            if d["tenant_id"] == tenant
            and record_id in d.get("record_ids", [])
            and d["inbox_id"] in inbox_ids
            and not d.get("deleted")
        ]
        rows.sort(key=lambda d: (d["sort_at"], d["_id"]), reverse=True)
        if after is not None:
            rows = [d for d in rows if (d["sort_at"], d["_id"]) < after]
        return rows[:limit]
