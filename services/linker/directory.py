"""The CRM directory: records and the address → records index, kept from CRM events.

Writes are ordered so a crash at any point is repaired by redelivery: the address index is updated
first (diffed against the stored record), the record last; a replay recomputes the same diff.
Older revisions of a record are ignored, so out-of-order or duplicate CRM events are harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from contracts import Envelope
from contracts.crm import CrmRecordDeleted, CrmRecordUpserted
from mailsync.store import Document

from .addresses import normalize_all

RECORDS = "crm_records"
ADDRESSES = "crm_addresses"
# One counter per tenant, bumped after every applied record change: a reader that cached a tenant's
# directory knows whether it is still current with one read of a tiny collection.
VERSIONS = "crm_directory_versions"


@dataclass(frozen=True)
class AddressChange:
    """Addresses whose matches changed when a record changed: the history to relink."""

    tenant_id: str
    record_id: str
    emails: frozenset[str]
    cause: str


def _cause(added: set[str], removed: set[str], deleted: bool) -> str:
    if deleted:
        return "record.deleted"
    if added and removed:
        return "record.address_changed"
    return "record.address_added" if added else "record.address_removed"


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

    async def apply(self, event: Envelope[Any]) -> AddressChange | None:
        """Apply a CRM record event; returns the addresses whose history must be relinked.

        The change is also kept on the record (`relink_pending`) until `relinked` is called, so a crash
        between this write and the relinking is repaired when the event is redelivered.
        """
        if isinstance(event, CrmRecordUpserted):
            return await self.upsert(event)
        if isinstance(event, CrmRecordDeleted):
            return await self.delete(event)
        return None

    async def relinked(self, change: AddressChange) -> None:
        key = record_key(change.tenant_id, change.record_id)
        await self._db[RECORDS].update_one({"_id": key}, {"$set": {"relink_pending": []}})

    @staticmethod
    def _change(
        tenant: str,
        record_id: str,
        stored: Document | None,
        added: set[str],
        removed: set[str],
        *,
        deleted: bool,
    ) -> AddressChange | None:
        pending = set(stored.get("relink_pending") or []) if stored else set()
        emails = added | removed | pending
        if not emails:
            return None
        if added or removed:
            cause = _cause(added, removed, deleted)
        else:  # a redelivery after a crash: finish the relinking the first delivery started
            cause = (stored or {}).get("relink_cause") or "record.upserted"
        return AddressChange(tenant, record_id, frozenset(emails), cause)

    async def _stored(self, key: str) -> Document | None:
        return await self._db[RECORDS].find_one({"_id": key})

    async def upsert(self, event: CrmRecordUpserted) -> AddressChange | None:
        d, tenant = event.data, event.tenant_id
        key = record_key(tenant, d.record_id)
        stored = await self._stored(key)
        if stored is not None and stored["revision"] > d.revision:
            return None  # a newer revision is already applied
        emails, invalid = normalize_all([d.primary_email, *d.secondary_emails], strip_plus=self._strip_plus)
        old = set(stored["emails"]) if stored and not stored.get("deleted") else set()
        change = self._change(tenant, d.record_id, stored, emails - old, old - emails, deleted=False)
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
                "relink_pending": sorted(change.emails) if change else [],
                "relink_cause": change.cause if change else None,
            },
            upsert=True,
        )
        await self._bump(tenant)
        return change

    async def delete(self, event: CrmRecordDeleted) -> AddressChange | None:
        d, tenant = event.data, event.tenant_id
        key = record_key(tenant, d.record_id)
        stored = await self._stored(key)
        if stored is not None and stored["revision"] > d.revision:
            return None
        old = set(stored["emails"]) if stored and not stored.get("deleted") else set()
        change = self._change(tenant, d.record_id, stored, set(), old, deleted=True)
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
                "relink_pending": sorted(change.emails) if change else [],
                "relink_cause": change.cause if change else None,
            },
            upsert=True,
        )
        await self._bump(tenant)
        return change

    async def _bump(self, tenant: str) -> None:
        # After every write of the change, before its relink (the caller's): MongoLinkStore caches by it.
        await self._db[VERSIONS].update_one({"_id": tenant}, {"$inc": {"version": 1}}, upsert=True)

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
