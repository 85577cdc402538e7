"""A small Gmail-like IMAP server for tests: what the fetcher uses of Gmail, and nothing that writes.

Written from RFC 3501 (IMAP4rev1), RFC 2177 (IDLE), RFC 7162 (CONDSTORE) and Google's "IMAP
Extensions" page: `X-GM-EXT-1` in CAPABILITY, `X-GM-MSGID` (a message's 64-bit id, the same in every
folder), `X-GM-THRID` (its thread), `X-GM-LABELS` (its labels; system labels as `\\Inbox`, `\\Sent`),
and the folders of the special-use kind (`[Gmail]/All Mail` is `\\All`, `[Gmail]/Sent Mail` `\\Sent`).

Every message is in All Mail; each label is also a folder holding the messages that carry it, under
its own UIDs. Commands that change a mailbox or open it read-write (SELECT, STORE, EXPUNGE, COPY, MOVE,
APPEND, CREATE, DELETE, RENAME, CLOSE) are refused with NO and recorded in `refused`, so a test proves
its client read-only. asyncio on 127.0.0.1, an ephemeral port, plain or TLS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

ALL_MAIL = "[Gmail]/All Mail"
SENT_MAIL = "[Gmail]/Sent Mail"
_SYSTEM_FOLDERS = {ALL_MAIL: "\\All", SENT_MAIL: "\\Sent", "INBOX": ""}
_LABEL_OF_FOLDER = {"INBOX": "\\Inbox", SENT_MAIL: "\\Sent"}
PRE_AUTH_CAPS = "IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 AUTH=PLAIN"
CAPS = (
    "IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 UIDPLUS COMPRESS=DEFLATE "
    "ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT LIST-EXTENDED LIST-STATUS LITERAL- SPECIAL-USE"
)
_WRITES = frozenset(
    {"SELECT", "STORE", "EXPUNGE", "COPY", "MOVE", "APPEND", "CREATE", "DELETE", "RENAME", "CLOSE"}
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass
class GmailMessage:
    raw: bytes
    labels: list[str]  # system labels as `\Inbox`, user labels by name
    msgid: int
    thrid: int
    internal: datetime
    flags: list[str] = field(default_factory=list)
    modseq: int = 1

    def in_folder(self, folder: str) -> bool:
        if folder == ALL_MAIL:
            return True
        return _LABEL_OF_FOLDER.get(folder, folder) in self.labels

    @property
    def header(self) -> bytes:
        end = self.raw.find(b"\r\n\r\n")
        return self.raw if end < 0 else self.raw[: end + 4]


@dataclass
class _Folder:
    name: str
    uidvalidity: int
    uids: dict[int, GmailMessage] = field(default_factory=dict)  # UID → message, ascending
    uidnext: int = 1


def _imap_date(dt: datetime) -> str:
    dt = dt.astimezone(UTC)
    return f"{dt.day:02d}-{_MONTHS[dt.month - 1]}-{dt.year} {dt:%H:%M:%S} +0000"


def _mutf7(text: str) -> str:
    """RFC 3501 5.1.3 modified UTF-7: runs of non-ASCII as `&` + base64 of UTF-16BE (`,` for `/`) + `-`."""

    def shift(m: re.Match[str]) -> str:
        b64 = base64.b64encode(m.group().encode("utf-16-be")).decode().rstrip("=")
        return "&" + b64.replace("/", ",") + "-"

    return re.sub(r"[^\x20-\x7e]+", shift, text.replace("&", "&-"))


def _quoted(text: str) -> bytes:
    return b'"' + text.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _label(label: str) -> bytes:
    """System labels go out as atoms (`\\Inbox`), user labels as quoted strings, as Gmail does."""
    return label.encode() if label.startswith("\\") else _quoted(_mutf7(label))


def _tokens(text: str) -> list[str]:
    """Atoms, quoted strings (unquoted) and parenthesized groups (kept whole) of a command line."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == " ":
            i += 1
        elif c == '"':
            j, buf = i + 1, []
            while text[j] != '"':
                if text[j] == "\\":
                    j += 1
                buf.append(text[j])
                j += 1
            out.append("".join(buf))
            i = j + 1
        elif c == "(":
            depth, j = 0, i
            while True:
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
                if depth == 0:
                    break
            out.append(text[i:j])
            i = j
        else:
            j = text.find(" ", i)
            j = len(text) if j < 0 else j
            out.append(text[i:j])
            i = j
    return out


