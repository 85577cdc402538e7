"""The IMAP the sender needs, behind one small interface: find the Sent folder, search it for a
Message-ID, append a copy.

`SentMailbox` is the interface; `ImaplibSentMailboxes` is the real implementation. It uses the stdlib
`imaplib` in worker threads because aioimaplib 2.0.3 has no STARTTLS and keeps its state at AUTH after
EXAMINE (see tests/integration/test_mail_lab.py); the sender's IMAP use is a few short commands per
message, so a thread per operation is cheap. One authenticated session per inbox is reused; any error
drops it. Only `EXAMINE` (read-only) and `APPEND` touch the mailbox; `CREATE` only when no Sent
folder exists at all.

Concurrent `copy_once` calls of one inbox are gathered: a session takes up to `imap_batch.MAX_BATCH`
waiting copies, searches for all their Message-IDs at once and appends the absent ones pipelined
(servers with LITERAL+; others get the search and APPEND per message).
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import re
import ssl
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, TypeVar

from mailsync.connection_budget import connection_shares
from mailsync.inbox_record import InboxRecord

from . import imap_batch
from .logins import Login
from .sent_copy import CREATE_NAME, ListedFolder, choose_sent_folder, parse_list_line, quote

LoginSource = Callable[[bool], Awaitable[Login]]
T = TypeVar("T")


class ImapFailure(Exception):
    """An IMAP step failed; `code` is stable, the text has no secret."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Appended:
    uid: int | None
    uidvalidity: int | None


@dataclass(frozen=True)
class StoredCopy:
    folder: str
    uid: int | None
    uidvalidity: int | None
    how: Literal["appended", "already_present"]


class SentMailbox(Protocol):
    async def sent_folder(self, record: InboxRecord, login: LoginSource) -> str: ...

    async def find(self, record: InboxRecord, login: LoginSource, folder: str, message_id: str) -> int | None:
        """UID of a message with this Message-ID in the folder, or None."""
        ...

    async def append(
        self, record: InboxRecord, login: LoginSource, folder: str, raw: bytes, when: datetime
    ) -> Appended: ...

    async def copy_once(
        self, record: InboxRecord, login: LoginSource, message_id: str, raw: bytes, when: datetime
    ) -> StoredCopy:
        """Search the Sent folder for the Message-ID and append `raw` only when it is not there."""
        ...

    async def close(self) -> None: ...


_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]", re.IGNORECASE)


def _check(typ: str, data: Sequence[object], what: str) -> Sequence[object]:
    if typ != "OK":
        text = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")[:300]
        raise ImapFailure("imap.command_failed", f"{what} failed: {typ} {text}")
    return data


class _Session:
    """One authenticated imaplib connection; used by one task at a time (taken from the idle list)."""

    def __init__(self, conn: imaplib.IMAP4) -> None:
        self.conn = conn
        self.selected: str | None = None
        self.broken = False  # set when the connection failed midway (some results were still read)
        self._tags = 0

    def next_tag(self) -> str:
        # imaplib's tags are letters + a number; ours are told apart by the prefix.
        self._tags += 1
        return f"MS{self._tags}"

    def close(self) -> None:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            self.conn.logout()


