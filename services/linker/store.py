"""The linker's storage behind one small interface, with a MongoDB and an in-memory implementation.

Collections (MongoDB): `link_messages` (one document per email: facts, participants, links, thread,
signals and an outbox of events not yet acknowledged by Kafka), `link_participants` (the address →
messages index that makes relinking cheap), `discovered_contacts` (once per address). It reads the
directory (`crm_records`, `crm_addresses`) and the inbox registry (`inboxes`, written by the fetcher).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from mailsync.store import Document, insert_new

from .directory import ADDRESSES, RECORDS, VERSIONS, address_key, record_key
from .discovery_rules import Policy
from .link_rules import RecordRef
from .sharing import Sharing

MESSAGES = "link_messages"
PARTICIPANTS = "link_participants"
CONTACTS = "discovered_contacts"
THREADS = "link_threads"
INBOXES = "inboxes"
# Batch linking (see Linker.handle_batch): messages ever seen (insert-only, so "new?" costs no filter),
# events of a batch between storing and publishing, and relinks that met a message not stored yet.
SEEN = "link_seen"
# Message-ID → thread of every settled message: small documents, so the batch's one read of them (FerretDB
# decodes every document of a collection per query) costs a fraction of reading `link_messages`.
MIDS = "link_mids"
OUTBOX = "link_outbox"
RELINK_NOTES = "link_relink_notes"

Key = tuple[str, str]  # (tenant, address | Message-ID | thread id)


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

    # ---- batch linking: a few queries for many messages (FerretDB v1 scans a collection per filter, even
    # an `_id` equality, while inserts are cheap; real MongoDB answers these from indexes) ----
    async def mark_seen(self, doc_ids: Sequence[str]) -> set[str]:
        """Remember messages as seen; returns those seen before."""
        ...

    async def get_messages(self, doc_ids: Collection[str]) -> dict[str, Document]: ...
    async def insert_messages(self, docs: Sequence[Document]) -> set[str]:
        """Insert new message documents; returns the ids that were already stored (left as they are)."""
        ...

    async def index_participants_many(self, entries: Sequence[tuple[str, str, Iterable[str]]]) -> None: ...
    async def records_for_keys(self, keys: Collection[Key]) -> dict[Key, list[RecordRef]]: ...
    async def thread_facts(self, message_ids: Collection[Key], thread_ids: Collection[Key]) -> list[Document]:
        """Stored messages naming one of these Message-IDs or in one of these threads, in storage order."""
        ...

    async def note_threads(self, docs: Sequence[Document]) -> None:
        """Remember settled messages' Message-IDs and threads (what `thread_facts` reads)."""
        ...

    async def tracked_threads(self, thread_ids: Collection[Key]) -> dict[Key, Document]: ...
    async def track_threads(self, entries: Sequence[tuple[str, str, Document]]) -> None: ...
    async def claim_contacts(self, claims: Sequence[tuple[str, str, str]]) -> set[Key]:
        """Claim (tenant, email) for a message each; returns the claims that message holds."""
        ...

    async def put_outbox(self, batch_id: str, doc_ids: Sequence[str], events: Sequence[Document]) -> None: ...
    async def pending_outboxes(self, doc_ids: Collection[str]) -> list[Document]: ...
    async def drop_outbox(self, batch_id: str) -> None: ...
    async def note_relink(self, doc_id: str, cause: str) -> None: ...
    async def relink_notes(self, doc_ids: Collection[str]) -> list[Document]: ...
    async def drop_relink_notes(self, note_ids: Collection[str]) -> None: ...


def _mid_entry(doc: Document) -> Document:
    return {
        "_id": f"{doc['tenant_id']}:{doc['message_id']}:{doc['_id']}",
        "tenant_id": doc["tenant_id"],
        "message_id": doc["message_id"],
        "thread_id": doc["thread_id"],
        "send_id": doc.get("send_id"),
    }


# Inbox registry documents change rarely; linking reads them for every message.
INBOX_CACHE_SECONDS = 5.0
# Up to this many documents, one `_id` query each beats one `$in` (which reads the whole collection).
FEW = 8


class MongoLinkStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db
        self._inbox_cache: dict[tuple[str, str], tuple[float, InboxView | None]] = {}
        self._scanning: bool | None = None
        # Scan mode only: tenant → (directory version, address → record ids, record id → type).
        self._directories: dict[str, tuple[int, dict[str, list[str]], dict[str, Any]]] = {}

    async def ensure_indexes(self) -> None:
        await self._backfill_mids()
        m = self._db[MESSAGES]
        await m.create_index([("tenant_id", ASCENDING), ("message_id", ASCENDING)])
        await m.create_index([("tenant_id", ASCENDING), ("thread_id", ASCENDING)])
        await m.create_index([("tenant_id", ASCENDING), ("record_ids", ASCENDING), ("sort_at", DESCENDING)])
        await self._db[PARTICIPANTS].create_index([("tenant_id", ASCENDING), ("email", ASCENDING)])

    async def _backfill_mids(self) -> None:
        """Messages settled before `link_mids` existed get their entries (once: while it is empty)."""
        if await self._db[MIDS].find_one({}, {"_id": 1}) is not None:
            return
        query = {"message_id": {"$ne": None}, "thread_id": {"$ne": None}}
        projection = {"tenant_id": 1, "message_id": 1, "thread_id": 1, "send_id": 1}
        docs = [d async for d in self._db[MESSAGES].find(query, projection)]
        for i in range(0, len(docs), 1000):
            await self.note_threads(docs[i : i + 1000])

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
        await insert_new(self._db[PARTICIPANTS], docs)  # entries from an earlier delivery stay

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
        await self._db[MIDS].update_many(
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

    # ---- batch linking ----

    async def mark_seen(self, doc_ids: Sequence[str]) -> set[str]:
        ids = list(dict.fromkeys(doc_ids))
        dups = await insert_new(self._db[SEEN], [{"_id": i} for i in ids])
        return {ids[i] for i in dups}

    async def get_messages(self, doc_ids: Collection[str]) -> dict[str, Document]:
        if not doc_ids:
            return {}
        if len(doc_ids) <= FEW:  # an `_id` equality stops at the match; `$in` reads every document
            found = await asyncio.gather(*(self.get_message(i) for i in sorted(doc_ids)))
            return {d["_id"]: d for d in found if d is not None}
        return {d["_id"]: d async for d in self._db[MESSAGES].find({"_id": {"$in": sorted(doc_ids)}})}

    async def insert_messages(self, docs: Sequence[Document]) -> set[str]:
        dups = await insert_new(self._db[MESSAGES], docs)
        return {docs[i]["_id"] for i in dups}

    async def index_participants_many(self, entries: Sequence[tuple[str, str, Iterable[str]]]) -> None:
        docs = [
            {"_id": f"{tenant}:{e}:{doc_id}", "tenant_id": tenant, "email": e, "doc_id": doc_id}
            for tenant, doc_id, emails in entries
            for e in sorted(set(emails))
        ]
        await insert_new(self._db[PARTICIPANTS], docs)

    async def _scans(self) -> bool:
        """Does the server read every document for any filter (FerretDB v1)? Then reading a tenant's whole
        directory costs less than an `$in` of thousands of keys, which it evaluates against each document;
        MongoDB answers the `$in` from the `_id` index."""
        if self._scanning is None:
            info = await self._db.client.admin.command("buildInfo")
            self._scanning = "ferretdbVersion" in info
        return self._scanning

    async def _by_ids(
        self, name: str, ids: dict[str, Key], projection: Document | None = None
    ) -> list[Document]:
        """The documents of `ids` (their `_id`s, keyed `tenant:…`), in one read per tenant or one `$in`."""
        col = self._db[name]
        if not await self._scans():
            return [d async for d in col.find({"_id": {"$in": sorted(ids)}}, projection)]
        # One read for all tenants of the batch: each tenant's keys as an `_id` range (`tenant:` … `tenant;`).
        ranges = [{"_id": {"$gte": f"{t}:", "$lt": f"{t};"}} for t in sorted({t for t, _ in ids.values()})]
        query = ranges[0] if len(ranges) == 1 else {"$or": ranges}
        return [d async for d in col.find(query, projection) if d["_id"] in ids]

    async def records_for_keys(self, keys: Collection[Key]) -> dict[Key, list[RecordRef]]:
        if not keys:
            return {}
        if await self._scans():
            return await self._cached_records_for_keys(keys)
        by_id = {address_key(t, e): (t, e) for t, e in keys}
        ids_by_key: dict[Key, list[str]] = {}
        for d in await self._by_ids(ADDRESSES, by_id):
            if d.get("record_ids"):
                ids_by_key[by_id[d["_id"]]] = list(d["record_ids"])
        wanted = {record_key(t, r): (t, r) for (t, _), rids in ids_by_key.items() for r in rids}
        types: dict[Key, Any] = {}
        if wanted:
            for d in await self._by_ids(RECORDS, wanted, {"record_type": 1, "deleted": 1}):
                if not d.get("deleted"):
                    types[wanted[d["_id"]]] = d["record_type"]
        return {
            (t, e): [RecordRef(r, types[(t, r)]) for r in sorted(rids) if (t, r) in types]
            for (t, e), rids in ids_by_key.items()
        }

    async def _cached_records_for_keys(self, keys: Collection[Key]) -> dict[Key, list[RecordRef]]:
        """On a server that reads whole collections anyway: each tenant's directory, read whole and kept
        while the tenant's directory version stays the same (one read of a tiny collection per batch).

        Safe against a change landing between the version read and this batch storing its messages: the
        directory bumps the version before the change's relink runs, and that relink finds the batch's
        messages in the participants index (written before this read) and settles them, or leaves a note
        the batch reads after storing them."""
        tenants = sorted({t for t, _ in keys})
        versions = {
            d["_id"]: int(d.get("version", 0))
            async for d in self._db[VERSIONS].find({"_id": {"$in": tenants}})
        }
        for tenant in tenants:
            version = versions.get(tenant, 0)
            cached = self._directories.get(tenant)
            if cached is None or cached[0] != version:
                self._directories[tenant] = (version, *await self._load_directory(tenant))
        out: dict[Key, list[RecordRef]] = {}
        for t, e in keys:
            _, addresses, types = self._directories[t]
            refs = [RecordRef(r, types[r]) for r in sorted(addresses.get(e, ())) if r in types]
            if refs:
                out[(t, e)] = refs
        return out

    async def _load_directory(self, tenant: str) -> tuple[dict[str, list[str]], dict[str, Any]]:
        key_range = {"_id": {"$gte": f"{tenant}:", "$lt": f"{tenant};"}, "tenant_id": tenant}
        addresses = {
            d["email"]: list(d["record_ids"])
            async for d in self._db[ADDRESSES].find(key_range, {"email": 1, "record_ids": 1})
            if d.get("record_ids")
        }
        types = {
            d["record_id"]: d["record_type"]
            async for d in self._db[RECORDS].find(key_range, {"record_id": 1, "record_type": 1, "deleted": 1})
            if not d.get("deleted")
        }
        return addresses, types

    async def thread_facts(self, message_ids: Collection[Key], thread_ids: Collection[Key]) -> list[Document]:
        ors: list[Document] = []
        if message_ids:
            ors.append({"message_id": {"$in": sorted({m for _, m in message_ids})}})
        if thread_ids:
            ors.append({"thread_id": {"$in": sorted({t for _, t in thread_ids})}})
        if not ors:
            return []
        cursor = self._db[MIDS].find(ors[0] if len(ors) == 1 else {"$or": ors})
        return [
            d
            async for d in cursor
            if (d["tenant_id"], d.get("message_id")) in message_ids
            or (d["tenant_id"], d.get("thread_id")) in thread_ids
        ]

    async def note_threads(self, docs: Sequence[Document]) -> None:
        await insert_new(
            self._db[MIDS], [_mid_entry(d) for d in docs if d.get("message_id") and d.get("thread_id")]
        )

    async def tracked_threads(self, thread_ids: Collection[Key]) -> dict[Key, Document]:
        if not thread_ids:
            return {}
        ids = sorted(f"{t}:{th}" for t, th in thread_ids)
        return {
            (d["tenant_id"], d["thread_id"]): {
                "_id": d["doc_id"],
                "message_id": d.get("message_id"),
                "send_id": d.get("send_id"),
            }
            async for d in self._db[THREADS].find({"_id": {"$in": ids}})
        }

    async def track_threads(self, entries: Sequence[tuple[str, str, Document]]) -> None:
        docs = [
            {
                "_id": f"{tenant}:{thread_id}",
                "tenant_id": tenant,
                "thread_id": thread_id,
                "doc_id": sent["_id"],
                "message_id": sent.get("message_id"),
                "send_id": sent.get("send_id"),
            }
            for tenant, thread_id, sent in entries
        ]
        await insert_new(self._db[THREADS], docs)  # the first message that tracked a thread stays

    async def claim_contacts(self, claims: Sequence[tuple[str, str, str]]) -> set[Key]:
        docs = [
            {"_id": f"{t}:{email}", "tenant_id": t, "email": email, "first_doc": doc_id}
            for t, email, doc_id in claims
        ]
        dups = await insert_new(self._db[CONTACTS], docs)
        won = {(t, email) for t, email, _ in claims}
        if dups:  # claimed before: by this message (a redelivery) or by another one
            holders = {
                d["_id"]: d.get("first_doc")
                async for d in self._db[CONTACTS].find({"_id": {"$in": [docs[i]["_id"] for i in dups]}})
            }
            for i in dups:
                t, email, doc_id = claims[i]
                if holders.get(docs[i]["_id"]) != doc_id:
                    won.discard((t, email))
        return won

    async def put_outbox(self, batch_id: str, doc_ids: Sequence[str], events: Sequence[Document]) -> None:
        doc = {"_id": batch_id, "doc_ids": list(doc_ids), "events": list(events), "at": datetime.now(UTC)}
        await self._db[OUTBOX].insert_one(doc)

    async def pending_outboxes(self, doc_ids: Collection[str]) -> list[Document]:
        # A small collection (batches between storing and publishing), so its scan is cheap.
        cursor = self._db[OUTBOX].find({"doc_ids": {"$in": sorted(doc_ids)}})
        return sorted([d async for d in cursor], key=lambda d: d["at"])

    async def drop_outbox(self, batch_id: str) -> None:
        await self._db[OUTBOX].delete_one({"_id": batch_id})

    async def note_relink(self, doc_id: str, cause: str) -> None:
        note = {"_id": uuid.uuid4().hex, "doc_id": doc_id, "cause": cause, "at": datetime.now(UTC)}
        await self._db[RELINK_NOTES].insert_one(note)

    async def relink_notes(self, doc_ids: Collection[str]) -> list[Document]:
        if not doc_ids:
            return []
        return [d async for d in self._db[RELINK_NOTES].find({"doc_id": {"$in": sorted(doc_ids)}})]

    async def drop_relink_notes(self, note_ids: Collection[str]) -> None:
        if note_ids:
            await self._db[RELINK_NOTES].delete_many({"_id": {"$in": sorted(note_ids)}})

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
        self.seen: set[str] = set()
        self.outboxes: dict[str, Document] = {}
        self.notes: dict[str, Document] = {}

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

    # ---- batch linking ----

    async def mark_seen(self, doc_ids: Sequence[str]) -> set[str]:
        before = {i for i in doc_ids if i in self.seen}
        self.seen.update(doc_ids)
        return before

    async def get_messages(self, doc_ids: Collection[str]) -> dict[str, Document]:
        found = {i: await self.get_message(i) for i in doc_ids}
        return {i: d for i, d in found.items() if d is not None}

    async def insert_messages(self, docs: Sequence[Document]) -> set[str]:
        dups = {d["_id"] for d in docs if d["_id"] in self.messages}
        for d in docs:
            self.messages.setdefault(d["_id"], dict(d))
        return dups

    async def index_participants_many(self, entries: Sequence[tuple[str, str, Iterable[str]]]) -> None:
        for tenant, doc_id, emails in entries:
            await self.index_participants(tenant, doc_id, emails)

    async def records_for_keys(self, keys: Collection[Key]) -> dict[Key, list[RecordRef]]:
        out: dict[Key, list[RecordRef]] = {}
        for t, e in keys:
            refs = self.addresses.get((t, e))
            if refs:
                out[(t, e)] = sorted(refs, key=lambda r: r.record_id)
        return out

    async def thread_facts(self, message_ids: Collection[Key], thread_ids: Collection[Key]) -> list[Document]:
        return [
            {k: d.get(k) for k in ("_id", "tenant_id", "message_id", "thread_id", "send_id")}
            for d in self.messages.values()
            if (d["tenant_id"], d.get("message_id")) in message_ids
            or (d["tenant_id"], d.get("thread_id")) in thread_ids
        ]

    async def note_threads(self, docs: Sequence[Document]) -> None:
        return None  # thread_facts reads the messages themselves

    async def tracked_threads(self, thread_ids: Collection[Key]) -> dict[Key, Document]:
        return {k: self.threads[k] for k in thread_ids if k in self.threads}

    async def track_threads(self, entries: Sequence[tuple[str, str, Document]]) -> None:
        for tenant, thread_id, sent in entries:
            await self.track_thread(tenant, thread_id, sent)

    async def claim_contacts(self, claims: Sequence[tuple[str, str, str]]) -> set[Key]:
        return {(t, e) for t, e, doc_id in claims if await self.claim_contact(t, e, doc_id)}

    async def put_outbox(self, batch_id: str, doc_ids: Sequence[str], events: Sequence[Document]) -> None:
        self.outboxes[batch_id] = {"_id": batch_id, "doc_ids": list(doc_ids), "events": list(events)}

    async def pending_outboxes(self, doc_ids: Collection[str]) -> list[Document]:
        return [o for o in self.outboxes.values() if set(o["doc_ids"]) & set(doc_ids)]

    async def drop_outbox(self, batch_id: str) -> None:
        self.outboxes.pop(batch_id, None)

    async def note_relink(self, doc_id: str, cause: str) -> None:
        note_id = uuid.uuid4().hex
        self.notes[note_id] = {"_id": note_id, "doc_id": doc_id, "cause": cause}

    async def relink_notes(self, doc_ids: Collection[str]) -> list[Document]:
        return [n for n in self.notes.values() if n["doc_id"] in doc_ids]

    async def drop_relink_notes(self, note_ids: Collection[str]) -> None:
        for i in note_ids:
            self.notes.pop(i, None)

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
