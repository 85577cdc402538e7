"""The delivery loop: queued send requests → SMTP → `message sent` → Sent-folder copy.

State lives in three collections:
- `send_requests` (the outbox intake, one per idempotency key; the command as accepted),
- `send_queue` (one document per request still being worked on: status, attempts, lease, copy state),
- `send_outcomes` (the final state, written once when the queue document is done and deleted).
The queue stays small, which matters on FerretDB v1, where every update or delete scans its collection.

Exactly once in effect: the intent (`status: sending`, attempts+1) is stored before SMTP starts, the
outcome right after SMTP answered. A queue document found in `sending` whose lease expired belongs to a
process that died in between: its Sent folder is searched for our Message-ID before any resend, and a
resend counts against `sender_max_attempts` like any retry (past it: `send failed`, dead letter). Every
write carries the claim token, so a process that lost its claim stops instead of sending twice.

The usual path costs no claim at all: the intake inserts a due entry already claimed (intent and lease
included; the unique `_id` lets one inserter win) and hands it over in memory (`preclaim`, `take`).
Scans of the queue find the rest (retries, scheduled sends, expired leases). A send holds one of
`sender_concurrency` slots until SMTP answered; the outcome, the events and the Sent copy follow
outside it, their database writes group-committed with other sends'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import ValidationError
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError

from contracts import Envelope
from contracts.common import ErrorInfo
from contracts.sending import (
    MessageSent,
    MessageSentData,
    SendDeadLettered,
    SendDeadLetteredData,
    SendFailed,
    SendFailedData,
    SendRequestedData,
    SentCopyFailed,
    SentCopyFailedData,
    SentCopyStored,
    SentCopyStoredData,
)
from mailsync import metrics
from mailsync.credentials import CredentialKeyError, DecryptionError, Keyring
from mailsync.inbox_record import InboxRecord
from mailsync.kafka import EventPublisher
from mailsync.logs import scrub
from mailsync.oauth2 import OAuth2Error
from mailsync.store import Document, insert_new

from . import limits
from .admission import admit
from .attachments import AttachmentUnavailable, resolve
from .batching import GroupCommit
from .compose import ComposeError, ReplyContext, compose_wire, envelope_recipients
from .failures import (
    Failure,
    backoff_seconds,
    classify_smtp,
    retry_decision,
    unconfirmed_decision,
    write_retry_delay,
)
from .imap_sent import ImapFailure, SentMailbox
from .logins import Login, login_for, mechanism_for
from .sent_copy import copy_action
from .settings import SenderSettings
from .smtp_transport import OutcomeUnknown, PlainNotAllowed, SmtpResult, SmtpTransport

SEND_REQUESTS = "send_requests"
SEND_QUEUE = "send_queue"
SEND_OUTCOMES = "send_outcomes"
SEND_COUNTERS = "send_counters"
SEND_JOURNAL = "send_journal"  # insert-only: `<key>:sent` holds the SMTP outcome the moment it is known
REPLY_CONTEXT = "reply_context"
INBOXES = "inboxes"

INBOX_CACHE_SECONDS = 3.0
INBOX_STALE_SECONDS = 30.0  # an expired copy serves this long at most while its refresh is out
FLUSH_BATCH = 256  # finished queue entries dropped together
FLUSH_SECONDS = 2.0  # ... or after this long
TRAILING = 16  # sends past SMTP (Sent copy, outcome) held at most, per send slot ...
TRAILING_BYTES = 256 * 1024 * 1024  # ... and their messages' bytes at most
TAKE_WAIT_SECONDS = 30.0  # the intake waits this long at most for room in the backlog
BUSY_SCAN_SECONDS = 5.0
STOP_STEP_SECONDS = 5.0  # with every slot taken, the queue is scanned for other due work this seldom
# The journal insert after SMTP accepted, retried in place (jittered backoff, ~3 s at most in all, within
# STOP_STEP_SECONDS): a lost write sends its whole batch through recovery after the lease, and inboxes
# whose Sent copy we append would get their messages sent again (the search finds no copy yet).
JOURNAL_WRITE_ATTEMPTS = 5
JOURNAL_RETRY_BASE_SECONDS = 0.2
JOURNAL_RETRY_MAX_SECONDS = 1.6

log = logging.getLogger("mailsync.sender.delivery")


def _write_error_text(exc: PyMongoError) -> str:
    """For the log: codes and server words only (a bulk write error's details carry the documents)."""
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors", [])[:3]
        text = "; ".join(f"{e.get('code')}: {e.get('errmsg', '')}" for e in errors) or "bulk write failed"
    else:
        text = str(exc)
    return scrub(f"{type(exc).__name__}: {text}")[:300]


def _seen(future: asyncio.Future[Any]) -> None:
    """Marks a background future's failure as seen (its waiters, if any, get it themselves)."""
    if not future.cancelled():
        future.exception()


class LostClaim(Exception):
    """Another process took this request over (our lease expired); stop touching it."""


@dataclass
class _Work:
    q: dict[str, Any]
    req: dict[str, Any]
    cmd: SendRequestedData
    token: str
    raw: bytes | None = None  # the bytes sent over SMTP, reused for the Sent copy


def _strip(mid: str) -> str:
    return mid.strip().removeprefix("<").removesuffix(">")


def stored_refusals(refused: dict[str, str]) -> list[dict[str, str]]:
    """Refused recipients as stored: a list of `{recipient, reply}`, not a mapping by address. FerretDB
    v1 refuses dots in field names (every address has one) and nested arrays; the journal write of an
    accepted message would fail, and recovery would then send it again."""
    return [{"recipient": rcpt, "reply": reply} for rcpt, reply in refused.items()]


def _refusals(stored: Any) -> dict[str, str]:
    if isinstance(stored, dict):  # a mapping by address (MongoDB accepts one)
        return {str(k): str(v) for k, v in stored.items()}
    return {str(r["recipient"]): str(r["reply"]) for r in stored or []}


def sent_event(req: dict[str, Any], q: dict[str, Any], cmd: SendRequestedData, source: str) -> MessageSent:
    smtp = q.get("smtp") or {}
    reply = q.get("reply") or {}
    data = MessageSentData(
        idempotency_key=cmd.idempotency_key,
        send_id=q["send_id"],
        message_id=_strip(q["message_id"]),
        accepted_recipients=smtp.get("accepted", []),
        refused_recipients=_refusals(smtp.get("refused")),
        smtp_response=smtp.get("response", ""),
        attempts=max(1, int(q.get("attempts", 1))),
        from_=cmd.from_,
        to=cmd.to,
        cc=cmd.cc,
        bcc=cmd.bcc,
        subject=cmd.subject,
        in_reply_to=[_strip(reply["message_id"])] if reply.get("message_id") else [],
        references=[_strip(r) for r in reply.get("references", [])],
        record_ids=cmd.record_ids,
    )
    return MessageSent.build(
        data=data, tenant_id=req["tenant_id"], inbox_id=req["inbox_id"], source=source, subject=q["send_id"]
    )


def failed_events(
    req: dict[str, Any], q: dict[str, Any], cmd: SendRequestedData, source: str
) -> list[Envelope[Any]]:
    failure = q["failure"]
    error = ErrorInfo.model_validate(failure["error"])
    events: list[Envelope[Any]] = [
        SendFailed.build(
            data=SendFailedData(
                idempotency_key=cmd.idempotency_key,
                send_id=q["send_id"],
                permanent=bool(failure["permanent"]),
                attempts=int(q.get("attempts", 0)),
                error=error,
            ),
            tenant_id=req["tenant_id"],
            inbox_id=req["inbox_id"],
            source=source,
            subject=cmd.idempotency_key,
        )
    ]
    if failure.get("exhausted"):
        events.append(
            SendDeadLettered.build(
                data=SendDeadLetteredData(
                    idempotency_key=cmd.idempotency_key,
                    send_id=q["send_id"],
                    attempts=int(q.get("attempts", 0)),
                    error=error,
                    command=cmd,
                ),
                tenant_id=req["tenant_id"],
                inbox_id=req["inbox_id"],
                source=source,
                subject=cmd.idempotency_key,
            )
        )
    return events


class Delivery:
    def __init__(
        self,
        db: AsyncDatabase[Document],
        publisher: EventPublisher,
        source: str,
        settings: SenderSettings,
        *,
        smtp: SmtpTransport,
        imap: SentMailbox,
        keyring: Keyring | None,
        http: httpx.AsyncClient,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rand: random.Random | None = None,
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._source = source
        self._s = settings
        self._smtp = smtp
        self._imap = imap
        self._keyring = keyring
        self._http = http
        self._now = clock
        self._rand = rand or random.Random()
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()  # sends before or in SMTP: the send slots
        # Past SMTP (outcome, events, Sent copy), with the size of the message each still holds.
        self._trailing: dict[asyncio.Task[None], int] = {}
        self._trailing_bytes = 0
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._inbox_cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._inbox_reads: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        self._finished: list[str] = []
        self._flush_due = 0.0
        self._flush_task: asyncio.Task[None] | None = None
        self._journal = GroupCommit(self._write_journal)
        self._outcomes = GroupCommit(self._write_outcomes)
        # Claimed entries waiting for a free slot: (queue document, claim token, when claimed).
        self._backlog: deque[tuple[dict[str, Any], str, float]] = deque()
        self._room = asyncio.Event()  # set while the backlog is short enough for more intake
        self._room.set()
        self._scan_wanted = True
        self._next_scan = 0.0
        self._scan_task: asyncio.Task[None] | None = None

    # ---- loop ---------------------------------------------------------------------------------

    def wake(self) -> None:
        """New `queued` entries in the database: look for due work now."""
        self._scan_wanted = True
        self._wake.set()

    def preclaim(self, queued: dict[str, Any]) -> bool:
        """Make a new queue entry, due now, claimed by this process as it is inserted.

        The intake's insert (unique `_id`: exactly one inserter wins) then stores the claim and the
        intent together (`status: sending`, attempts 1, lease in `next_at`), and `take` hands the entry
        over in memory: no claim scan of the queue, no claim write. Entries due later stay `queued`.
        """
        due = queued.get("next_at")
        if not isinstance(due, datetime) or self._stopping:
            return False
        if len(self._backlog) >= self._s.sender_concurrency + self._s.sender_intake_batch_size:
            return False  # `take` gave up waiting for room: stays `queued`, for a scan later
        now = self._now()
        if (due if due.tzinfo is not None else due.replace(tzinfo=UTC)) > now:
            return False
        queued.update(
            {
                "status": "sending",
                "attempts": 1,
                "claim": uuid.uuid4().hex,
                "next_at": now + timedelta(seconds=self._s.sender_lease_seconds),
            }
        )
        return True

    async def take(self, claimed: list[dict[str, Any]]) -> None:
        """Entries `preclaim`ed and inserted by the intake; returns once the backlog has room again,
        so the intake (and Kafka consumption) keeps pace with sending instead of claiming far ahead."""
        at = time.monotonic()
        for doc in claimed:
            doc["status"] = "queued"  # in memory: still to be sent; the intent is already stored
            doc["intent_stored"] = True
            self._backlog.append((doc, doc["claim"], at))
        self._wake.set()
        # Bounded: the intake must not hang on sends that cannot progress (e.g. while shutting down).
        deadline = time.monotonic() + min(TAKE_WAIT_SECONDS, self._s.sender_lease_seconds / 4)
        while len(self._backlog) > self._s.sender_concurrency and not self._stopping:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                break

    async def start(self) -> None:
        await self._db[SEND_QUEUE].create_index("next_at")
        self._loop_task = asyncio.create_task(self._loop(), name="sender-delivery")

    async def stop(self) -> None:
        self._stopping = True
        self._room.set()
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for task in (self._scan_task, self._flush_task):
            if task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task), 5.0)
        if self._inflight or self._trailing:
            # In-flight sends finish (their outcome is stored); anything left is recovered by lease.
            pending = self._inflight | set(self._trailing)
            await asyncio.wait(pending, timeout=self._s.shutdown_timeout_seconds / 2)
        # Each step bounded: what does not finish is recovered by lease after a restart.
        for step in (
            self._journal.close(),
            self._outcomes.close(),
            self._flush_finished(),
            self._release_backlog(),
        ):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(step, STOP_STEP_SECONDS)
        for closing in (self._smtp.close(), self._imap.close()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing, 5.0)

    async def _release_backlog(self) -> None:
        """Claimed but never started: back to `queued` and due now, so a restart sends them at once
        instead of after the lease (and without a Sent-folder search: no SMTP was tried)."""
        fresh = [q["_id"] for q, _, _ in self._backlog if q.get("intent_stored")]
        self._backlog.clear()
        if fresh:
            await self._db[SEND_QUEUE].update_many(
                {"_id": {"$in": fresh}, "status": "sending"},
                {
                    "$set": {"status": "queued", "next_at": self._now(), "claim": None},
                    "$inc": {"attempts": -1},
                },
            )

    async def _write_journal(self, docs: list[dict[str, Any]]) -> None:
        """Retried a few times: duplicates are ignored, so a retry after a partly applied insert is safe.
        Only when every attempt failed do the batch's sends wait for recovery after their lease."""
        attempt = 1
        while True:
            try:
                await insert_new(self._db[SEND_JOURNAL], docs)
                return
            except PyMongoError as exc:
                delay = write_retry_delay(
                    attempt,
                    JOURNAL_WRITE_ATTEMPTS,
                    JOURNAL_RETRY_BASE_SECONDS,
                    JOURNAL_RETRY_MAX_SECONDS,
                    self._rand,
                )
                error = _write_error_text(exc)
                if delay is None:
                    log.error(
                        "journal write of SMTP outcomes failed, attempts exhausted; these sends are resolved "
                        "by recovery after their lease (Sent-folder search, then resend within "
                        "sender_max_attempts)",
                        extra={
                            "count": len(docs),
                            "keys": [str(d["_id"]).removesuffix(":sent") for d in docs[:10]],
                            "attempts": attempt,
                            "error": error,
                        },
                    )
                    raise
                log.warning(
                    "journal write of SMTP outcomes failed; retrying",
                    extra={
                        "count": len(docs),
                        "attempt": attempt,
                        "retry_in": round(delay, 2),
                        "error": error,
                    },
                )
                await asyncio.sleep(delay)
                attempt += 1

    async def _write_outcomes(self, docs: list[dict[str, Any]]) -> None:
        await insert_new(self._db[SEND_OUTCOMES], docs)
        # Only now may the queue entries go: a crash before this finds no outcome and resumes.
        self._finished.extend(d["_id"] for d in docs)
        self._wake.set()

    async def _flush_finished(self) -> None:
        """Drop finished queue documents in one round trip. The loop gathers them for a batch or a
        short while: a finished entry left a little longer holds its lease and has its outcome stored,
        so nobody takes it up again meanwhile."""
        if not self._finished:
            return
        self._flush_due = time.monotonic() + FLUSH_SECONDS
        ids, self._finished = self._finished, []
        try:
            # One `$in` delete: one read of the (small) queue on FerretDB v1, whatever the batch size;
            # per-`_id` deletes cost a write transaction each (measured slower from ~64 documents on).
            await self._db[SEND_QUEUE].delete_many({"_id": {"$in": ids}})
        except Exception:
            self._finished.extend(ids)
            raise

    async def _flush_in_background(self) -> None:
        try:
            await self._flush_finished()
        except Exception:
            log.exception("dropping finished queue entries failed; retrying")

    async def _scan(self, limit: int) -> None:
        """Due entries the intake did not hand over: retries, scheduled sends, expired leases."""
        try:
            claimed = await self.claim(limit)
        except Exception:
            log.exception("claiming queued sends failed; retrying")
            return
        at = time.monotonic()
        self._backlog.extend((q, token, at) for q, token in claimed)
        self._scan_wanted = len(claimed) >= limit  # more may be due right now
        self._wake.set()

    def _start_due(self) -> None:
        """Backlog entries into free slots; an entry that waited past half its lease is left for a
        later claim (its lease runs out, so another process may already take it up)."""
        concurrency = self._s.sender_concurrency
        while (
            self._backlog
            and len(self._inflight) < concurrency
            and len(self._trailing) < TRAILING * concurrency
            and self._trailing_bytes < TRAILING_BYTES
        ):
            q, token, at = self._backlog.popleft()
            if time.monotonic() - at > self._s.sender_lease_seconds / 2:
                continue
            task = asyncio.create_task(self._run(q, token))
            self._inflight.add(task)
            task.add_done_callback(self._done)
        if len(self._backlog) <= concurrency:
            self._room.set()

    async def _loop(self) -> None:
        # Work comes from the intake in memory (`take`) and from scans of the queue for what else is
        # due (each scan reads the whole queue on FerretDB: only when asked for or every poll interval).
        # Database writes run beside the loop, never in its way.
        while not self._stopping:
            self._wake.clear()
            flushing = self._flush_task is not None and not self._flush_task.done()
            flush_due = len(self._finished) >= FLUSH_BATCH or time.monotonic() >= self._flush_due
            if self._finished and not flushing and (flush_due or not (self._inflight or self._trailing)):
                self._flush_task = asyncio.create_task(self._flush_in_background())
            self._start_due()
            concurrency = self._s.sender_concurrency
            now = time.monotonic()
            scanning = self._scan_task is not None and not self._scan_task.done()
            busy = bool(self._backlog or self._inflight or self._trailing)
            # While busy with other work only now and then: each scan costs the database a read of the
            # whole queue (slowing every other write of ours), yet retries and recoveries must not starve.
            if not scanning and (
                (not busy and (self._scan_wanted or now >= self._next_scan))
                or now >= self._next_scan + BUSY_SCAN_SECONDS
            ):
                self._scan_wanted = False
                self._next_scan = now + self._s.sender_poll_interval_seconds
                self._scan_task = asyncio.create_task(self._scan(concurrency))
            scan_at = self._next_scan + (BUSY_SCAN_SECONDS if busy else 0.0)
            # A running scan wakes the loop when it is done.
            timeout = FLUSH_SECONDS if scanning else max(0.01, scan_at - time.monotonic())
            if self._finished:
                timeout = min(timeout, FLUSH_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _leave_slot(self, size: int) -> None:
        """SMTP is over for this send: its slot goes to the next one while it stores the outcome and
        the Sent copy (bounded separately, by count and by the bytes of the messages held)."""
        task = asyncio.current_task()
        if task is not None and task in self._inflight:
            self._inflight.discard(task)
            self._trailing[task] = size
            self._trailing_bytes += size
            self._wake.set()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._trailing_bytes -= self._trailing.pop(task, 0)
        self._wake.set()

    async def claim(self, limit: int) -> list[tuple[dict[str, Any], str]]:
        """Take up to `limit` due queue documents; the lease is their new `next_at`.

        A queued request's claim is also its intent record (`status: sending`, attempts+1), so the
        usual path costs one write before SMTP. Batched: a few writes per batch, not per document.
        """
        now = self._now()
        queue = self._db[SEND_QUEUE]
        due = (
            await queue.find({"next_at": {"$lte": now}}, {"_id": 1, "status": 1})
            .sort("next_at", 1)
            .limit(limit)
            .to_list()
        )
        if not due:
            return []
        token = uuid.uuid4().hex
        lease = now + timedelta(seconds=self._s.sender_lease_seconds)
        fresh = [d["_id"] for d in due if d.get("status") == "queued"]
        others = [d["_id"] for d in due if d.get("status") != "queued"]
        if fresh:
            await queue.update_many(
                {"_id": {"$in": fresh}, "status": "queued", "next_at": {"$lte": now}},
                {"$set": {"status": "sending", "claim": token, "next_at": lease}, "$inc": {"attempts": 1}},
            )
        if others:
            await queue.update_many(
                {"_id": {"$in": others}, "status": {"$ne": "queued"}, "next_at": {"$lte": now}},
                {"$set": {"claim": token, "next_at": lease}},
            )
        docs = await queue.find({"_id": {"$in": fresh + others}, "claim": token}).to_list()
        fresh_set = set(fresh)
        for doc in docs:
            if doc["_id"] in fresh_set and doc.get("status") == "sending":
                doc["status"] = "queued"  # in memory: still to be sent; the intent is already stored
                doc["intent_stored"] = True
        return [(doc, token) for doc in docs]

    async def run_due_once(self) -> int:
        """Process what is due now, to completion (tests and benchmarks drive the loop with this)."""
        claimed = await self.claim(self._s.sender_concurrency)
        await asyncio.gather(*(self._run(q, t) for q, t in claimed))
        return len(claimed)

    async def _run(self, q: dict[str, Any], token: str) -> None:
        try:
            await self.process(q, token)
        except LostClaim:
            log.warning(
                "lost the claim on a send request; another process continues it", extra={"key": q["_id"]}
            )
        except Exception:
            # Unexpected (e.g. database down): the lease expires and the request is picked up again.
            log.exception("send request processing failed; it will be retried", extra={"key": q["_id"]})

    # ---- one request --------------------------------------------------------------------------

    async def _save(self, w: _Work, fields: dict[str, Any], *, release_at: datetime | None = None) -> None:
        update: dict[str, Any] = {"$set": dict(fields)}
        if release_at is not None:
            update["$set"]["next_at"] = release_at
            update["$set"]["claim"] = None
        res = await self._db[SEND_QUEUE].update_one({"_id": w.q["_id"], "claim": w.token}, update)
        if res.matched_count == 0:
            raise LostClaim(w.q["_id"])
        w.q.update(fields)

    async def process(self, q: dict[str, Any], token: str) -> None:
        # Small commands travel in the queue entry (one read less per message); large ones are read.
        req = q if "command" in q else await self._db[SEND_REQUESTS].find_one({"_id": q["_id"]})
        if req is None:
            await self._db[SEND_QUEUE].delete_one({"_id": q["_id"], "claim": token})
            return
        try:
            cmd = SendRequestedData.model_validate(req["command"])
        except ValidationError as exc:
            log.error("stored command does not validate", extra={"key": q["_id"], "error": str(exc)[:300]})
            await self._db[SEND_QUEUE].delete_one({"_id": q["_id"], "claim": token})
            return
        w = _Work(q, req, cmd, token)
        if not q.get("intent_stored"):
            # Taken over after a lease expired: finished already? SMTP outcome already journaled?
            if await self._db[SEND_OUTCOMES].find_one({"_id": q["_id"]}, {"_id": 1}) is not None:
                self._finished.append(q["_id"])
                return
            if q["status"] == "sending":
                journal = await self._db[SEND_JOURNAL].find_one({"_id": f"{q['_id']}:sent"})
                if journal is not None:
                    journal.pop("_id")
                    q.update(journal)
        if w.q["status"] == "sending" and not await self._resolve_unconfirmed(w):
            return
        if w.q["status"] == "queued" and not await self._attempt(w):
            return
        # Announcements are not recorded separately: after a crash they repeat with the same event ids.
        if w.q["status"] == "sent":
            if not w.q.get("announced"):
                await self._publisher.publish(sent_event(req, w.q, cmd, self._source))
                w.q["announced"] = True
            if w.q.get("copy_state") == "pending" and not await self._copy(w):
                return
        elif w.q["status"] == "failed" and not w.q.get("announced"):
            await self._publisher.publish_all(failed_events(req, w.q, cmd, self._source))
            w.q["announced"] = True
        await self._finish(w)

    async def _finish(self, w: _Work) -> None:
        outcome = {k: v for k, v in w.q.items() if k not in ("next_at", "claim", "intent_stored", "command")}
        outcome["finished_at"] = self._now()
        # Group-committed with other finished requests; the queue entry keeps its lease until then.
        await self._outcomes.add(outcome)

    async def _fail(self, w: _Work, failure: Failure, *, exhausted: bool = False) -> None:
        await self._save(
            w,
            {
                "status": "failed",
                "announced": False,
                "failure": {
                    "permanent": not failure.transient or exhausted,
                    "exhausted": exhausted,
                    "error": failure.error.model_dump(),
                },
            },
        )

    async def _transient(self, w: _Work, failure: Failure, *, keep_status: str = "queued") -> bool:
        """Retry later, or fail when out of attempts. Returns False when the request waits."""
        attempts = int(w.q.get("attempts", 0))
        decision = retry_decision(failure, max(attempts, 1), self._s.sender_max_attempts)
        if decision == "retry":
            delay = backoff_seconds(
                max(attempts, 1),
                self._s.sender_backoff_base_seconds,
                self._s.sender_backoff_max_seconds,
                self._rand,
            )
            log.info(
                "send deferred",
                extra={
                    "key": w.q["_id"],
                    "code": failure.error.code,
                    "attempts": attempts,
                    "delay_s": round(delay, 2),
                },
            )
            await self._save(
                w,
                {"status": keep_status, "last_error": failure.error.model_dump()},
                release_at=self._now() + timedelta(seconds=delay),
            )
            return False
        await self._fail(w, failure, exhausted=decision == "exhausted")
        return True

    async def inbox_doc(self, tenant_id: str, inbox_id: str) -> dict[str, Any] | None:
        """The inbox registry document, cached for a few seconds (a pause or a new alias may lag
        that long; reading it for every message would cost a database round trip each)."""
        key = InboxRecord.key(tenant_id, inbox_id)
        cached = self._inbox_cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        # Concurrent sends of one inbox share one read when the cache entry runs out; while it is out,
        # the expired copy still serves (it lags by that read's duration, bounded by INBOX_STALE_SECONDS).
        reading = self._inbox_reads.get(key)
        if reading is None:
            reading = asyncio.ensure_future(self._read_inbox(key))
            self._inbox_reads[key] = reading
            reading.add_done_callback(lambda _: self._inbox_reads.pop(key, None))
            reading.add_done_callback(_seen)
        if cached is not None and cached[0] + INBOX_STALE_SECONDS > now:
            return cached[1]
        return await asyncio.shield(reading)

    async def _read_inbox(self, key: str) -> dict[str, Any] | None:
        doc = await self._db[INBOXES].find_one({"_id": key})
        self._inbox_cache[key] = (time.monotonic() + INBOX_CACHE_SECONDS, doc)
        return doc

    async def _inbox(self, w: _Work) -> InboxRecord | Failure:
        doc = await self.inbox_doc(w.req["tenant_id"], w.req["inbox_id"])
        refusal = admit(w.cmd, doc, w.req["inbox_id"])
        if refusal is not None:
            return Failure(False, refusal.error)
        try:
            return InboxRecord.model_validate(doc)
        except ValidationError as exc:
            fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors(include_input=False))
            return Failure(
                False,
                ErrorInfo(
                    code="inbox.incomplete",
                    message=f"the inbox record lacks what sending needs ({fields[:300]})",
                    hint="reconnect the inbox",
                ),
            )

    def _login_source(self, record: InboxRecord, protocol: str) -> Any:
        async def get(force: bool) -> Login:
            if self._keyring is None:
                raise CredentialKeyError("no credential key configured (MAILSYNC_CREDENTIALS_KEYS)")
            login = await login_for(record, self._keyring, self._http, protocol, force_refresh=force)  # type: ignore[arg-type]
            if login.update:
                await self._db[INBOXES].update_one({"_id": record.id}, {"$set": login.update})
                self._inbox_cache.pop(record.id, None)
            return login

        return get

    async def _reserve(self, record: InboxRecord) -> limits.Allow | limits.Delay | limits.Refuse:
        lim = limits.limits_for(
            record.provider, per_day=self._s.sender_daily_limit, per_minute=self._s.sender_per_minute_limit
        )
        if lim.per_day is None and lim.per_minute is None:
            return limits.Allow()
        now = self._now()
        key = f"{record.id}:send:{limits.day_bucket(now)}"
        minute = f"m.{limits.minute_field(now)}"
        doc = await self._db[SEND_COUNTERS].find_one_and_update(
            {"_id": key},
            {"$inc": {"count": 1, minute: 1}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None
        decision = limits.check_send(lim, int(doc["count"]), int(doc["m"][minute[2:]]), now)
        if not isinstance(decision, limits.Allow):
            await self._db[SEND_COUNTERS].update_one({"_id": key}, {"$inc": {"count": -1, minute: -1}})
        return decision

    async def _reply_context(self, w: _Work) -> ReplyContext | Failure | None:
        key = w.cmd.in_reply_to_message_key
        if not key:
            return None
        doc = await self._db[REPLY_CONTEXT].find_one(
            {"_id": f"{w.req['tenant_id']}:{w.req['inbox_id']}:{key}"}
        )
        if doc is None:
            return Failure(
                True,
                ErrorInfo(
                    code="send.reply_target_unknown",
                    message=f"the message being answered ({key!r}) is not known (yet) for this inbox",
                    field="in_reply_to_message_key",
                ),
            )
        return ReplyContext(doc["message_id"], list(doc.get("references", [])))

    async def _prepare(
        self, w: _Work, record: InboxRecord
    ) -> tuple[bytes, ReplyContext | None, datetime] | bool:
        """The wire message, within limits; a bool when the request failed (True) or waits (False)."""
        reply = await self._reply_context(w)
        if isinstance(reply, Failure):
            return await self._transient(w, reply)
        try:
            attachments = await resolve(
                w.cmd.attachments, self._db, self._http, self._s.sender_max_message_bytes
            )
            date = w.q.get("date") or self._now()
            raw = compose_wire(
                w.cmd,
                send_id=w.q["send_id"],
                message_id=w.q["message_id"],
                date=date,
                reply=reply,
                attachments=attachments,
            )
        except ComposeError as exc:
            await self._fail(w, Failure(False, ErrorInfo(code=exc.code, message=str(exc), field=exc.field)))
            return True
        except AttachmentUnavailable as exc:
            return await self._transient(
                w, Failure(True, ErrorInfo(code="send.attachment_unavailable", message=str(exc)))
            )
        if len(raw) > self._s.sender_max_message_bytes:
            error = ErrorInfo(
                code="send.message_too_large",
                message=f"the message is {len(raw)} bytes; the limit is {self._s.sender_max_message_bytes}",
                field="attachments",
            )
            await self._fail(w, Failure(False, error))
            return True
        decision = await self._reserve(record)
        if isinstance(decision, limits.Refuse):
            await self._fail(w, Failure(False, decision.error))
            return True
        if isinstance(decision, limits.Delay):
            log.info("send delayed by rate limit", extra={"key": w.q["_id"], "reason": decision.reason})
            attempts = int(w.q.get("attempts", 0)) - (1 if w.q.get("intent_stored") else 0)
            await self._save(w, {"status": "queued", "attempts": max(0, attempts)}, release_at=decision.until)
            return False

        return raw, reply, date

    async def _submit(self, w: _Work, record: InboxRecord, raw: bytes) -> SmtpResult | bool:
        """SMTP; a bool when the attempt failed: True for `failed`, False for a retry later."""
        recipients = envelope_recipients(w.cmd)
        try:
            result = await self._smtp.send(
                record, self._login_source(record, "smtp"), w.cmd.from_.email.strip(), recipients, raw
            )
        except OutcomeUnknown as exc:
            metrics.observe_smtp(None)  # no reply to the data came
            # The server may have the message: next time, search the Sent folder before resending.
            failure = classify_smtp(exc.cause, mechanism=mechanism_for(record, "smtp"))
            return await self._transient(w, failure, keep_status="sending")
        except PlainNotAllowed as exc:
            error = ErrorInfo(code="smtp.plain_not_allowed", message=str(exc), field="smtp.security")
            await self._fail(w, Failure(False, error))
            return True
        except (CredentialKeyError, DecryptionError) as exc:
            error = ErrorInfo(
                code="auth.credentials_unreadable", message=str(exc), hint="reconnect the inbox"
            )
            await self._fail(w, Failure(False, error))
            return True
        except OAuth2Error as exc:
            error = ErrorInfo(
                code=exc.code,
                message=str(exc),
                field="smtp_auth",
                hint="reconnect the inbox" if exc.revoked else None,
            )
            if exc.revoked:
                await self._fail(w, Failure(False, error))
                return True
            return await self._transient(w, Failure(True, error))
        except Exception as exc:  # every SMTP failure is classified; none escapes
            metrics.observe_smtp(exc)
            failure = classify_smtp(exc, mechanism=mechanism_for(record, "smtp"))
            if failure.transient:
                return await self._transient(w, failure)
            await self._fail(w, failure)
            return True
        metrics.observe_smtp(result.response)
        return result

    async def _attempt(self, w: _Work) -> bool:
        """One SMTP attempt. True when the request reached `sent` or `failed`."""
        record = await self._inbox(w)
        if isinstance(record, Failure):
            await self._fail(w, record)
            return True
        prepared = await self._prepare(w, record)
        if isinstance(prepared, bool):
            return prepared
        raw, reply, date = prepared
        # Intent before SMTP: a crash from here on is resolved by searching the Sent folder. A fresh
        # claim stored it already (status `sending`, attempts+1); a resend after recovery stores it now.
        reply_doc = {"message_id": reply.message_id, "references": reply.references} if reply else None
        if w.q.pop("intent_stored", False):
            w.q.update({"status": "sending"})
        else:
            await self._save(w, {"status": "sending", "attempts": int(w.q.get("attempts", 0)) + 1})
        result = await self._submit(w, record, raw)
        self._leave_slot(len(raw))
        if isinstance(result, bool):
            return result
        w.raw = raw
        if self._s.sender_fault_pause_after_smtp_seconds:
            await asyncio.sleep(self._s.sender_fault_pause_after_smtp_seconds)
        action = copy_action(record.sent_copy, record.provider, record.provider_files_sent_copy)
        await self._journal_sent(
            w,
            {
                "status": "sent",
                "announced": False,
                "sent_at": self._now(),
                "smtp": {
                    "accepted": result.accepted,
                    "refused": stored_refusals(result.refused),
                    "response": result.response,
                },
                "copy_action": action,
                "copy_state": "skipped" if action == "never" else "pending",
                "raw_size": len(raw),
                "date": date,
                "reply": reply_doc,
            },
        )
        return True

    async def _journal_sent(self, w: _Work, fields: dict[str, Any]) -> None:
        """The SMTP outcome, stored at once as an insert (an update would scan the queue on FerretDB)."""
        await self._journal.add({"_id": f"{w.q['_id']}:sent", **fields})
        w.q.update(fields)

    async def _resolve_unconfirmed(self, w: _Work) -> bool:
        """The previous attempt may have been accepted: look for our Message-ID in the Sent folder."""
        record = await self._inbox(w)
        if isinstance(record, Failure):
            await self._fail(w, record)
            return True
        login = self._login_source(record, "imap")
        try:
            folder = await self._imap.sent_folder(record, login)
            uid = await self._imap.find(record, login, folder, w.q["message_id"])
        except (ImapFailure, CredentialKeyError, DecryptionError, OAuth2Error) as exc:
            code = getattr(exc, "code", "imap.failed")
            failure = Failure(True, ErrorInfo(code=str(code), message=f"cannot check the Sent folder: {exc}"))
            return await self._transient(w, failure, keep_status="sending")
        if uid is not None:
            log.info(
                "interrupted send found in the Sent folder; not sending again", extra={"key": w.q["_id"]}
            )
            await self._save(
                w,
                {
                    "status": "sent",
                    "announced": False,
                    "sent_at": self._now(),
                    "smtp": {
                        "accepted": envelope_recipients(w.cmd),
                        "refused": [],
                        "response": "recovered: the Message-ID is in the Sent folder",
                    },
                    "copy_action": "found",
                    "copy_state": "stored",
                    "copy": {"folder": folder, "uid": uid, "how": "already_present"},
                },
            )
            metrics.observe_sent_copy("already_present")
            await self._publisher.publish(
                SentCopyStored.build(
                    data=SentCopyStoredData(
                        send_id=w.q["send_id"],
                        message_id=_strip(w.q["message_id"]),
                        folder=folder,
                        uid=uid,
                        how="already_present",
                    ),
                    tenant_id=w.req["tenant_id"],
                    inbox_id=w.req["inbox_id"],
                    source=self._source,
                    subject=w.q["send_id"],
                )
            )
            return True
        attempts = int(w.q.get("attempts", 0))
        decision = unconfirmed_decision(
            self._s.sender_unconfirmed_policy, attempts, self._s.sender_max_attempts
        )
        if decision == "exhausted":
            log.warning(
                "interrupted send not found in the Sent folder; out of attempts, not sending again",
                extra={"key": w.q["_id"], "attempts": attempts},
            )
            error = ErrorInfo(
                code="send.attempts_exhausted",
                message=f"the send was interrupted after SMTP started ({attempts} attempts, the limit is "
                f"{self._s.sender_max_attempts}) and the message is not in the Sent folder; not resending "
                "(it may have been delivered)",
            )
            await self._fail(w, Failure(True, error), exhausted=True)
            return True
        if decision == "fail":
            error = ErrorInfo(
                code="send.outcome_unknown",
                message="the send was interrupted after SMTP started and the message is not in the "
                "Sent folder; not resending (it may have been delivered)",
            )
            await self._fail(w, Failure(False, error))
            return True
        log.warning("interrupted send not found in the Sent folder; sending again", extra={"key": w.q["_id"]})
        await self._save(w, {"status": "queued"})
        return True

    async def _copy(self, w: _Work) -> bool:
        """The Sent-folder copy. True when done (stored or given up), False when it waits for a retry."""
        action = w.q.get("copy_action")
        q, req = w.q, w.req
        if action == "provider_filed":
            event = SentCopyStored.build(
                data=SentCopyStoredData(
                    send_id=q["send_id"], message_id=_strip(q["message_id"]), folder="", how="provider_filed"
                ),
                tenant_id=req["tenant_id"],
                inbox_id=req["inbox_id"],
                source=self._source,
                subject=q["send_id"],
            )
            # Counted before the event: whoever sees the event also sees the metric.
            metrics.observe_sent_copy("provider_filed")
            await self._publisher.publish(event)
            w.q.update({"copy_state": "stored", "copy": {"how": "provider_filed"}})
            return True
        record = await self._inbox(w)
        attempts = int(q.get("copy_attempts", 0)) + 1
        if isinstance(record, Failure):
            return await self._copy_failed(w, attempts, record.error, retry=False)
        lim = limits.limits_for(
            record.provider, upload_bytes_per_day=self._s.sender_upload_budget_bytes_per_day
        )
        if lim.upload_bytes_per_day is not None:
            now = self._now()
            doc = await self._db[SEND_COUNTERS].find_one_and_update(
                {"_id": f"{record.id}:upload:{limits.day_bucket(now)}"},
                {"$inc": {"bytes": int(q.get("raw_size", 0))}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            assert doc is not None
            budget = limits.check_upload(lim, int(doc["bytes"]), now)
            if isinstance(budget, limits.Delay):
                await self._db[SEND_COUNTERS].update_one(
                    {"_id": doc["_id"]}, {"$inc": {"bytes": -int(q.get("raw_size", 0))}}
                )
                log.info("sent copy waits for the upload budget", extra={"key": q["_id"]})
                await self._save(w, {}, release_at=budget.until)
                return False
        if self._s.sender_fault_pause_before_append_seconds:
            await asyncio.sleep(self._s.sender_fault_pause_before_append_seconds)
        login = self._login_source(record, "imap")
        try:
            raw = w.raw
            if raw is None:  # resumed after a restart: the same message again (same Message-ID)
                reply = q.get("reply")
                attachments = await resolve(
                    w.cmd.attachments, self._db, self._http, self._s.sender_max_message_bytes
                )
                raw = compose_wire(
                    w.cmd,
                    send_id=q["send_id"],
                    message_id=q["message_id"],
                    date=q["date"],
                    reply=ReplyContext(reply["message_id"], reply["references"]) if reply else None,
                    attachments=attachments,
                )
            # Search first, append only when absent: a retry never duplicates the copy.
            stored = await self._imap.copy_once(record, login, q["message_id"], raw, q["date"])
            folder, uid, uidvalidity, how = stored.folder, stored.uid, stored.uidvalidity, stored.how
        except (
            ImapFailure,
            CredentialKeyError,
            DecryptionError,
            OAuth2Error,
            AttachmentUnavailable,
            ComposeError,
        ) as exc:
            code = getattr(exc, "code", "imap.failed")
            return await self._copy_failed(
                w, attempts, ErrorInfo(code=str(code), message=f"Sent copy failed: {exc}"[:500]), retry=True
            )
        metrics.observe_sent_copy(how)  # before the event, as above
        await self._publisher.publish(
            SentCopyStored.build(
                data=SentCopyStoredData(
                    send_id=q["send_id"],
                    message_id=_strip(q["message_id"]),
                    folder=folder,
                    uid=uid,
                    uidvalidity=uidvalidity,
                    how=how,
                ),
                tenant_id=req["tenant_id"],
                inbox_id=req["inbox_id"],
                source=self._source,
                subject=q["send_id"],
            )
        )
        # Not stored separately: _finish records it; a crash before that searches and finds the copy.
        w.q.update(
            {
                "copy_state": "stored",
                "copy_attempts": attempts,
                "copy": {"folder": folder, "uid": uid, "uidvalidity": uidvalidity, "how": how},
            }
        )
        return True

    async def _copy_failed(self, w: _Work, attempts: int, error: ErrorInfo, *, retry: bool) -> bool:
        will_retry = retry and attempts < self._s.sender_copy_max_attempts
        event = SentCopyFailed.build(
            data=SentCopyFailedData(
                send_id=w.q["send_id"],
                message_id=_strip(w.q["message_id"]),
                attempts=attempts,
                will_retry=will_retry,
                error=error,
            ),
            tenant_id=w.req["tenant_id"],
            inbox_id=w.req["inbox_id"],
            source=self._source,
            subject=w.q["send_id"],
        )
        metrics.observe_sent_copy("retry" if will_retry else "failed")
        await self._publisher.publish(event)
        log.warning(
            "sent copy failed", extra={"key": w.q["_id"], "code": error.code, "will_retry": will_retry}
        )
        if will_retry:
            delay = backoff_seconds(
                attempts, self._s.sender_backoff_base_seconds, self._s.sender_backoff_max_seconds, self._rand
            )
            await self._save(
                w,
                {"copy_attempts": attempts, "copy_error": error.model_dump(), "announced": True},
                release_at=self._now() + timedelta(seconds=delay),
            )
            return False
        await self._save(
            w, {"copy_state": "failed", "copy_attempts": attempts, "copy_error": error.model_dump()}
        )
        return True