class ImaplibSentMailboxes:
    def __init__(
        self,
        *,
        timeout: float,
        tls: ssl.SSLContext,
        sessions_per_inbox: int = 2,
        account_connections: int | None = None,
    ) -> None:
        self._timeout = timeout
        self._tls = tls
        self._per_inbox = sessions_per_inbox
        self._account_connections = account_connections  # MAILSYNC_IMAP_CONNECTIONS_PER_ACCOUNT
        self._idle: dict[str, list[_Session]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._sent_names: dict[str, str] = {}
        self._waiting: dict[str, list[_CopyJob]] = {}
        self._copiers: dict[str, int] = {}
        self._copier_tasks: set[asyncio.Task[None]] = set()

    def _open_blocking(self, record: InboxRecord, login: Login) -> _Session:
        server = record.imap
        try:
            if server.security == "tls":
                conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    server.host, server.port, ssl_context=self._tls, timeout=self._timeout
                )
            else:
                conn = imaplib.IMAP4(server.host, server.port, timeout=self._timeout)
                if server.security == "starttls":
                    conn.starttls(self._tls)
                else:
                    conn.shutdown()
                    raise ImapFailure(
                        "imap.plain_not_allowed", "IMAP without TLS is not used for credentials"
                    )
        except ssl.SSLCertVerificationError as exc:
            raise ImapFailure(
                "tls.certificate_invalid", f"IMAP certificate did not verify: {exc.verify_message}"
            ) from None
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ImapFailure("net.connect_failed", f"cannot reach the IMAP server: {exc}") from None
        try:
            if login.mechanism == "xoauth2":
                sasl = f"user={login.username}\x01auth=Bearer {login.secret}\x01\x01".encode()
                conn.authenticate("XOAUTH2", lambda _challenge: sasl)
            else:
                conn.login(login.username, login.secret)
        except imaplib.IMAP4.error as exc:
            with contextlib.suppress(OSError):
                conn.shutdown()
            # imaplib echoes the server's text only, never our arguments.
            raise ImapFailure("auth.invalid_credentials", f"IMAP login refused: {exc}"[:300]) from None
        return _Session(conn)

    async def _run(self, record: InboxRecord, login: LoginSource, op: Callable[[_Session], T]) -> T:
        """Run `op` in a thread on an idle session of the inbox (at most `sessions_per_inbox` open)."""
        # Never more than the sender's share of the account's connections (the fetcher holds the rest).
        share = connection_shares(record.provider, record.imap.host, self._account_connections).sender
        slot = self._slots.setdefault(record.id, asyncio.Semaphore(min(self._per_inbox, share)))
        async with slot:
            idle = self._idle.setdefault(record.id, [])
            session = idle.pop() if idle else None
            if session is None:
                creds = await login(False)
                session = await asyncio.to_thread(self._open_blocking, record, creds)
            try:
                result = await asyncio.to_thread(op, session)
            except ImapFailure:
                idle.append(session)  # the server said NO/BAD; the session itself is fine
                raise
            except (imaplib.IMAP4.error, OSError, EOFError) as exc:
                threading.Thread(target=session.close, daemon=True).start()
                raise ImapFailure(
                    "imap.connection_lost", f"IMAP session failed: {type(exc).__name__}: {exc}"[:300]
                ) from None
            if session.broken:
                threading.Thread(target=session.close, daemon=True).start()
            else:
                idle.append(session)
            return result

    def _sent_folder(self, key: str, s: _Session) -> str:
        found = self._sent_names.get(key)
        if found is not None:
            return found
        # Servers with SPECIAL-USE (RFC 6154) mark \Sent in a plain LIST too (Dovecot, Gmail).
        typ, data = s.conn.list('""', "*")
        found = choose_sent_folder(_parse_listing(_check(typ, data, "LIST")))
        if found is None:
            typ, data = s.conn.create(quote(CREATE_NAME))
            if typ != "OK" and b"ALREADYEXISTS" not in b" ".join(d for d in data if isinstance(d, bytes)):
                _check(typ, data, f"CREATE {CREATE_NAME}")
            found = CREATE_NAME
        self._sent_names[key] = found
        return found

    @staticmethod
    def _select(s: _Session, folder: str) -> None:
        # EXAMINE: read-only; the user's mailbox is theirs. Once open, each command (the SEARCH
        # itself) makes the server report new mail, so it is not re-opened per message.
        if s.selected != folder:
            typ, data = s.conn.select(quote(folder), readonly=True)
            _check(typ, data, f"EXAMINE {folder}")
            s.selected = folder

    @staticmethod
    def _find(s: _Session, folder: str, message_id: str) -> int | None:
        ImaplibSentMailboxes._select(s, folder)
        typ, data = s.conn.uid("SEARCH", "HEADER", "Message-ID", quote(message_id))
        _check(typ, data, "UID SEARCH")
        uids = [int(u) for chunk in data if isinstance(chunk, bytes) for u in chunk.split()]
        return uids[-1] if uids else None

    @staticmethod
    def _append(s: _Session, folder: str, raw: bytes, when: datetime | str) -> Appended:
        typ, data = s.conn.append(quote(folder), "(\\Seen)", imaplib.Time2Internaldate(when), raw)
        _check(typ, data, f"APPEND {folder}")
        blob = b" ".join(d for d in data if isinstance(d, bytes))
        m = _APPENDUID.search(blob)
        return Appended(int(m.group(2)), int(m.group(1))) if m else Appended(None, None)

    async def sent_folder(self, record: InboxRecord, login: LoginSource) -> str:
        return await self._run(record, login, lambda s: self._sent_folder(record.id, s))

    async def find(self, record: InboxRecord, login: LoginSource, folder: str, message_id: str) -> int | None:
        return await self._run(record, login, lambda s: self._find(s, folder, message_id))

    async def append(
        self, record: InboxRecord, login: LoginSource, folder: str, raw: bytes, when: datetime
    ) -> Appended:
        return await self._run(record, login, lambda s: self._append(s, folder, raw, when))

    async def copy_once(
        self, record: InboxRecord, login: LoginSource, message_id: str, raw: bytes, when: datetime
    ) -> StoredCopy:
        item = imap_batch.CopyItem(message_id, raw, imaplib.Time2Internaldate(when))
        job = _CopyJob(item, asyncio.get_running_loop().create_future())
        self._waiting.setdefault(record.id, []).append(job)
        if self._copiers.get(record.id, 0) < self._per_inbox:
            self._copiers[record.id] = self._copiers.get(record.id, 0) + 1
            task = asyncio.create_task(self._copier(record, login))
            self._copier_tasks.add(task)
            task.add_done_callback(self._copier_tasks.discard)
        return await job.done

    async def _copier(self, record: InboxRecord, login: LoginSource) -> None:
        """Takes the inbox's waiting copies a batch at a time until none is left."""
        waiting = self._waiting.setdefault(record.id, [])
        try:
            while waiting:
                jobs = waiting[: imap_batch.MAX_BATCH]
                del waiting[: len(jobs)]
                jobs = [j for j in jobs if not j.done.done()]  # the caller gave up (shutdown)
                if jobs:
                    await self._copy_jobs(record, login, jobs)
        finally:
            self._copiers[record.id] -= 1

    async def _copy_jobs(self, record: InboxRecord, login: LoginSource, jobs: list[_CopyJob]) -> None:
        def op(s: _Session) -> list[StoredCopy | ImapFailure]:
            return self._copy_batch(record.id, s, jobs)

        results: list[StoredCopy | BaseException]
        try:
            results = list(await self._run(record, login, op))
        except Exception as exc:  # the session, the login or the search failed: every copy of the batch
            results = [exc] * len(jobs)
        for job, result in zip(jobs, results, strict=True):
            if job.done.done():
                continue
            if isinstance(result, BaseException):
                job.done.set_exception(result)
            else:
                job.done.set_result(result)

    def _copy_batch(self, key: str, s: _Session, jobs: list[_CopyJob]) -> list[StoredCopy | ImapFailure]:
        folder = self._sent_folder(key, s)
        if len(jobs) == 1 or b"LITERAL+" not in _capabilities(s):
            return [self._copy_one(s, folder, job.item) for job in jobs]
        self._select(s, folder)
        # Search first, append only when absent: a retry never duplicates the copy. Any hit (rare: a
        # resumed copy) sends the batch the per-message way, which tells which one is there.
        typ, data = s.conn.uid("SEARCH", *imap_batch.search_any([j.item.message_id for j in jobs]))
        _check(typ, data, "UID SEARCH")
        if any(chunk.strip() for chunk in data if isinstance(chunk, bytes)):
            return [self._copy_one(s, folder, job.item) for job in jobs]
        return self._append_pipelined(s, folder, [job.item for job in jobs])

    def _copy_one(self, s: _Session, folder: str, item: imap_batch.CopyItem) -> StoredCopy | ImapFailure:
        uid = self._find(s, folder, item.message_id)
        if uid is not None:
            return StoredCopy(folder, uid, None, "already_present")
        try:
            appended = self._append(s, folder, item.raw, item.internal_date)
        except ImapFailure as exc:
            return exc
        return StoredCopy(folder, appended.uid, appended.uidvalidity, "appended")

    @staticmethod
    def _append_pipelined(
        s: _Session, folder: str, items: list[imap_batch.CopyItem]
    ) -> list[StoredCopy | ImapFailure]:
        tags = [s.next_tag() for _ in items]
        pending = dict.fromkeys(tags)
        results: dict[str, StoredCopy | ImapFailure] = {}
        try:
            s.conn.send(imap_batch.append_commands(tags, folder, items))
            while len(results) < len(tags):
                line = _read_response_line(s.conn)
                done = imap_batch.parse_tagged(line)
                if done is None or done.tag not in pending:
                    continue  # untagged news (EXISTS, RECENT) or someone else's
                if done.status == "OK":
                    uid, validity = imap_batch.appended_uid(done.text)
                    results[done.tag] = StoredCopy(folder, uid, validity, "appended")
                else:
                    results[done.tag] = ImapFailure(
                        "imap.command_failed", f"APPEND {folder} failed: {done.status} {done.text}"[:300]
                    )
        except (imaplib.IMAP4.error, OSError, EOFError) as exc:
            # What was answered stands; the rest may or may not be in: a retry searches first.
            s.broken = True
            lost = ImapFailure(
                "imap.connection_lost", f"IMAP session failed: {type(exc).__name__}: {exc}"[:300]
            )
            return [results.get(tag, lost) for tag in tags]
        return [results[tag] for tag in tags]

    async def close(self) -> None:
        sessions = [s for idle in self._idle.values() for s in idle]
        self._idle.clear()
        for s in sessions:
            await asyncio.to_thread(s.close)


@dataclass
class _CopyJob:
    item: imap_batch.CopyItem
    done: asyncio.Future[StoredCopy]


def _capabilities(s: _Session) -> set[bytes]:
    return {c.encode() if isinstance(c, str) else c for c in s.conn.capabilities}


def _read_response_line(conn: imaplib.IMAP4) -> bytes:
    """One response line, with any literal it announces read along (untagged data may carry one)."""
    line = conn.readline()
    if not line:
        raise EOFError("the IMAP server closed the connection")
    size = imap_batch.literal_length(line)
    while size is not None:
        conn.read(size)
        more = conn.readline()
        if not more:
            raise EOFError("the IMAP server closed the connection")
        line = more
        size = imap_batch.literal_length(more)
    return line


def _parse_listing(data: Sequence[object]) -> list[ListedFolder]:
    folders: list[ListedFolder] = []
    for item in data:
        if isinstance(item, bytes):
            parsed = parse_list_line(item.decode("utf-8", "replace"))
            if parsed is not None:
                folders.append(parsed)
    return folders
