"""One folder's sync pass: EXAMINE, then initial (newest first), rebuild or incremental work.

Order of writes for every batch: events to Kafka (acknowledged) → message documents → cursor. A crash
anywhere replays the batch with the same event ids; stored documents keep replays from emitting twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, TypeVar

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from contracts import Envelope
from contracts.common import MessageRef
from contracts.inbox import SyncProgress, SyncProgressData
from contracts.messages import MessageDeleted, MessageDeletedData, MessageUpdated, MessageUpdatedData
from mailsync import metrics
from mailsync.logs import scrub
from mailsync.store import insert_new
from services.fetcher.imap.protocol import Untagged, Value
from services.fetcher.imap.seqset import chunks_desc, compress
from services.fetcher.imap.session import AuthenticationFailed, ImapError, ImapSession, MailboxState

from .bodies import (
    HEADER_SECTION,
    UNIT_BYTES,
    WHOLE_SECTION,
    BodyStore,
    analyze,
    header_of,
    unit_length,
    without_body,
)
from .body_hints import BodyHints
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
from .wake import plan_wake, sort_new_mail, wake_exists

MESSAGES = "messages"
# Up to this many ids, stored documents are looked up one `_id` at a time (the unique index) rather than
# with `$in`, which FerretDB answers by scanning the collection.
BY_ID_LOOKUPS = 64
DeleteReason = Literal["expunged", "moved", "uidvalidity_reset"]
# A byte search that rules out almost every message before its header is parsed to tell a delivery
# report (`is_report`): parsing costs ~50 µs a message, the search well under one.
_REPORT_HINT = re.compile(rb"multipart/report", re.IGNORECASE)
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
    # One backlog pass: at most this many chunks (one UID SEARCH window) and at most `body_pass_seconds`,
    # ended early when new mail waits (an EXISTS seen on the connection). Passes are few on purpose:
    # each starts with an EXAMINE, which on a 100,000-message Maildir cost Dovecot ~0.4 CPU-s
    # (bench/sync.py: 50 passes of 8 chunks made the body phase 45 s instead of 23 s).
    body_chunks_per_pass: int = 200
    body_pass_seconds: float = 10.0
    # Body units being stored at once: the next unit's insert overlaps this one's announcement (bodies
    # are stored before they are announced). bench/sync.py, 100,000 messages, three runs each:
    # 48.0-53.8 s with 2 against 57.4-62.5 s with 1. Holds one unit (<= 16 MiB of bodies) more.
    body_stores_in_flight: int = 2
    # Bodies in the initial sync's own FETCHes instead of a backlog after the headers. Off by default:
    # on 100,000 messages (bench/sync.py --inline-bodies) every event was out after 45 s headers-first
    # but only after 90 s inline, for a whole sync only 7% shorter (90 s vs 97 s): our CPU binds.
    inline_bodies: bool = False
    # Bodies of mail announced from an IDLE wake wait for this much quiet (or `body_max_wait_seconds`),
    # so a message arriving right after another is announced without waiting for its body fetch.
    body_delay_seconds: float = 0.25
    body_max_wait_seconds: float = 5.0


@dataclass
class _Batch:
    events: list[Envelope[Any]] = field(default_factory=list)
    extra: list[Envelope[Any]] = field(default_factory=list)
    inserts: list[dict[str, Any]] = field(default_factory=list)
    writes: list[UpdateOne] = field(default_factory=list)

    def add(self, other: _Batch) -> None:
        self.events += other.events
        self.extra += other.extra
        self.inserts += other.inserts
        self.writes += other.writes


# Building a unit is CPU work with no await inside: done in one go, the tasks started just before it (the
# next FETCH, the previous unit's writes) would not even send their requests until it ends, so nothing
# overlapped. Built in slices with a yield between, FerretDB, Kafka and Dovecot work meanwhile.
BUILD_SLICE = 100
T = TypeVar("T")


async def _slices(items: list[T]) -> AsyncIterator[list[T]]:
    """`items` in slices of `BUILD_SLICE`, yielding to the event loop before each."""
    for i in range(0, len(items), BUILD_SLICE):
        await asyncio.sleep(0)
        yield items[i : i + BUILD_SLICE]


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
    idle_seconds: float | None = None  # deferred work waits: IDLE at most this long before the next pass


def _uid(items: dict[str, Value]) -> int:
    uid = items.get("UID")
    return uid if isinstance(uid, int) else 0


def _size(items: dict[str, Value]) -> int:
    size = items.get("RFC822.SIZE")
    return size if isinstance(size, int) else 0


def _report(items: dict[str, Value]) -> bool:
    """A delivery report (`is_report`), its header parsed only when the byte search finds a hint."""
    raw = items.get("BODY[HEADER]")
    return isinstance(raw, bytes) and bool(_REPORT_HINT.search(raw)) and is_report(FetchedMessage(items))


class FolderMissing(ImapError):
    """EXAMINE found no such folder (deleted or renamed on the server); `FolderSync` has logged it."""


# Response codes of a NO to EXAMINE that say the server is busy or limited, not that the folder is gone.
_TRANSIENT_CODES = frozenset({"UNAVAILABLE", "SERVERBUG", "LIMIT", "INUSE", "CONTACTADMIN", "EXPUNGEISSUED"})


def folder_missing(exc: ImapError) -> bool:
    """A NO to EXAMINE means the folder cannot be opened: RFC 5530's `NONEXISTENT`, or a bare NO from
    servers without response codes. BAD, a login problem or a transient code is no such answer."""
    if isinstance(exc, AuthenticationFailed) or exc.status.upper() != "NO":
        return False
    return exc.code is None or exc.code.upper() not in _TRANSIENT_CODES


def presence_change(was_missing: bool, missing: bool) -> Literal["gone", "back"] | None:
    """What a folder's state after an EXAMINE is worth logging: its disappearance once (not on every
    poll while it stays away), and its return, so that a second disappearance is logged again."""
    if missing and not was_missing:
        return "gone"
    if was_missing and not missing:
        return "back"
    return None


def _imap_date(dt: datetime) -> str:
    return dt.strftime("%d-%b-%Y")


async def _stop_stages(
    session: ImapSession, fetching: asyncio.Future[Any], *writing: asyncio.Future[Any] | None
) -> None:
    """After a pipeline ended early (an error, a cancel): stop the stages still running. A FETCH cut
    off mid-response leaves the IMAP stream unusable, so the session is aborted with it."""
    for fut in (fetching, *writing):
        if fut is not None and not fut.done():
            fut.cancel()
            if fut is fetching:
                session.abort()
            with contextlib.suppress(BaseException):
                await fut


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
        # Announced from an IDLE wake, documents not yet written: runs while the connection is back in
        # IDLE, awaited before anything reads the store or saves the cursor.
        self._writing: asyncio.Future[None] | None = None
        # UIDs announced from an IDLE wake whose bodies are not stored yet. The stored cursor stays
        # below them until they are, so a crash refetches their bodies.
        self._bodies_pending: list[int] = []
        self._unsaved = False  # the cursor in memory is ahead of the stored one
        self._unsaved_since = 0.0
        self._missing = False  # the last EXAMINE found no such folder
        self._exists_mark = 0  # `session.exists_noted` after this pass's EXAMINE
        self._hints = BodyHints()  # sizes and keys from the header pass, for the body backlog

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
        wake = session.take_wake()
        cur = self.cursor if self.cursor is not None else await self._cursors.load(self.key)
        if cur is not None and not reconcile and self._on_wake(session, cur):
            plan = plan_wake(wake, known_exists=cur.exists, limit=self._tuning.fetch_chunk)
            if plan == "full" and wake == [] and self._unsaved:
                plan = "nothing"  # the short IDLE before the deferred work ended quietly
            if plan != "full":
                return await self._woken(session, cur, wake if plan == "new_mail" else None)
        await self._settle()  # a failure there drops the cursor in memory: resume from the stored one
        cur = self.cursor if self.cursor is not None else cur
        # QRESYNC: the server tells what vanished since the cursor's MODSEQ (no UID set comparison).
        known = None
        if cur is not None and cur.initial_done and cur.highestmodseq:
            known = (cur.uidvalidity, cur.highestmodseq)
        state = await self._examine(session, known)
        self._exists_mark = session.exists_noted
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
        if self._bodies_pending:
            if cur is self.cursor:  # the folder is open again: store what waited, the pass saves after
                await self._drain_bodies(session, result)
            else:
                self._bodies_pending.clear()
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

    async def _examine(self, session: ImapSession, known: tuple[int, int] | None) -> MailboxState:
        """EXAMINE; a folder gone from the server raises `FolderMissing`, logged once per disappearance."""
        ctx = self.ctx
        try:
            state = await session.examine(ctx.folder, qresync=known)
        except ImapError as exc:
            if not folder_missing(exc):
                raise
            if presence_change(self._missing, True) == "gone":
                log.warning(
                    "folder not found on the server, looked for again on every poll",
                    extra={"inbox_id": ctx.inbox_id, "folder": ctx.folder, "error": scrub(str(exc))[:300]},
                )
            self._missing = True
            raise FolderMissing(exc.command, exc.status, exc.text, exc.code) from exc
        if presence_change(self._missing, False) == "back":
            log.info(
                "folder found on the server again", extra={"inbox_id": ctx.inbox_id, "folder": ctx.folder}
            )
        self._missing = False
        return state

    # ---- bodies ---------------------------------------------------------------------------------

    async def _bodies_backlog(self, session: ImapSession, cur: FolderCursor, result: PassResult) -> bool:
        """Bodies of the backfilled messages, newest first, a bounded number of chunks per pass."""
        if cur.bodies_below == 0:
            cur.bodies_below = cur.initial_high
        if cur.bodies_below <= 1:
            cur.bodies_done = True
            self._hints.clear()
            await self._cursors.save(cur)
            return False
        # Search only a UID window below the mark: one pass costs the same whatever the mailbox size.
        budget = self._tuning.body_chunks_per_pass
        low = max(1, cur.bodies_below - budget * self._tuning.body_chunk)
        crit = f"UID {low}:{cur.bodies_below - 1}"
        if cur.initial_since is not None:
            crit += f" SINCE {_imap_date(cur.initial_since)}"
        uids = [u for u in await session.uid_search(crit) if low <= u < cur.bodies_below]
        until = time.monotonic() + self._tuning.body_pass_seconds
        if await self._bodies_pipelined(session, cur, uids, result, until=until):
            cur.bodies_below = low  # the whole window: also past UIDs the SEARCH did not return
        cur.bodies_done = cur.bodies_below <= 1
        if cur.bodies_done:
            self._hints.clear()
        await self._cursors.save(cur)
        return not cur.bodies_done

    async def _bodies_pipelined(
        self, session: ImapSession, cur: FolderCursor, uids: list[int], result: PassResult, *, until: float
    ) -> bool:
        """The backlog's bodies, newest first, in units of `_next_bodies` and overlapping stages: FETCH
        of unit k+1, building unit k, storing and announcing up to `body_stores_in_flight` units before
        it (Dovecot, this process and FerretDB/Kafka busy at once instead of in turn). `bodies_below`
        moves only once a unit and every unit before it are stored, in order. At most
        `body_stores_in_flight` + 2 units (of at most 16 MiB of bodies each) are held at a time.
        No further unit is started after `until` (monotonic) or once new mail waits; returns whether
        every UID was done."""
        if not uids:
            return True
        validity = self.ctx.uidvalidity
        queue, sizes = deque(sorted(uids, reverse=True)), self._hints.sizes(validity, uids)
        pending = asyncio.ensure_future(self._next_bodies(session, queue, sizes))
        stores: deque[tuple[asyncio.Future[int], int]] = deque()  # (store, the unit's lowest UID)
        try:
            while True:
                unit, fetched = await pending
                arrived = session.exists_noted > self._exists_mark  # new mail: end the pass for it
                more = bool(queue) and time.monotonic() < until and not arrived
                if more:
                    pending = asyncio.ensure_future(self._next_bodies(session, queue, sizes))
                docs, events = await self._body_records_sliced(fetched, self._hints.take_keys(validity, unit))
                while len(stores) >= self._tuning.body_stores_in_flight:
                    await self._unit_stored(cur, result, *stores.popleft())
                # Units go newest first: once stored, everything from the unit's lowest UID up is done.
                stores.append((asyncio.ensure_future(self._store_bodies(docs, events)), unit[-1]))
                if not more:
                    break
            while stores:
                await self._unit_stored(cur, result, *stores.popleft())
        finally:
            await _stop_stages(session, pending, *(store for store, _ in stores))
        return not queue

    async def _unit_stored(
        self, cur: FolderCursor, result: PassResult, store: asyncio.Future[int], low: int
    ) -> None:
        result.bodies += await store
        cur.bodies_below = low
        await self._cursors.save(cur)

    async def _fetch_bodies(self, session: ImapSession, uids: list[int], result: PassResult) -> None:
        """Store bodies, then say so with `message updated` (body_stored). Oversized: flagged only."""
        queue, sizes = deque(sorted(uids, reverse=True)), dict[int, int]()
        while queue:
            _, fetched = await self._next_bodies(session, queue, sizes)
            docs, events = self._body_records(fetched)
            result.bodies += await self._store_bodies(docs, events)

    async def _store_bodies(self, docs: list[dict[str, Any]], events: list[Envelope[Any]]) -> int:
        # Stored first, then announced: a subscriber told `body_stored` finds the body.
        await self._bodies.put_many(docs)
        if events:
            await self._publisher.publish_all(events)
        log.debug(
            "bodies stored",
            extra={"inbox_id": self.ctx.inbox_id, "folder": self.ctx.folder, "count": len(events)},
        )
        return len(events)

    async def _next_bodies(
        self, session: ImapSession, queue: deque[int], sizes: dict[int, int]
    ) -> tuple[list[int], list[dict[str, Value]]]:
        """The backlog's next unit (see `_sized_unit`), with MODSEQ and, on Gmail, the labels: the body's
        `message updated` carries them, and an empty list would read as "every label removed"."""
        extra = " MODSEQ" if "CONDSTORE" in session.capabilities else ""
        extra += " X-GM-MSGID X-GM-LABELS" if self._tuning.gmail else ""
        items = f"UID FLAGS RFC822.SIZE {HEADER_SECTION}{extra}"
        return await self._sized_unit(session, queue, self._tuning.body_chunk, items, sizes)

    async def _sized_unit(
        self, session: ImapSession, queue: deque[int], limit: int, items: str, sizes: dict[int, int]
    ) -> tuple[list[int], list[dict[str, Value]]]:
        """The next unit from the front of `queue` (UIDs, newest first) and its FETCH results with
        `BODY[]`: `items` with the whole message for those within the size cap, bytes; only `items`
        (the header) above it, `BODY[]` None (`message updated` can still say `too_large`). A unit is
        at most `limit` messages and `UNIT_BYTES` of bodies (at least one message); the rest goes back
        to the queue. `sizes` keeps RFC822.SIZE across units, so a message put back is not asked for
        twice. Gone messages have no size and are skipped."""
        window = [queue.popleft() for _ in range(min(limit, len(queue)))]
        unknown = [u for u in window if u not in sizes]
        if unknown:
            got = await session.uid_fetch(compress(unknown), "UID RFC822.SIZE")
            sizes.update((_uid(i), _size(i)) for i in got)
        cap = self._tuning.body_max_bytes
        n = unit_length([sizes.get(u, 0) for u in window], cap=cap, budget=UNIT_BYTES)
        queue.extendleft(reversed(window[n:]))
        unit = window[:n]
        small = [u for u in unit if u in sizes and sizes[u] <= cap]
        big = [u for u in unit if u in sizes and sizes[u] > cap]
        fetched: list[dict[str, Value]] = []
        if small:
            fetched = await session.uid_fetch(compress(small), items.replace(HEADER_SECTION, WHOLE_SECTION))
        if big:
            fetched += [{**h, "BODY[]": None} for h in await session.uid_fetch(compress(big), items)]
        return unit, fetched

    async def _body_records_sliced(
        self, fetched: list[dict[str, Value]], keys: dict[int, str] | None = None
    ) -> tuple[list[dict[str, Any]], list[Envelope[Any]]]:
        """`_body_records`, built in `_slices`."""
        docs: list[dict[str, Any]] = []
        events: list[Envelope[Any]] = []
        async for part in _slices(fetched):
            d, e = self._body_records(part, keys)
            docs += d
            events += e
        return docs, events

    def _body_records(
        self, fetched: list[dict[str, Value]], keys: dict[int, str] | None = None
    ) -> tuple[list[dict[str, Any]], list[Envelope[Any]]]:
        """Body documents and their `message updated` (body) events for FETCH results carrying
        `BODY[]` (bytes; None: over the size cap, flagged `too_large`). `keys`: message keys already
        computed by UID, so the headers are not parsed again."""
        ctx = self.ctx
        docs: list[dict[str, Any]] = []
        events: list[Envelope[Any]] = []
        for got in fetched:
            raw = got.get("BODY[]")
            m = FetchedMessage(got)
            key = keys.get(m.uid) if keys else None
            if key is None:
                if isinstance(raw, bytes):
                    m = FetchedMessage({**got, "BODY[HEADER]": header_of(raw)})
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
        return docs, events

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
        """Newest first, in units of at most `fetch_chunk` messages. With bodies on, a unit's bodies
        come in the same FETCH as its headers and are stored and announced with it (`bodies_below`
        moves with `initial_below`): one download and one pass over the folder instead of two."""
        inline = self._inline_bodies(cur)
        remaining = await self._initial_remaining(session, cur)
        total = cur.initial_done_count + len(remaining)
        if not remaining:
            if inline:
                cur.bodies_below = 1
            return
        items = self._items(session)
        known = await self._known(cur)
        queue = deque(sorted(remaining, reverse=True))
        # Three stages overlap: FETCH of unit k+1, building unit k, writing unit k-1 (Kafka + store).
        # The cursor only moves once a unit's writes are done, in unit order.
        pending = asyncio.ensure_future(self._fetch_unit(session, queue, items, inline=inline))
        writing: asyncio.Future[tuple[int, int]] | None = None
        mark = (cur.initial_below, cur.initial_done_count)
        done = cur.initial_done_count
        try:
            while True:
                unit, fetched = await pending
                more = bool(queue)
                if more:
                    pending = asyncio.ensure_future(self._fetch_unit(session, queue, items, inline=inline))
                batch, records = await self._build_unit(fetched, known, inline=inline)
                done += len(unit)
                batch.extra.append(self._progress_event(cur, done, total))
                if writing is not None:
                    await self._unit_written(cur, result, await writing, mark, inline=inline)
                writing = asyncio.ensure_future(self._write_unit(batch, records, concurrent=not cur.rebuild))
                mark = (unit[-1], done)
                if not more:
                    break
            await self._unit_written(cur, result, await writing, mark, inline=inline)
            if inline:
                cur.bodies_below = 1  # every body of the window is stored: nothing left for the backlog
        finally:
            await _stop_stages(session, pending, writing)

    async def _initial_remaining(self, session: ImapSession, cur: FolderCursor) -> list[int]:
        """The UIDs the initial sync still has to do (below `initial_below`, within the window)."""
        if cur.initial_below <= 1:
            return []
        crit = f"UID 1:{cur.initial_below - 1}"
        if cur.initial_since is not None:
            crit += f" SINCE {_imap_date(cur.initial_since)}"
        remaining = [u for u in await session.uid_search(crit) if u < cur.initial_below]
        if not remaining:
            await self._progress(cur, cur.initial_done_count)
        return remaining

    async def _known(self, cur: FolderCursor) -> dict[str, dict[str, Any]]:
        """A rebuild's stored documents of the folder, read once instead of a lookup per batch; a fresh
        initial sync knows none (a replayed batch only meets duplicate-key inserts)."""
        if not cur.rebuild:
            return {}
        query = {"tenant_id": self.ctx.tenant_id, "inbox_id": self.ctx.inbox_id, "folder": self.ctx.folder}
        projection = {"uidvalidity": 1, "uid": 1, "deleted": 1}
        return {d["_id"]: d async for d in self._messages.find(query, projection)}

    async def _build_unit(
        self, fetched: list[dict[str, Value]], known: dict[str, dict[str, Any]], *, inline: bool
    ) -> tuple[_Batch, tuple[list[dict[str, Any]], list[Envelope[Any]]] | None]:
        fetched.sort(key=lambda items: -_uid(items))  # newest first inside the unit too
        if not inline:
            batch = await self._prepare_sliced(fetched, known)
            if self._tuning.bodies:
                validity = self.ctx.uidvalidity
                for e in batch.events:
                    self._hints.note(validity, e.data.ref.uid, e.data.ref.message_key, e.data.size)
            return batch, None
        batch = await self._prepare_sliced([self._headers_of(i) for i in fetched], known)
        keys = {e.data.ref.uid: e.data.ref.message_key for e in batch.events}
        return batch, await self._body_records_sliced(fetched, keys)

    async def _prepare_sliced(
        self, fetched: list[dict[str, Value]], known: dict[str, dict[str, Any]]
    ) -> _Batch:
        """`_prepare` (history), built in `_slices`."""
        batch = _Batch()
        async for part in _slices(fetched):
            batch.add(await self._prepare(part, history=True, known=known))
        return batch

    @staticmethod
    def _headers_of(items: dict[str, Value]) -> dict[str, Value]:
        """A whole message's items as the header FETCH gives them, except that a delivery report keeps
        its `BODY[]`, as `_with_reports` gives it: its `message received` carries the parsed report."""
        head = without_body(items)
        raw = items.get("BODY[]")
        return {**head, "BODY[]": raw} if isinstance(raw, bytes) and _report(head) else head

    def _inline_bodies(self, cur: FolderCursor) -> bool:
        """Bodies go with the initial sync's headers when every body above `initial_below` is stored
        already: a fresh run, or one resumed from such a run. A cursor whose headers went ahead without
        bodies (bodies off then, or an older version) leaves its bodies to the backlog."""
        if not self._tuning.bodies or not self._tuning.inline_bodies or cur.bodies_done:
            return False
        fresh = cur.bodies_below == 0 and cur.initial_below == cur.initial_high
        return fresh or cur.bodies_below == cur.initial_below

    async def _fetch_unit(
        self, session: ImapSession, queue: deque[int], items: str, *, inline: bool
    ) -> tuple[list[int], list[dict[str, Value]]]:
        """The next unit from the front of `queue` (UIDs, newest first) and its FETCH results.

        Inline bodies: headers and bodies in one FETCH within the size cap and the unit byte budget
        (`_sized_unit`; the header is cut from the body later), headers only above the cap.
        """
        if inline:
            return await self._sized_unit(session, queue, self._tuning.fetch_chunk, items, {})
        window = [queue.popleft() for _ in range(min(self._tuning.fetch_chunk, len(queue)))]
        # Delivery reports among them are fetched whole in the same stage (overlapping the previous
        # unit's writes), so their backfilled `message received` carries the `delivery_report` too.
        return window, await self._with_reports(session, await session.uid_fetch(compress(window), items))

    async def _write_unit(
        self,
        batch: _Batch,
        records: tuple[list[dict[str, Any]], list[Envelope[Any]]] | None,
        *,
        concurrent: bool,
    ) -> tuple[int, int]:
        """A unit's writes: `message received` events and documents as `_write` does them; with bodies,
        the body documents too (stored alongside on a fresh sync), then their `message updated` events,
        once the bodies are stored and the `message received` events acknowledged."""
        if records is None:
            return await self._write(batch, concurrent=concurrent), 0
        docs, events = records
        if concurrent:
            received, _ = await asyncio.gather(
                self._write(batch, concurrent=True), self._bodies.put_many(docs)
            )
        else:
            received = await self._write(batch, concurrent=False)
            await self._bodies.put_many(docs)
        if events:
            await self._publisher.publish_all(events)
        return received, len(events)

    async def _unit_written(
        self,
        cur: FolderCursor,
        result: PassResult,
        counts: tuple[int, int],
        mark: tuple[int, int],
        *,
        inline: bool,
    ) -> None:
        result.received += counts[0]
        result.bodies += counts[1]
        cur.initial_below, cur.initial_done_count = mark
        if inline:
            cur.bodies_below = cur.initial_below
        await self._cursors.save(cur)

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
            existing = await self._stored(ids)
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

    async def _stored(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored documents among `ids` (what decides event or no event)."""
        projection = {"uidvalidity": 1, "uid": 1, "deleted": 1}
        if len(ids) <= BY_ID_LOOKUPS:
            found = await asyncio.gather(*(self._messages.find_one({"_id": i}, projection) for i in ids))
            return {d["_id"]: d for d in found if d is not None}
        return {d["_id"]: d async for d in self._messages.find({"_id": {"$in": ids}}, projection)}

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
        """Plain inserts (FerretDB: ~60x faster than upserts); a duplicate is a concurrent replay. Split
        into concurrent requests measured no faster (bench/sync.py), so one request."""
        await insert_new(self._messages, docs)

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

    def _on_wake(self, session: ImapSession, cur: FolderCursor) -> bool:
        """The session still has this folder open as the last pass left it, so an IDLE wake's
        responses describe it against this cursor."""
        return (
            cur is self.cursor
            and cur.initial_done
            and not cur.rebuild
            and session.selected == self.ctx.folder
            and cur.uidvalidity == self.ctx.uidvalidity
        )

    async def _woken(
        self, session: ImapSession, cur: FolderCursor, wake: list[Untagged] | None
    ) -> PassResult:
        """A pass after an IDLE wake that told of new mail only (`wake`), or of nothing needing the
        full pass. The deferred work (bodies, cursor) is done once the folder is quiet for
        `body_delay_seconds`, or has waited `body_max_wait_seconds`."""
        result = PassResult()
        if wake:
            await self._new_mail(session, cur, wake_exists(wake), result)
        now = asyncio.get_running_loop().time()
        if self._unsaved:
            waited = now - self._unsaved_since
            tuning = self._tuning
            if (
                not wake
                or waited >= tuning.body_max_wait_seconds
                or len(self._bodies_pending) >= tuning.body_chunk
            ):
                await self._drain_bodies(session, result)
                if waited < 2 * tuning.body_max_wait_seconds and self._mail_waiting(session):
                    # New mail was told during the body fetch: it goes first, the cursor save after.
                    result.idle_seconds = tuning.body_delay_seconds
                    return result
                await self._save(cur)
            else:
                result.idle_seconds = max(
                    0.05, min(tuning.body_delay_seconds, tuning.body_max_wait_seconds - waited)
                )
                return result
        if self._tuning.bodies and not cur.bodies_done and not result.more:
            result.more = await self._bodies_backlog(session, cur, result)
        return result

    async def _new_mail(
        self, session: ImapSession, cur: FolderCursor, exists: int, result: PassResult
    ) -> None:
        """IDLE reported new messages and nothing else: fetch what is above the cursor and announce
        it, without the full pass's EXAMINE, SEARCH and flag fetch. Its documents are written while
        the connection goes back to IDLE; bodies and the cursor wait for a quiet moment. HIGHESTMODSEQ
        is left as it was, so the next full pass still asks for every flag change since then."""
        got = sort_new_mail(await session.uid_fetch(f"{cur.uidnext}:*", self._items(session)), cur.uidnext)
        if got.messages:
            fetched = await self._with_reports(session, got.messages)
            await self._settle()  # the previous wake's documents decide this lookup
            batch = await self._prepare(fetched, history=False)
            if batch.events:
                await self._publisher.publish_all(batch.events)
            result.received += len(batch.events)
            self._writing = asyncio.ensure_future(self._store(batch))
            uids = [_uid(i) for i in got.messages]
            if self._tuning.bodies:
                self._bodies_pending += uids
            if not self._unsaved:
                self._unsaved, self._unsaved_since = True, asyncio.get_running_loop().time()
            cur.uidnext = uids[-1] + 1
            cur.exists += len(uids)
        # Anything the count does not explain (a flag change told mid-command, fewer messages than
        # EXISTS said): the full pass, at once, settles it.
        result.more = got.stray or cur.exists < exists

    async def _store(self, batch: _Batch) -> None:
        if batch.inserts:
            await self._insert(batch.inserts)
        if batch.writes:
            await self._messages.bulk_write(batch.writes, ordered=False)

    async def _settle(self) -> None:
        """Wait for the documents written in the background. If that failed, what this worker holds
        in memory is dropped: the next pass resumes from the stored cursor and replays those
        messages (same event ids), whose documents and bodies are then written."""
        writing, self._writing = self._writing, None
        if writing is None:
            return
        try:
            await writing
        except BaseException:
            self.cursor, self._unsaved = None, False
            self._bodies_pending.clear()
            raise

    async def _drain_bodies(self, session: ImapSession, result: PassResult) -> None:
        """Bodies of the mail announced from IDLE wakes, newest first; the list shrinks only as
        chunks are stored, so an error leaves the rest for the next pass."""
        await self._settle()
        pending = self._bodies_pending
        while pending:
            part = pending[-self._tuning.body_chunk :]
            await self._fetch_bodies(session, part, result)
            del pending[-len(part) :]

    @staticmethod
    def _mail_waiting(session: ImapSession) -> bool:
        return any(u.kind == "EXISTS" for u in session.unsolicited)

    async def _save(self, cur: FolderCursor) -> None:
        await self._settle()
        await self._cursors.save(cur)
        self._unsaved = False

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
        self._unsaved = False
        del ctx

    async def _with_reports(
        self, session: ImapSession, fetched: list[dict[str, Value]]
    ) -> list[dict[str, Value]]:
        """New delivery reports (bounces) are fetched whole at once, so their `message received`
        carries the parsed `delivery_report` the linker needs (headers alone do not have it)."""
        reports = [_uid(i) for i in fetched if _report(i)]
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
            change = {"flags": m.flags, "modseq": m.modseq}
            if self._tuning.gmail:  # the stored labels follow the event's
                change["gmail_labels"] = m.gmail_labels
            writes.append(UpdateOne({"_id": d["_id"]}, {"$set": change}))
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
                fetched = await self._with_reports(session, await session.uid_fetch(compress(chunk), items))
                n = await self._emit_new(fetched, history=False)
                result.repaired += n
                cur.repairs += n
            if result.repaired:
                log.warning(
                    "reconciliation repaired drift",
                    extra={"inbox_id": ctx.inbox_id, "folder": ctx.folder, "repairs": result.repaired},
                )
