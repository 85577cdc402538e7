"""One inbox kept in sync: login, folder choice, one worker per folder, IDLE or polling, reconnects.

Each folder worker owns one connection. INBOX and the Sent folder IDLE (restarted every
`idle_restart_seconds`, well before RFC 9051's 29 minutes, which also proves the connection alive);
other folders, and servers without IDLE, are polled no more often than the provider's floor. Any
connection error → jittered exponential backoff capped at `backoff_cap_seconds`, then a fresh
connection; the folder's cursor makes the next pass catch up. Authentication failures back off too
and stop after `auth_failure_limit` attempts with an `auth failed` event, instead of hammering the
server into locking the account.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from contracts import Envelope
from contracts.common import Address, ErrorInfo
from contracts.inbox import (
    InboxAuthFailed,
    InboxConnectFailed,
    InboxFailureData,
    InboxThrottled,
    InboxThrottledData,
    InitialSyncCompleted,
    InitialSyncCompletedData,
)
from contracts.sending import SendRequested, SendRequestedData
from mailsync import metrics
from mailsync.connection_budget import connection_shares, plan_lanes
from mailsync.credentials import Keyring
from mailsync.inbox_record import InboxRecord, OAuth2Auth, PasswordAuth
from mailsync.logs import scrub
from mailsync.oauth2 import OAuth2Error, ensure_access_token
from services.fetcher.imap.backoff import Backoff
from services.fetcher.imap.protocol import ProtocolError
from services.fetcher.imap.session import AuthenticationFailed, ConnectionLost, Folder, ImapError, ImapSession

from .budget import GMAIL_DAILY_BYTES, DownloadBudget, daily_limit
from .cursor import CursorStore
from .folder import FolderMissing, FolderSync, Publisher, SyncTuning
from .messages import FolderContext
from .rotation import FolderRotation, FolderWork

log = logging.getLogger("mailsync.fetcher.sync")
SYNC_STATE = "sync_state"
INBOXES = "inboxes"
GMAIL_FLOOR_SECONDS = 600.0
STATE_WRITE_ATTEMPTS = 4  # of the `initial_completed` write before the folder loop's own backoff takes over


@dataclass(frozen=True)
class SyncConfig:
    fetch_chunk: int = 500
    idle_restart_seconds: float = 300.0
    poll_interval_seconds: float = 300.0
    reconcile_interval_seconds: float = 3600.0
    connect_timeout_seconds: float = 30.0
    command_timeout_seconds: float = 120.0
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 600.0
    auth_failure_limit: int = 5
    tls_verify: bool = True
    tls_cafile: str | None = None
    bodies: bool = True
    body_max_bytes: int = 25 * 1024 * 1024
    body_pass_seconds: float = 10.0
    # After new mail, NOOP every `burst_poll_every_seconds` for `burst_poll_seconds` instead of IDLE:
    # mail comes in bursts, and IDLE hears of each message only after the server's notification delay.
    burst_poll_seconds: float = 2.0
    burst_poll_every_seconds: float = 0.05
    daily_download_mb: int | None = None  # None: the provider's known limit (Gmail 2,500 MB), else none
    connect_concurrency: int = 32  # connection set-ups in progress at once, for all inboxes of a replica
    confirmation_email: bool = False  # on initial-sync completion, a `send requested` to the inbox itself
    confirmation_subject: str = "Your mailbox is synchronized"
    imap_connections_per_account: int | None = None  # None: the provider's (mailsync/connection_budget.py)


class _Stop(Exception):
    """Raised inside the task group to end every folder worker."""


@dataclass
class _Shared:
    budget: DownloadBudget = field(default_factory=lambda: DownloadBudget(None))
    folders_pending: set[str] = field(default_factory=set)
    auth_failures: int = 0
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


def _aware(value: Any) -> datetime | None:
    """Mongo gives naive UTC datetimes back."""
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


TLS_READ_BUFFER = 16 * 1024


def shrink_tls_read_buffer(size: int = TLS_READ_BUFFER) -> None:
    """asyncio gives every TLS connection a 256 KiB read buffer (`SSLProtocol.max_size`, allocated up
    front): 2.5 GB for 10,000 idle IMAP connections. A TLS record carries at most 16 KiB, so 16 KiB
    costs big FETCHes a few more loop turns and nothing else. Process-wide; the fetcher sets it."""
    proto = getattr(asyncio, "sslproto", None)
    cls = getattr(proto, "SSLProtocol", None)
    if cls is not None and isinstance(getattr(cls, "max_size", None), int):
        cls.max_size = size


@functools.lru_cache(maxsize=8)
def _ssl_context(cafile: str | None, verify: bool) -> ssl.SSLContext:
    """One context per trust setting, shared by every connection: a context holds the parsed CA store
    (hundreds of KB), too much to build per connection when a replica holds thousands."""
    ctx = ssl.create_default_context(cafile=cafile)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def is_gmail(caps: frozenset[str]) -> bool:
    return "X-GM-EXT-1" in caps


def choose_folders(
    record: InboxRecord, folders: list[Folder], caps: frozenset[str]
) -> list[tuple[str, bool]]:
    """(folder, is_sent) pairs to sync: configured ones, else INBOX + Sent, or Gmail's All Mail."""
    by_name = {f.name: f for f in folders}
    sent = next((f.name for f in folders if "\\Sent" in f.flags), None)
    if sent is None:
        sent = next((n for n in ("Sent", "Sent Items", "Sent Messages", "INBOX.Sent") if n in by_name), None)
    if record.sync.folders:
        configured = dict.fromkeys(n for n in record.sync.folders if n in by_name or n.upper() == "INBOX")
        return [(n, n == sent) for n in configured]
    if is_gmail(caps):
        all_mail = next((f.name for f in folders if "\\All" in f.flags), None)
        if all_mail:
            return [(all_mail, False)]
    chosen = [("INBOX", False)]
    if sent:
        chosen.append((sent, True))
    return chosen


