"""Which inboxes this fetcher replica syncs: registry scan + a lease per inbox (collection `sync_leases`).

Every `scan_interval` the manager reads the registry, renews its leases and takes free or expired ones.
A replica that dies stops renewing; after `lease_seconds` another replica takes its inboxes and resumes
them from their cursors (lease 20 s + scan 5 s: within 30 s). Inboxes that are paused, deactivated,
removed or failed authentication are stopped; a changed registry document (new credentials) restarts
its sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from mailsync.credentials import CredentialKeyError, Keyring
from mailsync.inbox_record import RUNNING_STATUSES, InboxRecord
from mailsync.store import insert_new

from .folder import Publisher
from .inbox import InboxSync, SyncConfig, shrink_tls_read_buffer

log = logging.getLogger("mailsync.fetcher.sync")
LEASES = "sync_leases"
ACTIVE = sorted(RUNNING_STATUSES)


def replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class _Running:
    task: asyncio.Task[None]
    revision: str


class SyncManager:
    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        publisher: Publisher,
        config: SyncConfig,
        source: str,
        *,
        scan_interval: float = 5.0,
        lease_seconds: float = 20.0,
        owner: str | None = None,
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._config = config
        self._source = source
        self._scan_interval = scan_interval
        self._lease = timedelta(seconds=lease_seconds)
        self.owner = owner or replica_id()
        self._running: dict[str, _Running] = {}
        self._connect_gate = asyncio.Semaphore(config.connect_concurrency)
        shrink_tls_read_buffer()
        self._invalid: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._keyring: Keyring | None = None
        try:
            self._keyring = Keyring.from_env()
        except CredentialKeyError as exc:
            log.error("no credential keys: inboxes cannot log in", extra={"error": str(exc)})

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="sync-manager")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # All at once: one by one, a replica holding thousands of inboxes (LOGOUT each) outlasts any
        # shutdown grace period.
        await asyncio.gather(*(self._stop_inbox(key) for key in list(self._running)))
        with contextlib.suppress(PyMongoError):
            await self._db[LEASES].delete_many({"owner": self.owner})

    async def _loop(self) -> None:
        while True:
            try:
                await self.scan()
            except PyMongoError as exc:
                log.warning("registry scan failed", extra={"error": str(exc)[:300]})
            except Exception:
                log.exception("registry scan crashed; retrying")  # the loop must outlive any bug
            await asyncio.sleep(self._scan_interval)

    async def scan(self) -> None:
        wanted: dict[str, dict[str, Any]] = {}
        async for doc in self._db["inboxes"].find({"status": {"$in": ACTIVE}}):
            wanted[doc["_id"]] = doc
        for key in list(self._running):
            if key not in wanted or self._running[key].task.done():
                await self._stop_inbox(key)
        held = await self._hold_all(list(wanted))
        for key, doc in wanted.items():
            if key not in held:
                if key in self._running:
                    log.warning("lease lost, stopping sync", extra={"inbox": key})
                    await self._stop_inbox(key)
                continue
            # A resync request (resume after deactivation, resync command) restarts the sync too.
            changed = doc.get("updated_at") or doc.get("created_at") or ""
            revision = f"{changed}|{doc.get('resync_requested_at') or ''}"
            running = self._running.get(key)
            if running is not None and running.revision != revision:
                await self._stop_inbox(key)
                running = None
            if running is None:
                self._start_inbox(key, doc, revision)

    async def _hold_all(self, keys: list[str]) -> set[str]:
        """Take or renew the leases of `keys` in a few round trips instead of one per inbox (a scan of
        thousands of inboxes must stay well inside the lease time); returns the keys held."""
        now = datetime.now(UTC)
        until = now + self._lease
        col = self._db[LEASES]
        await col.update_many({"owner": self.owner}, {"$set": {"expires_at": until}})
        leases = {d["_id"]: d async for d in col.find({}, {"owner": 1, "expires_at": 1})}
        held = {k for k in keys if leases.get(k, {}).get("owner") == self.owner}
        free = [k for k in keys if k not in leases]
        if free:
            # A duplicate: another replica took it first.
            taken = await insert_new(
                col, [{"_id": k, "owner": self.owner, "expires_at": until} for k in free]
            )
            lost = {free[i] for i in taken}
            held |= set(free) - lost
        for key in keys:
            lease = leases.get(key)
            if key in held or lease is None:
                continue
            expires = lease.get("expires_at")
            if isinstance(expires, datetime) and expires.replace(tzinfo=UTC) < now and await self._hold(key):
                held.add(key)
        return held

    async def _hold(self, key: str) -> bool:
        """Take or renew the inbox's lease; False when another live replica holds it."""
        now = datetime.now(UTC)
        try:
            doc = await self._db[LEASES].find_one_and_update(
                {"_id": key, "$or": [{"owner": self.owner}, {"expires_at": {"$lt": now}}]},
                {"$set": {"owner": self.owner, "expires_at": now + self._lease}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False
        return doc is not None and doc.get("owner") == self.owner

    def _start_inbox(self, key: str, doc: dict[str, Any], revision: str) -> None:
        # Other writers add bookkeeping fields (status_changed_at, resync_requested_at, ...).
        known = {f.alias or name for name, f in InboxRecord.model_fields.items()} | set(
            InboxRecord.model_fields
        )
        try:
            record = InboxRecord.model_validate({k: v for k, v in doc.items() if k in known})
        except ValidationError as exc:
            if self._invalid.get(key) != revision:  # say it once per document revision
                self._invalid[key] = revision
                log.error(
                    "inbox document invalid, not syncing", extra={"inbox": key, "error": str(exc)[:300]}
                )
            return
        sync = InboxSync(
            record,
            db=self._db,
            publisher=self._publisher,
            keyring=self._keyring,
            config=self._config,
            source=self._source,
            resync_requested_at=doc.get("resync_requested_at"),
            connect_gate=self._connect_gate,
        )
        task = asyncio.create_task(self._guard(key, sync), name=f"sync:{key}")
        self._running[key] = _Running(task, revision)
        log.info("sync started", extra={"inbox": key, "owner": self.owner})

    async def _guard(self, key: str, sync: InboxSync) -> None:
        try:
            await sync.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug must not take other inboxes down; the next scan restarts this one.
            log.exception("inbox sync crashed", extra={"inbox": key})

    async def _stop_inbox(self, key: str) -> None:
        running = self._running.pop(key, None)
        if running is None:
            return
        running.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running.task
        log.info("sync stopped", extra={"inbox": key})
