"""The IMAP the sender needs, behind one small interface: find the Sent folder, search it for a
Message-ID, append a copy.

`SentMailbox` is the interface; `ImaplibSentMailboxes` is the real implementation. It uses the stdlib
`imaplib` in worker threads because aioimaplib 2.0.3 has no STARTTLS and keeps its state at AUTH after
EXAMINE (see tests/integration/test_mail_lab.py); the sender's IMAP use is a few short commands per
message, so a thread per operation is cheap. One authenticated session per inbox is reused; any error
drops it. Only `EXAMINE` (read-only) and `APPEND` touch the mailbox; `CREATE` only when no Sent
folder exists at all.
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

from mailsync.inbox_record import InboxRecord

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

    def close(self) -> None:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            self.conn.logout()


class ImaplibSentMailboxes:
    def __init__(self, *, timeout: float, tls: ssl.SSLContext, sessions_per_inbox: int = 2) -> None:
        self._timeout = timeout
        self._tls = tls
        self._per_inbox = sessions_per_inbox
        self._idle: dict[str, list[_Session]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._sent_names: dict[str, str] = {}

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
        slot = self._slots.setdefault(record.id, asyncio.Semaphore(self._per_inbox))
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
    def _find(s: _Session, folder: str, message_id: str) -> int | None:
        # EXAMINE: read-only; the user's mailbox is theirs. Once open, each command (the SEARCH
        # itself) makes the server report new mail, so it is not re-opened per message.
        if s.selected != folder:
            typ, data = s.conn.select(quote(folder), readonly=True)
            _check(typ, data, f"EXAMINE {folder}")
            s.selected = folder
        typ, data = s.conn.uid("SEARCH", "HEADER", "Message-ID", quote(message_id))
        _check(typ, data, "UID SEARCH")
        uids = [int(u) for chunk in data if isinstance(chunk, bytes) for u in chunk.split()]
        return uids[-1] if uids else None

    @staticmethod
    def _append(s: _Session, folder: str, raw: bytes, when: datetime) -> Appended:
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
        def op(s: _Session) -> StoredCopy:
            folder = self._sent_folder(record.id, s)
            uid = self._find(s, folder, message_id)
            if uid is not None:
                return StoredCopy(folder, uid, None, "already_present")
            appended = self._append(s, folder, raw, when)
            return StoredCopy(folder, appended.uid, appended.uidvalidity, "appended")

        return await self._run(record, login, op)

    async def close(self) -> None:
        sessions = [s for idle in self._idle.values() for s in idle]
        self._idle.clear()
        for s in sessions:
            await asyncio.to_thread(s.close)


def _parse_listing(data: Sequence[object]) -> list[ListedFolder]:
    folders: list[ListedFolder] = []
    for item in data:
        if isinstance(item, bytes):
            parsed = parse_list_line(item.decode("utf-8", "replace"))
            if parsed is not None:
                folders.append(parsed)
    return folders
