"""One folder's sync pass: EXAMINE, then initial (newest first), rebuild or incremental work.

Order of writes for every batch: events to Kafka (acknowledged) → message documents → cursor. A crash
anywhere replays the batch with the same event ids; stored documents keep replays from emitting twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from contracts import Envelope
from contracts.common import MessageRef
from contracts.inbox import SyncProgress, SyncProgressData
from contracts.messages import MessageDeleted, MessageDeletedData, MessageUpdated, MessageUpdatedData
from mailsync import metrics
from services.fetcher.imap.protocol import Value
from services.fetcher.imap.seqset import chunks_desc, compress
from services.fetcher.imap.session import ImapSession, MailboxState

from .bodies import BodyStore, analyze
from .cursor import CursorStore, FolderCursor
from .messages import (
    GMAIL_ITEMS,
    HEADER_ITEMS,
    FetchedMessage,
    FolderContext,
    is_report,
    message_document,
    message_key,
    received_event,
)

MESSAGES = "messages"
DeleteReason = Literal["expunged", "moved", "uidvalidity_reset"]
log = logging.getLogger("mailsync.fetcher.sync")


class Publisher(Protocol):
    async def publish_all(self, events: Sequence[Envelope[Any]]) -> None: ...


@dataclass(frozen=True)
class SyncTuning:
    fetch_chunk: int = 500
    backfill_days: int | None = 90
    gmail: bool = False
    bodies: bool = True
    body_chunk: int = 250
    body_max_bytes: int = 25 * 1024 * 1024
    body_chunks_per_pass: int = 8  # bounds one pass, so new mail is not kept waiting by the backlog


@dataclass
class _Batch:
    events: list[Envelope[Any]] = field(default_factory=list)
    extra: list[Envelope[Any]] = field(default_factory=list)
    inserts: list[dict[str, Any]] = field(default_factory=list)
    writes: list[UpdateOne] = field(default_factory=list)


@dataclass
class PassResult:
    received: int = 0
    updated: int = 0
    deleted: int = 0
    repaired: int = 0
    bodies: int = 0
    vanished: int = 0  # expunges learnt from QRESYNC VANISHED (no UID set comparison)
    more: bool = False  # work left (body backlog): run the next pass at once instead of idling
    initial_completed_now: bool = False


def _uid(items: dict[str, Value]) -> int:
    uid = items.get("UID")
    return uid if isinstance(uid, int) else 0


def _size(items: dict[str, Value]) -> int:
    size = items.get("RFC822.SIZE")
    return size if isinstance(size, int) else 0


def _imap_date(dt: datetime) -> str:
    return dt.strftime("%d-%b-%Y")


class FolderSync:
    def __init__(
        self,
        ctx: FolderContext,
        *,
        db: AsyncDatabase[dict[str, Any]],
        publisher: Publisher,
        tuning: SyncTuning,
    ) -> None:
        self.ctx = ctx
        self._db = db
        self._messages = db[MESSAGES]
        self._cursors = CursorStore(db)
        self._bodies = BodyStore(db)
        self._publisher = publisher
        self._tuning = tuning
        self.cursor: FolderCursor | None = None

    @property
    def key(self) -> str:
        return f"{self.ctx.tenant_id}:{self.ctx.inbox_id}:{self.ctx.folder}"

    def _items(self, session: ImapSession) -> str:
        items = HEADER_ITEMS
        if "CONDSTORE" in session.capabilities:
            items += " MODSEQ"
        if self._tuning.gmail:
            items += GMAIL_ITEMS
        return items

    async def initial_done(self) -> bool:
        cur = await self._cursors.load(self.key)
        return bool(cur and cur.initial_done)

    async def run_pass(self, session: ImapSession, *, reconcile: bool = False) -> PassResult:
        # This worker is the cursor's only writer (it holds the inbox's lease): after the first pass the
        # copy in memory is current, and a pass woken by IDLE skips a store round trip.
        cur = self.cursor if self.cursor is not None else await self._cursors.load(self.key)
        # QRESYNC: the server tells what vanished since the cursor's MODSEQ (no UID set comparison).
        known = None
        if cur is not None and cur.initial_done and cur.highestmodseq:
            known = (cur.uidvalidity, cur.highestmodseq)
        state = await session.examine(self.ctx.folder, qresync=known)
        self.ctx = FolderContext(**{**self.ctx.__dict__, "uidvalidity": state.uidvalidity})
        result = PassResult()
        if cur is None:
            cur = self._fresh(state)
        elif cur.uidvalidity != state.uidvalidity:
            log.warning(
                "uidvalidity changed, rebuilding the folder mapping",
                extra={"inbox_id": self.ctx.inbox_id, "folder": self.ctx.folder},
            )
            old = cur.uidvalidity
            cur = self._fresh(state)
            cur.rebuild, cur.previous_uidvalidity = True, old
        self.cursor = cur
        if not cur.initial_done:
            await self._cursors.save(cur)
            await self._initial(session, cur, result)
            if cur.rebuild:
                await self._sweep_old_uidvalidity(cur, result)
            cur.initial_done, cur.rebuild = True, False
            await self._cursors.save(cur)
            result.initial_completed_now = True
        await self._incremental(session, state, cur, result, reconcile=reconcile)
        if self._tuning.bodies and not cur.bodies_done:
            result.more = await self._bodies_backlog(session, cur, result)
        return result

    # ---- bodies ---------------------------------------------------------------------------------

    async def _bodies_backlog(self, session: ImapSession, cur: FolderCursor, result: PassResult) -> bool:
        """Bodies of the backfilled messages, newest first, a bounded number of chunks per pass."""
        if cur.bodies_below == 0:
            cur.bodies_below = cur.initial_high
        if cur.bodies_below <= 1:
            cur.bodies_done = True
            await self._cursors.save(cur)
            return False
        # Search only a UID window below the mark: one pass costs the same whatever the mailbox size.
        budget = self._tuning.body_chunks_per_pass
        low = max(1, cur.bodies_below - budget * self._tuning.body_chunk)
        crit = f"UID {low}:{cur.bodies_below - 1}"
        if cur.initial_since is not None:
            crit += f" SINCE {_imap_date(cur.initial_since)}"
        uids = [u for u in await session.uid_search(crit) if low <= u < cur.bodies_below]
        for chunk in chunks_desc(uids, self._tuning.body_chunk):
            await self._fetch_bodies(session, chunk, result)
            cur.bodies_below = chunk[0]
            await self._cursors.save(cur)
        cur.bodies_below = low
        cur.bodies_done = low <= 1
        await self._cursors.save(cur)
        return not cur.bodies_done

    async def _fetch_bodies(self, session: ImapSession, uids: list[int], result: PassResult) -> None:
        """Store bodies, then say so with `message updated` (body_stored). Oversized: flagged only."""
        ctx = self.ctx
        extra = " MODSEQ" if "CONDSTORE" in session.capabilities else ""
        extra += " X-GM-MSGID" if self._tuning.gmail else ""
        sizes = await session.uid_fetch(compress(uids), "UID RFC822.SIZE")
        cap = self._tuning.body_max_bytes
        small = [_uid(i) for i in sizes if _size(i) <= cap]
        big = [_uid(i) for i in sizes if _uid(i) not in set(small)]
        docs: list[dict[str, Any]] = []
        events: list[Envelope[Any]] = []
        fetched = []
        if small:
            fetched = await session.uid_fetch(compress(small), f"UID FLAGS RFC822.SIZE BODY.PEEK[]{extra}")
        if big:
            heads = await session.uid_fetch(compress(big), f"UID FLAGS RFC822.SIZE BODY.PEEK[HEADER]{extra}")
            fetched += [{**h, "BODY[]": None} for h in heads]
        for got in fetched:
            raw = got.get("BODY[]")
            if isinstance(raw, bytes):
                end = raw.find(b"\r\n\r\n")
                got = {**got, "BODY[HEADER]": raw[: end + 4] if end >= 0 else raw}  # noqa: PLW2901
            m = FetchedMessage(got)
            key = message_key(m)
            doc_id = ctx.doc_id(key)
            if isinstance(raw, bytes):
                info = analyze(raw)
                meta: dict[str, Any] = {
                    "tenant_id": ctx.tenant_id,
                    "inbox_id": ctx.inbox_id,
                    "snippet": None if ctx.sharing in ("metadata", "subject") else info.snippet,
                    "attachments": info.attachments,
                    "parse_errors": info.parse_errors,
                }
                docs += BodyStore.documents(doc_id, raw, meta)
            else:
                docs.append(
                    {
                        "_id": f"{doc_id}:0",
                        "message": doc_id,
                        "n": 0,
                        "too_large": True,
                        "size": m.size,
                        "tenant_id": ctx.tenant_id,
                        "inbox_id": ctx.inbox_id,
                    }
                )
            ref = MessageRef(message_key=key, folder=ctx.folder, uidvalidity=ctx.uidvalidity, uid=m.uid)
            data = MessageUpdatedData(
                ref=ref,
                modseq=m.modseq,
                change="body",
                flags=m.flags,
                gmail_labels=m.gmail_labels,
                body_stored=isinstance(raw, bytes),
            )
            events.append(
                MessageUpdated.build(
                    data=data, tenant_id=ctx.tenant_id, inbox_id=ctx.inbox_id, source=ctx.source, subject=key
                )
            )
        # Stored first, then announced: a subscriber told `body_stored` finds the body.
        await self._bodies.put_many(docs)
        if events:
            await self._publisher.publish_all(events)
        result.bodies += len(events)
        log.debug(
            "bodies stored", extra={"inbox_id": ctx.inbox_id, "folder": ctx.folder, "count": len(events)}
        )

    def _fresh(self, state: MailboxState) -> FolderCursor:
        since = None
        if self._tuning.backfill_days is not None:
            since = datetime.now(UTC) - timedelta(days=self._tuning.backfill_days)
        return FolderCursor(
            id=self.key,
            tenant_id=self.ctx.tenant_id,
            inbox_id=self.ctx.inbox_id,
            folder=self.ctx.folder,
            uidvalidity=state.uidvalidity,
            uidnext=state.uidnext,
            highestmodseq=state.highestmodseq,
            exists=state.exists,
            initial_high=state.uidnext,
            initial_below=state.uidnext,
            initial_since=since,
            run_id=str(uuid.uuid4()),
        )

    # ---- initial / rebuild ----------------------------------------------------------------------

    async def _initial(self, session: ImapSession, cur: FolderCursor, result: PassResult) -> None:
        if cur.initial_below <= 1:
            return
        crit = f"UID 1:{cur.initial_below - 1}"
        if cur.initial_since is not None:
            crit += f" SINCE {_imap_date(cur.initial_since)}"
        remaining = [u for u in await session.uid_search(crit) if u < cur.initial_below]
        total = cur.initial_done_count + len(remaining)
        chunks = list(chunks_desc(remaining, self._tuning.fetch_chunk))
        if not chunks:
            await self._progress(cur, total)
            return
        items = self._items(session)
        known: dict[str, dict[str, Any]] = {}
        if cur.rebuild:  # one read of the folder's documents instead of a lookup per batch
            query = {
                "tenant_id": self.ctx.tenant_id,
                "inbox_id": self.ctx.inbox_id,
                "folder": self.ctx.folder,
            }
            projection = {"uidvalidity": 1, "uid": 1, "deleted": 1}
            known = {d["_id"]: d async for d in self._messages.find(query, projection)}
        # Three stages overlap: FETCH of chunk k+1, building chunk k, writing chunk k-1 (Kafka + store).
        # The cursor only moves once a chunk's writes are done, in chunk order.
        pending = asyncio.ensure_future(session.uid_fetch(compress(chunks[0]), items))
        writing: asyncio.Future[int] | None = None
        mark = (cur.initial_below, cur.initial_done_count)
        done = cur.initial_done_count
        try:
            for i, chunk in enumerate(chunks):
                fetched = await pending
                if i + 1 < len(chunks):
                    pending = asyncio.ensure_future(session.uid_fetch(compress(chunks[i + 1]), items))
                fetched.sort(key=lambda items: -_uid(items))  # newest first inside the chunk too
                batch = await self._prepare(fetched, history=True, known=known)
                done += len(chunk)
                batch.extra.append(self._progress_event(cur, done, total))
                if writing is not None:
                    result.received += await writing
                    cur.initial_below, cur.initial_done_count = mark
                    await self._cursors.save(cur)
                writing = asyncio.ensure_future(self._write(batch, concurrent=not cur.rebuild))
                mark = (chunk[0], done)
            if writing is not None:
                result.received += await writing
                cur.initial_below, cur.initial_done_count = mark
                await self._cursors.save(cur)
        finally:
            for fut in (pending, writing):
                if fut is not None and not fut.done():
                    fut.cancel()
                    if fut is pending:
                        session.abort()  # a command cut off mid-response leaves the stream unusable
                    with contextlib.suppress(BaseException):
                        await fut

    def _progress_event(self, cur: FolderCursor, done: int, total: int) -> SyncProgress:
        data = SyncProgressData(sync_run_id=cur.run_id, folder=self.ctx.folder, done=done, total=total)
        metrics.observe_sync_progress(self.ctx.tenant_id, self.ctx.inbox_id, self.ctx.folder, done, total)
        return SyncProgress.build(
            data=data, tenant_id=self.ctx.tenant_id, inbox_id=self.ctx.inbox_id, source=self.ctx.source
        )

    async def _progress(self, cur: FolderCursor, total: int) -> None:
        await self._publisher.publish_all([self._progress_event(cur, cur.initial_done_count, total)])

    async def _emit_new(self, fetched: list[dict[str, Value]], *, history: bool) -> int:
        return await self._write(await self._prepare(fetched, history=history), concurrent=False)

    async def _prepare(
        self,
        fetched: list[dict[str, Value]],
        *,
        history: bool,
        known: dict[str, dict[str, Any]] | None = None,
    ) -> _Batch:
        """Received events for messages not stored yet; remaps for ones known under another UID.

        `known`: the folder's stored documents by id, preloaded (rebuild) or empty (a fresh initial
        sync, where a replayed batch only meets duplicate-key inserts); None looks them up.
        """
        ctx = self.ctx
        msgs = [FetchedMessage(items) for items in fetched]
        keyed = [(m, message_key(m)) for m in msgs]
        ids = [ctx.doc_id(k) for _, k in keyed]
        existing: dict[str, dict[str, Any]] = {} if known is None else known
        if ids and known is None:
            # FerretDB scans for `$in`; fine for the small batches of incremental sync.
            cursor = self._messages.find({"_id": {"$in": ids}}, {"uidvalidity": 1, "uid": 1, "deleted": 1})
            existing = {d["_id"]: d async for d in cursor}
        batch = _Batch()
        for m, key in keyed:
            doc_id = ctx.doc_id(key)
            ex = existing.get(doc_id)
            if ex is not None and not ex.get("deleted"):
                if (ex.get("uidvalidity"), ex.get("uid")) != (ctx.uidvalidity, m.uid):
                    # Known under another UID (UIDVALIDITY rebuild, or a copy): remap, no new event.
                    remap = {
                        "uidvalidity": ctx.uidvalidity,
                        "uid": m.uid,
                        "flags": m.flags,
                        "modseq": m.modseq,
                    }
                    batch.writes.append(UpdateOne({"_id": doc_id}, {"$set": remap}))
                continue  # already stored: its event was acknowledged before
            event = received_event(ctx, m, history=history, key=key)
            batch.events.append(event)
            doc = message_document(ctx, event, m.modseq)
            if ex is None:
                batch.inserts.append(doc)
            else:  # a tombstone comes back to life (the message reappeared)
                batch.writes.append(UpdateOne({"_id": doc_id}, {"$set": doc}))
        return batch

    async def _write(self, batch: _Batch, *, concurrent: bool) -> int:
        """Events to Kafka, then documents. `concurrent` (fresh initial sync only, where stored
        documents are never used to skip an event) overlaps the two."""
        events = [*batch.events, *batch.extra]
        if concurrent and events and batch.inserts:
            await asyncio.gather(self._publisher.publish_all(events), self._insert(batch.inserts))
        else:
            if events:
                await self._publisher.publish_all(events)
            if batch.inserts:
                await self._insert(batch.inserts)
        if batch.writes:
            await self._messages.bulk_write(batch.writes, ordered=False)
        return len(batch.events)

    async def _insert(self, docs: list[dict[str, Any]]) -> None:
        """Plain inserts (FerretDB: ~60x faster than upserts); a duplicate is a concurrent replay."""
        try:
            await self._messages.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            other = [e for e in exc.details.get("writeErrors", []) if e.get("code") != 11000]
            if other:
                raise

    async def _sweep_old_uidvalidity(self, cur: FolderCursor, result: PassResult) -> None:
        """After a rebuild: what was not found again under the new UIDVALIDITY is gone."""
        ctx = self.ctx
        query = {
            "tenant_id": ctx.tenant_id,
            "inbox_id": ctx.inbox_id,
            "folder": ctx.folder,
            "deleted": False,
            "uidvalidity": {"$ne": cur.uidvalidity},
        }
        stale = [d async for d in self._messages.find(query, {"uidvalidity": 1, "uid": 1, "message_key": 1})]
        await self._delete(stale, "uidvalidity_reset", result)

    async def _delete(self, docs: list[dict[str, Any]], reason: DeleteReason, result: PassResult) -> None:
        ctx = self.ctx
        for i in range(0, len(docs), 1000):
            batch = docs[i : i + 1000]
            events = [
                MessageDeleted.build(
                    data=MessageDeletedData(
                        ref=MessageRef(
                            message_key=d["message_key"],
                            folder=ctx.folder,
                            uidvalidity=int(d["uidvalidity"]),
                            uid=int(d["uid"]),
                        ),
                        reason=reason,
                    ),
                    tenant_id=ctx.tenant_id,
                    inbox_id=ctx.inbox_id,
                    source=ctx.source,
                    subject=d["message_key"],
                )
                for d in batch
            ]
            await self._publisher.publish_all(events)
            await self._messages.update_many(
                {"_id": {"$in": [d["_id"] for d in batch]}},
                {"$set": {"deleted": True, "deleted_at": datetime.now(UTC), "deleted_reason": reason}},
            )
            result.deleted += len(batch)

    # ---- incremental ----------------------------------------------------------------------------

    async def _incremental(
        self,
        session: ImapSession,
        state: MailboxState,
        cur: FolderCursor,
        result: PassResult,
        *,
        reconcile: bool,
    ) -> None:
        ctx = self.ctx
        items = self._items(session)
        new_uids: list[int] = []
        # Everything is bounded to the EXAMINE snapshot; later arrivals come on the next pass.
        if state.uidnext > cur.uidnext:
            found = await session.uid_search(f"UID {cur.uidnext}:{state.uidnext - 1}")
            new_uids = sorted(u for u in found if cur.uidnext <= u < state.uidnext)
            for chunk in chunks_desc(new_uids, self._tuning.fetch_chunk):
                fetched = await self._with_reports(session, await session.uid_fetch(compress(chunk), items))
                result.received += await self._emit_new(fetched, history=False)
                if self._tuning.bodies:
                    for part in chunks_desc(chunk, self._tuning.body_chunk):
                        await self._fetch_bodies(session, part, result)
        modseq_moved = (
            state.highestmodseq is not None
            and cur.highestmodseq is not None
            and state.highestmodseq > cur.highestmodseq
        )
        if modseq_moved and cur.uidnext > 1:
            assert cur.highestmodseq is not None
            flag_items = "UID FLAGS" + (" X-GM-LABELS" if self._tuning.gmail else "")
            changed = await session.uid_fetch(
                f"1:{cur.uidnext - 1}", flag_items, f"CHANGEDSINCE {cur.highestmodseq}"
            )
            await self._emit_updates([FetchedMessage(c) for c in changed], result)
        expected = cur.exists + len(new_uids)
        if state.vanished is not None and state.vanished.ranges:
            expected -= await self._vanished(state, result)
        if reconcile or state.exists != expected:
            await self._compare_uid_sets(session, state, cur, result, repair=reconcile)
        cur.uidnext = max(cur.uidnext, state.uidnext)
        cur.highestmodseq = state.highestmodseq
        cur.exists = state.exists
        if reconcile:
            cur.last_reconciled_at = datetime.now(UTC)
        await self._cursors.save(cur)
        del ctx

    async def _with_reports(
        self, session: ImapSession, fetched: list[dict[str, Value]]
    ) -> list[dict[str, Value]]:
        """New delivery reports (bounces) are fetched whole at once, so their `message received`
        carries the parsed `delivery_report` the linker needs (headers alone do not have it)."""
        reports = [_uid(i) for i in fetched if is_report(FetchedMessage(i))]
        if not reports:
            return fetched
        whole = await session.uid_fetch(compress(reports), "UID BODY.PEEK[]")
        bodies = {_uid(i): i.get("BODY[]") for i in whole}
        return [{**i, "BODY[]": bodies[_uid(i)]} if _uid(i) in bodies else i for i in fetched]

    async def _vanished(self, state: MailboxState, result: PassResult) -> int:
        """Expunges learnt from QRESYNC's VANISHED (EARLIER): the stored messages in those UID ranges
        are deleted. Returns how many; EXISTS still has to agree, else the UID sets are compared."""
        assert state.vanished is not None
        ctx = self.ctx
        ranges = state.vanished.ranges
        if len(ranges) > 100:  # a query per range would cost more than the comparison
            return 0
        query = {
            "tenant_id": ctx.tenant_id,
            "inbox_id": ctx.inbox_id,
            "folder": ctx.folder,
            "uidvalidity": ctx.uidvalidity,
            "deleted": False,
            "$or": [{"uid": {"$gte": lo, "$lte": hi}} for lo, hi in ranges],
        }
        gone = [d async for d in self._messages.find(query, {"uid": 1, "message_key": 1, "uidvalidity": 1})]
        if gone:
            await self._delete(gone, "expunged", result)
            result.vanished += len(gone)
        return len(gone)

    async def _emit_updates(self, changed: list[FetchedMessage], result: PassResult) -> None:
        if not changed:
            return
        ctx = self.ctx
        by_uid = {m.uid: m for m in changed}
        query = {
            "tenant_id": ctx.tenant_id,
            "inbox_id": ctx.inbox_id,
            "folder": ctx.folder,
            "uidvalidity": ctx.uidvalidity,
            "deleted": False,
            "uid": {"$in": sorted(by_uid)},
        }
        docs = [
            d async for d in self._messages.find(query, {"uid": 1, "message_key": 1, "flags": 1, "modseq": 1})
        ]
        events: list[Envelope[Any]] = []
        writes: list[UpdateOne] = []
        for d in docs:
            m = by_uid[int(d["uid"])]
            if m.modseq and m.modseq <= int(d.get("modseq") or 0):
                continue  # already applied
            ref = MessageRef(
                message_key=d["message_key"], folder=ctx.folder, uidvalidity=ctx.uidvalidity, uid=m.uid
            )
            data = MessageUpdatedData(ref=ref, modseq=m.modseq, flags=m.flags, gmail_labels=m.gmail_labels)
            events.append(
                MessageUpdated.build(
                    data=data,
                    tenant_id=ctx.tenant_id,
                    inbox_id=ctx.inbox_id,
                    source=ctx.source,
                    subject=ref.message_key,
                )
            )
            writes.append(UpdateOne({"_id": d["_id"]}, {"$set": {"flags": m.flags, "modseq": m.modseq}}))
        if events:
            await self._publisher.publish_all(events)
            await self._messages.bulk_write(writes, ordered=False)
            result.updated += len(events)

    async def _compare_uid_sets(
        self,
        session: ImapSession,
        state: MailboxState,
        cur: FolderCursor,
        result: PassResult,
        *,
        repair: bool,
    ) -> None:
        """Expunges by UID set comparison (works on every server); on reconcile, also repair gaps."""
        ctx = self.ctx
        on_server = set(await session.uid_search(f"UID 1:{max(1, state.uidnext - 1)}"))
        query = {
            "tenant_id": ctx.tenant_id,
            "inbox_id": ctx.inbox_id,
            "folder": ctx.folder,
            "uidvalidity": ctx.uidvalidity,
            "deleted": False,
        }
        known = [d async for d in self._messages.find(query, {"uid": 1, "message_key": 1, "uidvalidity": 1})]
        gone = [d for d in known if int(d["uid"]) not in on_server]
        if gone:
            await self._delete(gone, "expunged", result)
        if repair and known:
            low = min(int(d["uid"]) for d in known)
            known_uids = {int(d["uid"]) for d in known}
            missing = sorted(u for u in on_server if u >= low and u < cur.uidnext and u not in known_uids)
            items = self._items(session)
            for chunk in chunks_desc(missing, self._tuning.fetch_chunk):
                fetched = await session.uid_fetch(compress(chunk), items)
                n = await self._emit_new(fetched, history=False)
                result.repaired += n
                cur.repairs += n
            if result.repaired:
                log.warning(
                    "reconciliation repaired drift",
                    extra={"inbox_id": ctx.inbox_id, "folder": ctx.folder, "repairs": result.repaired},
                )