def _in_set(uid: int, spec: str, highest: int) -> bool:
    """RFC 3501 sequence sets over UIDs: `1:5,7,9:*`; `*` is the highest UID in use."""
    for part in spec.split(","):
        lo_s, _, hi_s = part.partition(":")
        lo = highest if lo_s == "*" else int(lo_s)
        hi = lo if not hi_s else highest if hi_s == "*" else int(hi_s)
        if min(lo, hi) <= uid <= max(lo, hi):
            return True
    return False


class FakeGmail:
    def __init__(
        self,
        username: str,
        password: str,
        *,
        labels: tuple[str, ...] = ("Work", "Receipts"),
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.username, self.password, self._tls = username, password, tls
        names = [*_SYSTEM_FOLDERS, *labels]
        self.folders = {n: _Folder(n, uidvalidity=600 + i) for i, n in enumerate(names)}
        self.port = 0
        self.modseq = 1
        self.examined: list[str] = []  # every EXAMINE, in order
        self.commands: list[str] = []  # every command name, in order
        self.refused: list[str] = []  # write commands tried (must stay empty for a read-only client)
        self.connections = 0
        self.most_connections = 0
        self._next_id = 1_278_455_344_230_334_865  # a real-looking 64-bit X-GM-MSGID
        self._idlers: set[_Client] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- the mailbox, as a test drives it ---------------------------------------------------

    def deliver(
        self,
        raw: bytes,
        labels: list[str],
        *,
        flags: list[str] | None = None,
        thread_of: GmailMessage | None = None,
        when: datetime | None = None,
    ) -> GmailMessage:
        """A new message with its labels; IDLE clients on an affected folder hear `EXISTS`."""
        self.modseq += 1
        self._next_id += 7
        msg = GmailMessage(
            raw=raw,
            labels=list(labels),
            msgid=self._next_id,
            thrid=thread_of.thrid if thread_of else self._next_id,
            internal=when or datetime.now(UTC) - timedelta(seconds=1),
            flags=list(flags or []),
            modseq=self.modseq,
        )
        for folder in self.folders.values():
            if msg.in_folder(folder.name):
                folder.uids[folder.uidnext] = msg
                folder.uidnext += 1
                self._push(folder.name, f"* {len(folder.uids)} EXISTS")
        return msg

    def relabel(self, msg: GmailMessage, labels: list[str]) -> None:
        """Labels changed elsewhere: the message's MODSEQ moves (label folders are not updated)."""
        self.modseq += 1
        msg.labels, msg.modseq = list(labels), self.modseq
        folder = self.folders[ALL_MAIL]
        for seq, (uid, m) in enumerate(folder.uids.items(), 1):
            if m is msg:
                self._push(ALL_MAIL, f"* {seq} FETCH (UID {uid} MODSEQ ({msg.modseq}))")

    def _push(self, folder: str, line: str) -> None:
        for client in list(self._idlers):
            if client.selected == folder:
                client.write(line.encode() + b"\r\n")

    # ---- server -----------------------------------------------------------------------------

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.most_connections = max(self.most_connections, self.connections)
        client = _Client(self, reader, writer)
        try:
            await client.run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.connections -= 1
            self._idlers.discard(client)
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _Client:
    def __init__(self, server: FakeGmail, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server, self.reader, self.writer = server, reader, writer
        self.authenticated = False
        self.selected: str | None = None

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def run(self) -> None:
        self.write(f"* OK [CAPABILITY {PRE_AUTH_CAPS}] Gimap ready for requests\r\n".encode())
        while True:
            line = await self.reader.readline()
            if not line:
                return
            tag, _, rest = line.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
            name, _, args = rest.partition(" ")
            name = name.upper()
            if name == "UID":
                sub, _, args = args.partition(" ")
                name = f"UID {sub.upper()}"
            self.server.commands.append(name)
            if not await self._dispatch(tag, name, args):
                return
            await self.writer.drain()

    async def _dispatch(self, tag: str, name: str, args: str) -> bool:  # noqa: PLR0912
        ok = f"{tag} OK Success\r\n".encode()
        if name.rsplit(" ", maxsplit=1)[-1] in _WRITES:
            self.server.refused.append(f"{name} {args}".strip())
            self.write(f"{tag} NO [CANNOT] this test server is read-only\r\n".encode())
            return True
        if name == "LOGOUT":
            self.write(b"* BYE LOGOUT Requested\r\n" + ok)
            await self.writer.drain()
            return False
        if name == "CAPABILITY":
            caps = CAPS if self.authenticated else PRE_AUTH_CAPS
            self.write(f"* CAPABILITY {caps}\r\n".encode() + ok)
        elif name == "NOOP":
            self.write(ok)
        elif name == "LOGIN":
            user, password = [*_tokens(args), "", ""][:2]
            if (user, password) != (self.server.username, self.server.password):
                self.write(f"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n".encode())
            else:
                self.authenticated = True
                self.write(f"{tag} OK [CAPABILITY {CAPS}] {user} authenticated (Success)\r\n".encode())
        elif not self.authenticated:
            self.write(f"{tag} BAD Command not allowed before login\r\n".encode())
        elif name == "LIST":
            self._list()
            self.write(ok)
        elif name == "ENABLE":
            self.write(b"* ENABLED\r\n" + ok)  # nothing the fetcher asks for (QRESYNC) is offered
        elif name == "EXAMINE":
            self._examine(tag, args)
        elif self.selected is None:
            self.write(f"{tag} BAD No mailbox selected\r\n".encode())
        elif name == "UID SEARCH":
            self._search(args)
            self.write(ok)
        elif name == "UID FETCH":
            self._fetch(args)
            self.write(ok)
        elif name == "IDLE":
            await self._idle(tag)
        else:
            self.write(f"{tag} BAD Unknown command {name}\r\n".encode())
        return True

    def _list(self) -> None:
        self.write(b'* LIST (\\HasChildren \\Noselect) "/" "[Gmail]"\r\n')
        for folder in self.server.folders:
            use = _SYSTEM_FOLDERS.get(folder, "")
            flags = " ".join(f for f in ("\\HasNoChildren", use) if f)
            self.write(f'* LIST ({flags}) "/" '.encode() + _quoted(_mutf7(folder)) + b"\r\n")

    def _examine(self, tag: str, args: str) -> None:
        parts = _tokens(args)
        wanted = parts[0] if parts else ""
        folder = next((f for n, f in self.server.folders.items() if _mutf7(n) == wanted), None)
        if folder is None:
            self.write(f"{tag} NO [NONEXISTENT] Unknown Mailbox\r\n".encode())
            return
        self.server.examined.append(folder.name)
        self.selected = folder.name
        highest = max((m.modseq for m in folder.uids.values()), default=1)
        self.write(
            b"* FLAGS (\\Answered \\Flagged \\Draft \\Deleted \\Seen $NotPhishing $Phishing)\r\n"
            b"* OK [PERMANENTFLAGS ()] Flags permitted.\r\n"
            + f"* OK [UIDVALIDITY {folder.uidvalidity}] UIDs valid.\r\n"
            f"* {len(folder.uids)} EXISTS\r\n* 0 RECENT\r\n"
            f"* OK [UIDNEXT {folder.uidnext}] Predicted next UID.\r\n"
            f"* OK [HIGHESTMODSEQ {highest}]\r\n"
            f"{tag} OK [READ-ONLY] {folder.name} selected. (Success)\r\n".encode()
        )

    def _folder(self) -> _Folder:
        assert self.selected is not None
        return self.server.folders[self.selected]

    def _search(self, args: str) -> None:
        folder = self._folder()
        highest = max(folder.uids, default=0)
        words = _tokens(args)
        hits = []
        for uid, msg in folder.uids.items():
            keep, i = True, 0
            while i < len(words):
                word = words[i].upper()
                if word == "UID":
                    keep &= _in_set(uid, words[i + 1], highest)
                    i += 2
                elif word == "SINCE":
                    since = datetime.strptime(words[i + 1], "%d-%b-%Y").replace(tzinfo=UTC)
                    keep &= msg.internal.astimezone(UTC).date() >= since.date()
                    i += 2
                elif word == "ALL":
                    i += 1
                else:
                    raise ValueError(f"search key {word} not supported by the fake")
            if keep:
                hits.append(uid)
        self.write(("* SEARCH " + " ".join(map(str, hits))).rstrip().encode() + b"\r\n")

    def _fetch(self, args: str) -> None:
        words = _tokens(args)
        spec, items = words[0], words[1].strip("()").upper().split()
        changed = None
        if len(words) > 2 and "CHANGEDSINCE" in words[2].upper():
            changed = int(words[2].strip("()").split()[1])
            items.append("MODSEQ")  # RFC 7162: CHANGEDSINCE implies MODSEQ
        folder = self._folder()
        highest = max(folder.uids, default=0)
        for seq, (uid, msg) in enumerate(folder.uids.items(), 1):
            if not _in_set(uid, spec, highest) or (changed is not None and msg.modseq <= changed):
                continue
            self.write(f"* {seq} FETCH (".encode() + self._items(uid, msg, items) + b")\r\n")

    @staticmethod
    def _items(uid: int, msg: GmailMessage, items: list[str]) -> bytes:
        out = [b"UID %d" % uid]
        for item in dict.fromkeys(items):
            if item == "UID":
                continue
            if item == "FLAGS":
                out.append(b"FLAGS (" + " ".join(msg.flags).encode() + b")")
            elif item == "INTERNALDATE":
                out.append(b'INTERNALDATE "' + _imap_date(msg.internal).encode() + b'"')
            elif item == "RFC822.SIZE":
                out.append(b"RFC822.SIZE %d" % len(msg.raw))
            elif item == "MODSEQ":
                out.append(b"MODSEQ (%d)" % msg.modseq)
            elif item == "X-GM-MSGID":
                out.append(b"X-GM-MSGID %d" % msg.msgid)
            elif item == "X-GM-THRID":
                out.append(b"X-GM-THRID %d" % msg.thrid)
            elif item == "X-GM-LABELS":
                out.append(b"X-GM-LABELS (" + b" ".join(_label(x) for x in msg.labels) + b")")
            elif item in ("BODY.PEEK[HEADER]", "BODY.PEEK[]"):
                data = msg.header if item == "BODY.PEEK[HEADER]" else msg.raw
                name = item.replace(".PEEK", "").encode()
                out.append(name + b" {%d}\r\n" % len(data) + data)
            else:
                raise ValueError(f"fetch item {item} not supported by the fake")
        return b" ".join(out)

    async def _idle(self, tag: str) -> None:
        self.write(b"+ idling\r\n")
        await self.writer.drain()
        self.server._idlers.add(self)
        try:
            line = await self.reader.readline()
        finally:
            self.server._idlers.discard(self)
        if line.strip().upper() != b"DONE":
            self.write(f"{tag} BAD expected DONE\r\n".encode())
            return
        self.write(f"{tag} OK IDLE terminated (Success)\r\n".encode())