def wants_idle(name: str, is_sent: bool, folders: list[Folder], caps: frozenset[str]) -> bool:
    """INBOX and Sent IDLE; on Gmail so does All Mail, where every new message lands."""
    if name.upper() == "INBOX" or is_sent:
        return True
    return is_gmail(caps) and any(f.name == name and "\\All" in f.flags for f in folders)


class InboxSync:
    _CONNECTS_PER_INBOX = 4

    def __init__(
        self,
        record: InboxRecord,
        *,
        db: AsyncDatabase[dict[str, Any]],
        publisher: Publisher,
        keyring: Keyring | None,
        config: SyncConfig,
        source: str,
        http: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        resync_requested_at: datetime | None = None,
        connect_gate: asyncio.Semaphore | None = None,
    ) -> None:
        self._connect_gate = connect_gate or asyncio.Semaphore(self._CONNECTS_PER_INBOX)
        self.record = record
        # A resume after deactivation (or a resync command) asks for every folder to be synced afresh.
        self._resync_requested_at = _aware(resync_requested_at)
        self._db = db
        self._publisher = publisher
        self._keyring = keyring
        self._config = config
        self._source = source
        self._http = http
        self._sleep = sleep
        self._shared = _Shared()
        self._live_status: str | None = None
        self._announced_run: str | None = None  # the run whose `initial sync completed` Kafka acknowledged

    # ---- connecting -----------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        return _ssl_context(self._config.tls_cafile, self._config.tls_verify)

    async def _open(self) -> ImapSession:
        r = self.record
        # Connection set-ups (TCP, TLS, login) of all inboxes share one gate: a replica that starts
        # with thousands of inboxes ramps up instead of stampeding the servers and its own CPU.
        async with self._connect_gate:
            session = await ImapSession.connect(
                r.imap.host,
                r.imap.port,
                r.imap.security,
                ssl_context=self._ssl_context(),
                connect_timeout=self._config.connect_timeout_seconds,
            )
            session.timeout = self._config.command_timeout_seconds
            try:
                await self._authenticate(session)
            except BaseException:
                session.abort()
                raise
        metrics.imap_state(session, "syncing")
        return session

    async def _authenticate(self, session: ImapSession) -> None:
        auth = self.record.imap_auth
        if self._keyring is None:
            raise AuthenticationFailed(
                "LOGIN", "NO", "no credential key configured (MAILSYNC_CREDENTIALS_KEYS)"
            )
        if isinstance(auth, PasswordAuth):
            password = self._keyring.decrypt(auth.password, self.record.secret_owner("imap_auth.password"))
            await session.login(auth.username, password)
            return
        assert isinstance(auth, OAuth2Auth)
        client = self._http or httpx.AsyncClient(timeout=30)
        try:
            token = await ensure_access_token(self.record, self._keyring, client)
        except OAuth2Error as exc:
            raise AuthenticationFailed("AUTHENTICATE", "NO", str(exc), exc.code) from None
        finally:
            if self._http is None:
                await client.aclose()
        if token.update:
            await self._db[INBOXES].update_one({"_id": self.record.id}, {"$set": token.update})
        await session.authenticate_xoauth2(token.username, token.token)

    async def _close(self, session: ImapSession | None) -> None:
        if session is None:
            return
        if not session.closed:
            await session.logout()
        metrics.imap_state(session, None)

    # ---- supervision ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Sync until cancelled, or until authentication keeps failing."""
        backoff = self._backoff()
        while True:
            session: ImapSession | None = None
            try:
                session = await self._open()
                folders = await session.list_folders()
                caps = session.capabilities
            except AuthenticationFailed as exc:
                if await self._auth_failed(exc, backoff):
                    return
                continue
            except (ConnectionLost, ProtocolError, ImapError, OSError) as exc:
                await self._connect_failed(exc, backoff)
                continue
            finally:
                await self._close(session)
            break
        self._shared.auth_failures = 0
        chosen = choose_folders(self.record, folders, caps)
        self._shared.budget.limit = daily_limit(
            self.record.provider, is_gmail(caps), self._config.daily_download_mb
        )
        tuning = SyncTuning(
            fetch_chunk=self._config.fetch_chunk,
            backfill_days=self.record.sync.backfill_days,
            gmail=is_gmail(caps),
            bodies=self._config.bodies,
            body_max_bytes=self._config.body_max_bytes,
            body_pass_seconds=self._config.body_pass_seconds,
        )
        state = await self._run_state()
        await self._report_status("idle" if state.get("initial_completed") else "syncing")
        syncs = [
            (
                self._folder_sync(name, is_sent, tuning, state.get("resync_id")),
                wants_idle(name, is_sent, folders, caps),
            )
            for name, is_sent in chosen
        ]
        for fs, _ in syncs:
            if not await fs.initial_done():
                self._shared.folders_pending.add(fs.ctx.folder)
        if state.get("initial_completed"):
            self._shared.folders_pending.clear()
        elif not self._shared.folders_pending and syncs:
            # Every folder finished before a crash, the announcement did not: make it now.
            self._shared.folders_pending.add(syncs[0][0].ctx.folder)
            await self._folder_initial_done(syncs[0][0].ctx.folder, state)
        floor = GMAIL_FLOOR_SECONDS if tuning.gmail else 0.0
        try:
            async with asyncio.TaskGroup() as tg:
                for work, idle in self._workers(syncs, state):
                    tg.create_task(self._folder_loop(work, idle=idle, poll_floor=floor, state=state))
                tg.create_task(self._stop_watch())
        except* _Stop:
            log.warning(
                "sync stopped: authentication keeps failing", extra={"inbox_id": self.record.inbox_id}
            )

    async def _stop_watch(self) -> None:
        await self._shared.stopped.wait()
        raise _Stop  # ends the task group: authentication failed for good

    def _workers(
        self, syncs: list[tuple[FolderSync, bool]], state: dict[str, Any]
    ) -> list[tuple[FolderWork, bool]]:
        """(worker, idles) pairs, one connection each, within the fetcher's share of the account's
        connections (the sender keeps its own share for Sent copies): past it, IDLE folders keep
        their own connection and the others are polled in turn over the connections left."""
        share = connection_shares(
            self.record.provider, self.record.imap.host, self._config.imap_connections_per_account
        ).fetcher
        by_name = {fs.ctx.folder: fs for fs, _ in syncs}

        async def announce(folder: str) -> None:
            await self._folder_initial_done(folder, state)

        workers: list[tuple[FolderWork, bool]] = []
        for lane in plan_lanes([(fs.ctx.folder, idle) for fs, idle in syncs], share):
            if len(lane.folders) == 1:
                workers.append((by_name[lane.folders[0]], lane.idle))
            else:
                workers.append((FolderRotation([by_name[n] for n in lane.folders], announce), False))
        return workers

    def _backoff(self) -> Backoff:
        return Backoff(base=self._config.backoff_base_seconds, cap=self._config.backoff_cap_seconds)

    def _folder_sync(
        self, folder: str, is_sent: bool, tuning: SyncTuning, resync_id: str | None = None
    ) -> FolderSync:
        r = self.record
        own = {r.email.lower(), *(a.lower() for a in r.additional_from)}
        ctx = FolderContext(
            tenant_id=r.tenant_id,
            inbox_id=r.inbox_id,
            folder=folder,
            uidvalidity=0,
            source=self._source,
            own_addresses=frozenset(own),
            is_sent=is_sent,
            sharing=r.sharing,
            resync_id=resync_id,
        )
        return FolderSync(ctx, db=self._db, publisher=self._publisher, tuning=tuning)

    async def _run_state(self) -> dict[str, Any]:
        """The inbox's initial-sync run (id and start), created once and kept across restarts."""
        col = self._db[SYNC_STATE]
        doc = await col.find_one({"_id": self.record.id})
        # A document holding only the live status (a connection failed before the first run) is no run.
        if doc is None or "initial_run_id" not in doc:
            doc = {
                "_id": self.record.id,
                "tenant_id": self.record.tenant_id,
                "inbox_id": self.record.inbox_id,
                "initial_run_id": str(uuid.uuid4()),
                "initial_started_at": datetime.now(UTC),
                "initial_completed": False,
                "resync_handled_at": self._resync_requested_at,
            }
            fields = {k: v for k, v in doc.items() if k != "_id"}
            await col.update_one({"_id": self.record.id, "initial_run_id": None}, {"$set": fields})
            await col.update_one({"_id": self.record.id}, {"$setOnInsert": fields}, upsert=True)
            doc = await col.find_one({"_id": self.record.id}) or doc
        return await self._resync_if_requested(doc)

    async def _resync_if_requested(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A resync requested after the last one handled: forget the folder cursors (the mapping only;
        the deactivation already purged the stored mail) and start a new initial run. Its events are
        history and carry a `resync_id` derived from the request, so a crash half-way replays the same
        ids, and consumers that processed the first announcement process these too."""
        requested = self._resync_requested_at
        handled = _aware(doc.get("resync_handled_at"))
        if requested is None or (handled is not None and requested <= handled):
            return doc
        resync_id = f"resync:{requested.isoformat()}"
        await CursorStore(self._db).delete_inbox(self.record.tenant_id, self.record.inbox_id)
        update = {
            "initial_run_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.record.id}:{resync_id}")),
            "initial_started_at": datetime.now(UTC),
            "initial_completed": False,
            "resync_id": resync_id,
            "resync_handled_at": requested,
        }
        await self._db[SYNC_STATE].update_one({"_id": self.record.id}, {"$set": update})
        log.info("resync: syncing every folder afresh", extra={"inbox_id": self.record.inbox_id})
        return {**doc, **update}

    async def _folder_loop(  # noqa: PLR0912, PLR0915
        self, fs: FolderWork, *, idle: bool, poll_floor: float, state: dict[str, Any]
    ) -> None:
        backoff = self._backoff()
        last_reconcile = asyncio.get_running_loop().time()
        poll_until = 0.0  # NOOP polling instead of IDLE until then (after new mail)
        while True:
            session: ImapSession | None = None
            try:
                session = await self._open()
                self._shared.auth_failures = 0
                with contextlib.suppress(ImapError):  # QRESYNC where offered: expunges without UID sets
                    await session.enable("QRESYNC")
                while True:
                    now = asyncio.get_running_loop().time()
                    reconcile = now - last_reconcile >= self._config.reconcile_interval_seconds
                    counted = session.bytes_received
                    metrics.imap_state(session, "syncing")
                    result = await fs.run_pass(session, reconcile=reconcile)
                    self._shared.budget.add(session.bytes_received - counted, datetime.now(UTC))
                    await self._within_budget(session)
                    if reconcile:
                        last_reconcile = now
                    if result.repaired:
                        metrics.ERRORS.labels(code="sync.reconcile_repair").inc(result.repaired)
                    if result.received:
                        phase = "initial" if result.initial_completed_now else "incremental"
                        metrics.SYNC_MESSAGES.labels(phase=phase).inc(result.received)
                        if not result.initial_completed_now:  # new mail, not the backfill's history
                            poll_until = asyncio.get_running_loop().time() + self._config.burst_poll_seconds
                    if result.initial_completed_now or fs.ctx.folder in self._shared.folders_pending:
                        await self._folder_initial_done(fs.ctx.folder, state)
                    await self._report_status("idle" if state.get("initial_completed") else "syncing")
                    if result.more:
                        backoff.reset()
                        continue  # body backlog left: next slice at once (new mail is checked first)
                    if idle and "IDLE" in session.capabilities:
                        metrics.imap_state(session, "idle")
                        wait = self._config.idle_restart_seconds
                        if result.idle_seconds is not None:  # deferred work (bodies) after a short quiet
                            wait = min(wait, result.idle_seconds)
                        polling = poll_until - asyncio.get_running_loop().time()
                        if polling > 0:
                            metrics.imap_state(session, "polling")
                            woke = await session.poll(
                                min(wait, polling), self._config.burst_poll_every_seconds
                            )
                            if not woke and wait > polling:  # the burst window closed: IDLE for the rest
                                metrics.imap_state(session, "idle")
                                wait -= polling
                                woke = await session.idle(wait)
                        else:
                            woke = await session.idle(wait)
                        if woke or wait == self._config.idle_restart_seconds:
                            metrics.observe_idle(woke)
                    else:
                        metrics.imap_state(session, "polling")
                        await self._sleep(max(self._config.poll_interval_seconds, poll_floor))
                    # Reset once the connection lived through a whole wait: a server that drops every
                    # IDLE (BYE) would otherwise be reconnected to at the base delay forever.
                    backoff.reset()
            except FolderMissing:
                # Deleted or renamed on the server (logged once by FolderSync): no reconnect storm and
                # no `connect failed`; looked for again at the poll interval, holding no connection.
                await self._close(session)
                session = None
                backoff.reset()
                await self._sleep(max(self._config.poll_interval_seconds, poll_floor))
            except AuthenticationFailed as exc:
                if await self._auth_failed(exc, backoff):
                    self._shared.stopped.set()
                    return
            except (ConnectionLost, ProtocolError, ImapError, OSError) as exc:
                await self._connect_failed(exc, backoff, folder=fs.ctx.folder)
            except PyMongoError as exc:
                # The store is busy or away (FerretDB/SQLite answers SQLITE_BUSY under many writers):
                # this folder backs off and resumes from its cursor; the other folders carry on.
                delay = backoff.next_delay()
                log.warning(
                    "store unavailable, folder sync retries",
                    extra={
                        "inbox_id": self.record.inbox_id,
                        "folder": fs.ctx.folder,
                        "error": scrub(str(exc))[:300],
                        "retry_in": round(delay, 1),
                    },
                )
                metrics.ERRORS.labels(code="store.unavailable").inc()
                await self._sleep(delay)
            finally:
                await self._close(session)

    async def _within_budget(self, session: ImapSession) -> None:
        """Over the daily download budget: announce `throttled` (once a day) and wait for the next day."""
        resume_at = self._shared.budget.resume_at(datetime.now(UTC))
        if resume_at is None:
            return
        data = InboxThrottledData(
            attempt_id=f"download:{self._shared.budget.day}",
            limit="gmail.download_per_day"
            if self._shared.budget.limit == GMAIL_DAILY_BYTES
            else "download_per_day",
            resume_at=resume_at,
        )
        with contextlib.suppress(Exception):
            await self._publisher.publish_all(
                [
                    InboxThrottled.build(
                        data=data,
                        tenant_id=self.record.tenant_id,
                        inbox_id=self.record.inbox_id,
                        source=self._source,
                    )
                ]
            )
        log.warning(
            "daily download budget used up",
            extra={"inbox_id": self.record.inbox_id, "resume_at": resume_at.isoformat()},
        )
        await self._report_status(
            "throttled", f"daily download budget used up; resumes {resume_at.isoformat()}"
        )
        await session.logout()  # hold no connection while waiting
        await self._sleep(max(1.0, (resume_at - datetime.now(UTC)).total_seconds()))
        raise ConnectionLost("resuming after the download budget pause")

    async def _report_status(self, status: str, reason: str | None = None) -> None:
        """The live sync status (syncing, idle, connect_failed, throttled) in the sync engine's own
        `sync_state` document, written only on a change. Not in the registry: that document belongs to
        inbox commands, and an unguarded write here could overwrite a `paused` set at the same moment."""
        if status == self._live_status:
            return
        update = {"live_status": status, "live_status_reason": reason, "live_status_at": datetime.now(UTC)}
        try:
            await self._db[SYNC_STATE].update_one({"_id": self.record.id}, {"$set": update}, upsert=True)
        except Exception as exc:  # a status report must never stop the sync; the next change retries
            log.warning(
                "could not record the sync status",
                extra={"inbox_id": self.record.inbox_id, "error": scrub(str(exc))[:200]},
            )
            return
        self._live_status = status

    async def _folder_initial_done(self, folder: str, state: dict[str, Any]) -> None:
        pending = self._shared.folders_pending
        if folder not in pending:
            return
        pending.discard(folder)
        if pending or state.get("initial_completed"):
            return
        try:
            if self._announced_run != state["initial_run_id"]:
                await self._announce_initial_done(state)
                self._announced_run = state["initial_run_id"]
            await self._mark_initial_completed()
        except BaseException:
            # Still owed: the folder's next pass (after the loop's backoff) tries again, instead of the
            # state staying false until a restart announces the run a second time.
            pending.add(folder)
            raise
        state["initial_completed"] = True

    async def _announce_initial_done(self, state: dict[str, Any]) -> None:
        cursors = [
            c
            async for c in self._db["sync_cursors"].find(
                {"tenant_id": self.record.tenant_id, "inbox_id": self.record.inbox_id}
            )
        ]
        started = state["initial_started_at"]
        if started.tzinfo is None:
            started = started.replace(tzinfo=UTC)
        data = InitialSyncCompletedData(
            sync_run_id=state["initial_run_id"],
            messages=sum(int(c.get("initial_done_count", 0)) for c in cursors),
            folders=sorted(c["folder"] for c in cursors),
            backfill_days=self.record.sync.backfill_days,
            duration_seconds=max(0.0, (datetime.now(UTC) - started).total_seconds()),
        )
        event = InitialSyncCompleted.build(
            data=data, tenant_id=self.record.tenant_id, inbox_id=self.record.inbox_id, source=self._source
        )
        events: list[Envelope[Any]] = [event]
        if self._config.confirmation_email:
            events.append(self._confirmation(data))
        await self._publisher.publish_all(events)
        log.info(
            "initial sync completed", extra={"inbox_id": self.record.inbox_id, "messages": data.messages}
        )

    async def _mark_initial_completed(self) -> None:
        """The run state's `initial_completed`. FerretDB on SQLite refuses a write now and then while
        other writers hold the database (`database is locked`): retried in place with backoff a few
        times, then left to the caller. The registry status is left to its owner (inbox commands):
        FerretDB updates are whole-document writes, so an `idle` written here could overwrite a `paused`
        set at the same moment."""
        backoff = self._backoff()
        for attempt in range(1, STATE_WRITE_ATTEMPTS + 1):
            try:
                await self._db[SYNC_STATE].update_one(
                    {"_id": self.record.id}, {"$set": {"initial_completed": True}}
                )
                return
            except PyMongoError as exc:
                if attempt == STATE_WRITE_ATTEMPTS:
                    raise
                delay = backoff.next_delay()
                log.warning(
                    "could not record the completed initial sync, retrying",
                    extra={
                        "inbox_id": self.record.inbox_id,
                        "error": scrub(str(exc))[:200],
                        "retry_in": round(delay, 1),
                    },
                )
                await self._sleep(delay)

    def _confirmation(self, done: InitialSyncCompletedData) -> SendRequested:
        """The optional confirmation email (seeds: "confirmation when existing emails are synchronized"),
        sent by the sender from the inbox to itself. The idempotency key names the sync run, so a replay
        of this step never sends it twice, and a resync (a new run) confirms again."""
        r = self.record
        me = Address(email=r.email, name=r.display_name)
        days = "everything" if done.backfill_days is None else f"the last {done.backfill_days} days"
        data = SendRequestedData.model_validate(
            {
                "idempotency_key": f"initial-sync-confirmation:{done.sync_run_id}",
                "from": me,
                "to": [me],
                "subject": self._config.confirmation_subject,
                "text": (
                    f"Your mailbox {r.email} is now synchronized: {done.messages} existing messages "
                    f"({days}) in {', '.join(done.folders) or 'no folder'}. New mail follows in real time."
                ),
            }
        )
        return SendRequested.build(data=data, tenant_id=r.tenant_id, inbox_id=r.inbox_id, source=self._source)

    # ---- failures -------------------------------------------------------------------------------

    def _failure(
        self, code: str, message: str, field: str | None, hint: str | None, retry_at: datetime | None
    ) -> InboxFailureData:
        return InboxFailureData(
            attempt_id=f"{uuid.uuid4()}",
            protocol="imap",
            error=ErrorInfo(code=code, message=scrub(message)[:500], field=field, hint=hint),
            retry_at=retry_at,
        )

    async def _auth_failed(self, exc: AuthenticationFailed, backoff: Backoff) -> bool:
        """Emit `auth failed`; True when the limit is reached and syncing must stop."""
        shared = self._shared
        shared.auth_failures += 1
        final = shared.auth_failures >= self._config.auth_failure_limit
        delay = backoff.next_delay()
        retry_at = None if final else datetime.now(UTC) + timedelta(seconds=delay)
        data = self._failure(
            "auth.invalid_credentials",
            f"IMAP login refused: {exc.text}"[:300],
            "imap.password" if isinstance(self.record.imap_auth, PasswordAuth) else "imap.oauth",
            "check the password or use an app password; reconnect the inbox after fixing it",
            retry_at,
        )
        with contextlib.suppress(Exception):
            await self._publisher.publish_all(
                [
                    InboxAuthFailed.build(
                        data=data,
                        tenant_id=self.record.tenant_id,
                        inbox_id=self.record.inbox_id,
                        source=self._source,
                    )
                ]
            )
        metrics.ERRORS.labels(code="auth.invalid_credentials").inc()
        log.warning(
            "imap authentication failed",
            extra={"inbox_id": self.record.inbox_id, "failures": shared.auth_failures, "final": final},
        )
        if final:
            await self._db[INBOXES].update_one(
                {"_id": self.record.id, "status": {"$nin": ["paused", "deactivated", "removed"]}},
                {
                    "$set": {
                        "status": "auth_failed",
                        "status_reason": "imap login refused",
                        "status_changed_at": datetime.now(UTC),
                    }
                },
            )
            return True
        await self._sleep(delay)
        return False

    async def _connect_failed(self, exc: BaseException, backoff: Backoff, folder: str | None = None) -> None:
        delay = backoff.next_delay()
        log.warning(
            "imap connection problem, reconnecting",
            extra={
                "inbox_id": self.record.inbox_id,
                "folder": folder,
                "error": scrub(str(exc))[:300],
                "retry_in": round(delay, 1),
            },
        )
        metrics.ERRORS.labels(code="imap.connection").inc()
        metrics.observe_reconnect(exc)
        # Only a failure that repeats is worth an event; a single reconnect is routine.
        if backoff.failures >= 3:
            await self._report_status("connect_failed", f"IMAP connection failed: {scrub(str(exc))}"[:300])
            data = self._failure(
                "imap.unreachable",
                f"IMAP connection failed: {exc}"[:300],
                "imap.host",
                "check the server address and port",
                datetime.now(UTC) + timedelta(seconds=delay),
            )
            with contextlib.suppress(Exception):
                await self._publisher.publish_all(
                    [
                        InboxConnectFailed.build(
                            data=data,
                            tenant_id=self.record.tenant_id,
                            inbox_id=self.record.inbox_id,
                            source=self._source,
                        )
                    ]
                )
        await self._sleep(delay)
