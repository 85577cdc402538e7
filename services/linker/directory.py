"""The CRM directory: records and the address → records index, kept from CRM events.

Writes are ordered so a crash at any point is repaired by redelivery: the address index is updated
first (diffed against the stored record), the record last; a replay recomputes the same diff.
Older revisions of a record are ignored, so out-of-order or duplicate CRM events are harmless.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from contracts import Envelope
from contracts.crm import CrmRecordDeleted, CrmRecordUpserted
from mailsync.store import Document

from .addresses import normalize_all

RECORDS = "crm_records"
ADDRESSES = "crm_addresses"


def record_key(tenant_id: str, record_id: str) -> str:
    return f"{tenant_id}:{record_id}"


def address_key(tenant_id: str, email: str) -> str:
    return f"{tenant_id}:{email}"


class Directory:
    def __init__(self, db: AsyncDatabase[Document], *, strip_plus: bool = False) -> None:
        self._db = db
        self._strip_plus = strip_plus

    async def ensure_indexes(self) -> None:
        await self._db[ADDRESSES].create_index([("tenant_id", 1), ("email", 1)], unique=True)

    async def apply(self, event: Envelope[Any]) -> None:
        if isinstance(event, CrmRecordUpserted):
            await self.upsert(event)
        elif isinstance(event, CrmRecordDeleted):
            await self.delete(event)

    async def _stored(self, key: str) -> Document | None:
        return await self._db[RECORDS].find_one({"_id": key})

    async def upsert(self, event: CrmRecordUpserted) -> None:
        d, tenant = event.data, event.tenant_id
        key = record_key(tenant, d.record_id)
        stored = await self._stored(key)
        if stored is not None and stored["revision"] > d.revision:
            return  # a newer revision is already applied
        emails, invalid = normalize_all([d.primary_email, *d.secondary_emails], strip_plus=self._strip_plus)
        old = set(stored["emails"]) if stored and not stored.get("deleted") else set()
        await self._reindex(tenant, d.record_id, add=emails - old, remove=old - emails)
        await self._db[RECORDS].replace_one(
            {"_id": key},
            {
                "_id": key,
                "tenant_id": tenant,
                "record_id": d.record_id,
                "record_type": d.record_type,
                "revision": d.revision,
                "owner_user_id": d.owner_user_id,
                "name": d.name,
                "primary_email": d.primary_email,
                "emails": sorted(emails),
                "invalid_emails": invalid,
                "deleted": False,
            },
            upsert=True,
        )

    async def delete(self, event: CrmRecordDeleted) -> None:
        d, tenant = event.data, event.tenant_id
        key = record_key(tenant, d.record_id)
        stored = await self._stored(key)
        if stored is not None and stored["revision"] > d.revision:
            return
        old = set(stored["emails"]) if stored and not stored.get("deleted") else set()
        await self._reindex(tenant, d.record_id, add=set(), remove=old)
        # A tombstone keeps the revision so a late, older upsert cannot resurrect the record.
        await self._db[RECORDS].replace_one(
            {"_id": key},
            {
                "_id": key,
                "tenant_id": tenant,
                "record_id": d.record_id,
                "record_type": d.record_type,
                "revision": d.revision,
                "emails": [],
                "deleted": True,
            },
            upsert=True,
        )

    async def _reindex(self, tenant: str, record_id: str, *, add: set[str], remove: set[str]) -> None:
        col = self._db[ADDRESSES]
        for email in sorted(add):
            await col.update_one(
                {"_id": address_key(tenant, email)},
                {"$set": {"tenant_id": tenant, "email": email}, "$addToSet": {"record_ids": record_id}},
                upsert=True,
            )
        for email in sorted(remove):
            await col.update_one({"_id": address_key(tenant, email)}, {"$pull": {"record_ids": record_id}})

    async def records_for(self, tenant: str, email: str) -> list[str]:
        doc = await self._db[ADDRESSES].find_one({"_id": address_key(tenant, email)})
        return sorted(doc["record_ids"]) if doc else []
