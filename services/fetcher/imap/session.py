"""One IMAP connection over asyncio streams, read-only by construction.

The session offers only what sync needs: LOGIN / AUTHENTICATE XOAUTH2, CAPABILITY, LIST, EXAMINE (never
SELECT, so no flag changes as a side effect), UID SEARCH, UID FETCH (callers pass BODY.PEEK sections),
NOOP, IDLE and LOGOUT. Commands run one at a time; every read has a timeout, so a dead connection is
found instead of waited on forever. Parsing is `protocol.py`'s; this module only moves bytes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from mailsync.imap_names import decode_mailbox, encode_mailbox

from .protocol import (
    Continuation,
    ProtocolError,
    Response,
    ResponseFramer,
    Tagged,
    Untagged,
    Value,
    fetch_items,
    in_range,
    parse_response,
    quote,
)
from .qresync import Vanished, merge, parse_vanished
from .tls_buffers import share_read_buffer

Security = Literal["tls", "starttls", "plain"]

# Items an IDLE wakes up for: new mail, expunges, flag changes.
WAKE_KINDS = frozenset({"EXISTS", "EXPUNGE", "FETCH", "VANISHED"})
_UNSAFE_COMMAND = re.compile(r"^(UID\s+)?(STORE|EXPUNGE|COPY|MOVE|DELETE|RENAME|SELECT|APPEND)\b", re.I)


class ImapError(Exception):
    """A command ended in NO or BAD. `code` is the response code (e.g. `AUTHENTICATIONFAILED`)."""

    def __init__(self, command: str, status: str, text: str, code: str | None = None) -> None:
        super().__init__(f"{command} failed: {status} {('[' + code + '] ') if code else ''}{text}".strip())
        self.command = command
        self.status = status
        self.code = code
        self.text = text


class AuthenticationFailed(ImapError):
    """The server refused the credentials (not a connection problem)."""


class ConnectionLost(ConnectionError):
    """The connection closed, timed out or the server said BYE."""


@dataclass(frozen=True)
class MailboxState:
    """What EXAMINE reports about a folder."""

    name: str
    uidvalidity: int
    uidnext: int
    exists: int
    highestmodseq: int | None  # None: no CONDSTORE for this mailbox (NOMODSEQ or not offered)
    # QRESYNC only: UIDs expunged since the MODSEQ passed to `examine` (None: not asked or unusable).
    vanished: Vanished | None = None


@dataclass(frozen=True)
class Folder:
    name: str
    flags: frozenset[str]
    delimiter: str | None


@dataclass
class CommandResult:
    tagged: Tagged
    untagged: list[Untagged] = field(default_factory=list)


class ImapSession:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        timeout: float = 60.0,
        read_size: int = 256 * 1024,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._framer = ResponseFramer()
        self._pending: deque[Response] = deque()
        self._tag = 0
        self.timeout = timeout
        self._read_size = read_size
        self.capabilities: frozenset[str] = frozenset()
        self.enabled: frozenset[str] = frozenset()  # extensions turned on with ENABLE (RFC 5161)
        self.selected: str | None = None
        self.closed = False
        self.bytes_received = 0
        # A server that trickles bytes passes every per-read timeout; a command (or a lone response)
        # taking longer than 2x `timeout` must average at least this many bytes per second.
        self.min_bytes_per_second = 64.0
        self._progress_from: tuple[float, int] | None = None
        # Untagged responses that arrived outside IDLE (EXISTS/EXPUNGE/FETCH/VANISHED during a command).
        self.unsolicited: list[Untagged] = []
        # EXISTS responses noted outside IDLE since the connection opened: a pass compares it with its
        # value after EXAMINE to tell mail that arrived during the pass (the list above is only
        # cleared by IDLE, so it may hold older ones the EXAMINE already covered).
        self.exists_noted = 0
        # What ended the last IDLE, kept for the next sync pass (`take_wake`): new mail alone lets it
        # skip the full pass. None once taken, so a stale wake never steers a later pass.
        self._wake: list[Untagged] | None = None

    # ---- connection ---------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        security: Security,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 30.0,
    ) -> ImapSession:
        ctx = ssl_context or ssl.create_default_context()
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=ctx if security == "tls" else None, limit=1 << 20
                )
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to {host}:{port}: {exc or type(exc).__name__}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if security == "tls":
            share_read_buffer(writer.transport)
        session = cls(reader, writer, timeout=connect_timeout)
        try:
            greeting = await session._next()
            if not isinstance(greeting, Untagged) or greeting.kind not in ("OK", "PREAUTH"):
                raise ConnectionLost(f"unexpected greeting from {host}:{port}")
            if greeting.code and greeting.code.name == "CAPABILITY":
                session.capabilities = _caps(greeting.code.args)
            if security == "starttls":
                await session._starttls(ctx, host)
            if not session.capabilities:
                await session.capability()
        except BaseException:
            session.abort()
            raise
        return session

    async def _starttls(self, ctx: ssl.SSLContext, host: str) -> None:
        if self.capabilities and "STARTTLS" not in self.capabilities:
            await self.capability()
        if "STARTTLS" not in self.capabilities:
            raise ImapError("STARTTLS", "NO", "server does not offer STARTTLS")
        await self._command("STARTTLS")
        if self._framer.pending or self._pending:
            raise ProtocolError("server sent data after STARTTLS before the TLS handshake")
        try:
            async with asyncio.timeout(self.timeout):
                await self._writer.start_tls(ctx, server_hostname=host)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise ConnectionLost(f"TLS handshake failed: {exc or type(exc).__name__}") from None
        share_read_buffer(self._writer.transport)
        self.capabilities = frozenset()  # must be asked again after TLS (RFC 3501 6.2.1)

    def abort(self) -> None:
        """Drop the connection at once (no LOGOUT)."""
        self.closed = True
        with contextlib.suppress(Exception):
            self._writer.close()

    async def logout(self) -> None:
        if self.closed:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self._command("LOGOUT")
        self.abort()

    # ---- low level ----------------------------------------------------------------------------

    async def _read_more(self, wait: float) -> None:
        try:
            async with asyncio.timeout(wait):
                data = await self._reader.read(self._read_size)
        except TimeoutError:
            raise
        except (OSError, ssl.SSLError) as exc:
            self.closed = True
            raise ConnectionLost(f"connection error: {exc or type(exc).__name__}") from None
        if not data:
            self.closed = True
            raise ConnectionLost("server closed the connection")
        self.bytes_received += len(data)
        for raw in self._framer.feed(data):
            self._pending.append(parse_response(raw))

    async def _next(self, wait: float | None = None) -> Response:
        loop = asyncio.get_running_loop()
        since, base = self._progress_from or (loop.time(), self.bytes_received)
        while not self._pending:
            try:
                await self._read_more(self.timeout if wait is None else wait)
            except TimeoutError:
                if wait is not None:
                    raise
                self.closed = True
                raise ConnectionLost(f"no answer from the server within {self.timeout:.0f}s") from None
            elapsed = loop.time() - since
            got = self.bytes_received - base
            if wait is None and elapsed > 2 * self.timeout and got < self.min_bytes_per_second * elapsed:
                self.abort()
                raise ConnectionLost(f"server too slow: {got} bytes in {elapsed:.0f}s")
        resp = self._pending.popleft()
        if isinstance(resp, Untagged) and resp.kind == "BYE":
            self.closed = True
            raise ConnectionLost(f"server said BYE: {resp.text}")
        return resp

    def _send(self, line: bytes) -> str:
        if self.closed:
            raise ConnectionLost("session is closed")
        self._tag += 1
        tag = f"M{self._tag}"
        self._writer.write(tag.encode() + b" " + line + b"\r\n")
        return tag

    async def _command(
        self, line: str | bytes, *, on_untagged: Callable[[Untagged], bool] | None = None
    ) -> CommandResult:
        """Send one command and collect its untagged responses until its tagged completion.

        `on_untagged` may consume a response (return True) so large FETCH results are not kept twice.
        """
        data = line.encode() if isinstance(line, str) else line
        if _UNSAFE_COMMAND.match(data.decode("ascii", "replace")):
            raise ValueError("the sync session never modifies the mailbox")
        name = data.split(b" ", 1)[0].decode("ascii", "replace").upper()
        tag = self._send(data)
        await self._writer.drain()
        result_untagged: list[Untagged] = []
        self._progress_from = (asyncio.get_running_loop().time(), self.bytes_received)
        try:
            return await self._collect(name, tag, result_untagged, on_untagged)
        finally:
            self._progress_from = None

    async def _collect(
        self,
        name: str,
        tag: str,
        result_untagged: list[Untagged],
        on_untagged: Callable[[Untagged], bool] | None,
    ) -> CommandResult:
        while True:
            resp = await self._next()
            if isinstance(resp, Tagged):
                if resp.tag != tag:
                    raise ProtocolError(f"completion for unknown tag {resp.tag!r}")
                if resp.status != "OK":
                    code = resp.code.name if resp.code else None
                    raise ImapError(name, resp.status, resp.text, code)
                return CommandResult(resp, result_untagged)
            if isinstance(resp, Continuation):
                raise ProtocolError(f"unexpected continuation during {name}")
            if on_untagged is not None and on_untagged(resp):
                continue
            result_untagged.append(resp)

    # ---- commands -----------------------------------------------------------------------------

    async def capability(self) -> frozenset[str]:
        res = await self._command("CAPABILITY")
        for u in res.untagged:
            if u.kind == "CAPABILITY":
                self.capabilities = _caps(u.values)
        return self.capabilities

    async def login(self, username: str, password: str) -> None:
        if "LOGINDISABLED" in self.capabilities:
            raise AuthenticationFailed("LOGIN", "NO", "server disabled LOGIN on this connection")
        try:
            res = await self._command(b"LOGIN " + quote(username) + b" " + quote(password))
        except ImapError as exc:
            raise AuthenticationFailed("LOGIN", exc.status, exc.text, exc.code) from None
        await self._after_auth(res)

    async def authenticate_xoauth2(self, username: str, access_token: str) -> None:
        """SASL XOAUTH2 as an initial response (Gmail, Microsoft 365)."""
        blob = f"user={username}\x01auth=Bearer {access_token}\x01\x01".encode()
        tag = self._send(b"AUTHENTICATE XOAUTH2 " + base64.b64encode(blob))
        await self._writer.drain()
        challenges = 0
        while True:
            resp = await self._next()
            if isinstance(resp, Continuation):
                # The server sends an error description as a challenge; an empty reply ends the exchange.
                # More than a couple of challenges is a server looping us, not SASL XOAUTH2.
                challenges += 1
                if challenges > 2:
                    raise ProtocolError("AUTHENTICATE XOAUTH2: the server keeps challenging")
                self._writer.write(b"\r\n")
                await self._writer.drain()
                continue
            if isinstance(resp, Tagged) and resp.tag == tag:
                if resp.status != "OK":
                    code = resp.code.name if resp.code else None
                    raise AuthenticationFailed("AUTHENTICATE", resp.status, resp.text, code)
                await self._after_auth(CommandResult(resp))
                return

    async def _after_auth(self, res: CommandResult) -> None:
        if res.tagged.code and res.tagged.code.name == "CAPABILITY":
            self.capabilities = _caps(res.tagged.code.args)
        else:
            await self.capability()

    async def list_folders(self) -> list[Folder]:
        res = await self._command('LIST "" "*"')
        out: list[Folder] = []
        for u in res.untagged:
            if u.kind != "LIST" or len(u.values) < 3:
                continue
            flags, delim, name = u.values[0], u.values[1], u.values[2]
            if isinstance(name, int):
                name = str(name)
            if not isinstance(name, (str, bytes)):
                continue
            text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
            out.append(
                Folder(
                    decode_mailbox(text),
                    frozenset(str(f) for f in flags) if isinstance(flags, list) else frozenset(),
                    delim.decode() if isinstance(delim, bytes) else None,
                )
            )
        return out

    async def enable(self, *extensions: str) -> frozenset[str]:
        """ENABLE (RFC 5161) the offered ones among `extensions`; returns what the server enabled."""
        wanted = [e for e in extensions if e.upper() in self.capabilities]
        if not wanted or "ENABLE" not in self.capabilities:
            return self.enabled
        res = await self._command("ENABLE " + " ".join(wanted))
        for u in res.untagged:
            if u.kind == "ENABLED":
                self.enabled |= {str(v).upper() for v in u.values if isinstance(v, str)}
        return self.enabled

    async def examine(self, name: str, qresync: tuple[int, int] | None = None) -> MailboxState:
        """Open a folder read-only. With CONDSTORE the server reports HIGHESTMODSEQ; with QRESYNC
        enabled and `qresync` = (known UIDVALIDITY, known HIGHESTMODSEQ), also what vanished since."""
        condstore = "CONDSTORE" in self.capabilities
        arg = quote(encode_mailbox(name))
        param = b" (CONDSTORE)" if condstore else b""
        if qresync is not None and "QRESYNC" in self.enabled and qresync[0] > 0 and qresync[1] > 0:
            param = b" (QRESYNC (%d %d))" % qresync
        res = await self._command(b"EXAMINE " + arg + param)
        uidvalidity = uidnext = exists = 0
        modseq: int | None = None
        for u in res.untagged:
            if u.kind == "EXISTS" and u.number is not None:
                exists = u.number
            elif u.kind == "OK" and u.code is not None:
                if u.code.name == "UIDVALIDITY":
                    uidvalidity = u.code.number() or 0
                elif u.code.name == "UIDNEXT":
                    uidnext = u.code.number() or 0
                elif u.code.name == "HIGHESTMODSEQ":
                    modseq = u.code.number()
                elif u.code.name == "NOMODSEQ":
                    modseq = None
        if not uidvalidity:
            raise ProtocolError(f"EXAMINE {name!r} did not report UIDVALIDITY")
        if not all(in_range(v, bits=32) for v in (uidvalidity, uidnext, exists)) or not in_range(
            modseq, bits=63
        ):
            raise ProtocolError(f"EXAMINE {name!r} reported numbers out of range")
        self.selected = name
        gone = None
        if param.startswith(b" (QRESYNC") and qresync is not None and uidvalidity == qresync[0]:
            gone = _vanished(res.untagged)
        return MailboxState(name, uidvalidity, uidnext, exists, modseq, gone)

    async def uid_search(self, criteria: str) -> list[int]:
        res = await self._command(f"UID SEARCH {criteria}")
        uids: list[int] = []
        for u in res.untagged:
            if u.kind == "SEARCH":
                uids.extend(v for v in u.values if isinstance(v, int))
            else:
                self._note(u)
        return uids

    async def uid_fetch(self, uid_set: str, items: str, modifiers: str = "") -> list[dict[str, Value]]:
        """FETCH the given items for a (small) UID set; one dict of items per message.

        Callers keep `uid_set` bounded (e.g. 500 UIDs); a message is only returned when it carries a
        UID, which UID FETCH always includes.
        """
        if re.search(r"\bBODY\[", items, re.I):
            raise ValueError("use BODY.PEEK[...] so fetching never sets \\Seen")
        out: list[dict[str, Value]] = []

        def take(u: Untagged) -> bool:
            if u.kind == "FETCH":
                fields = fetch_items(u)
                if "UID" in fields:
                    out.append(fields)
                    return True
            return False

        mods = f" ({modifiers})" if modifiers else ""
        res = await self._command(f"UID FETCH {uid_set} ({items}){mods}", on_untagged=take)
        for u in res.untagged:
            self._note(u)
        return out

    async def noop(self) -> list[Untagged]:
        res = await self._command("NOOP")
        return [u for u in res.untagged if u.kind in WAKE_KINDS]

    async def poll(self, max_seconds: float, every: float) -> list[Untagged]:
        """NOOP every `every` seconds for at most `max_seconds`, until one tells of a change; returns
        what it told, as `idle` does (empty: the time ran out). A NOOP is answered from the folder's
        state at once, while IDLE waits for the server's change notification, which Dovecot delays
        up to ~0.5 s to coalesce changes: right after new mail, more tends to follow."""
        woke: list[Untagged] = [u for u in self.unsolicited if u.kind in WAKE_KINDS]
        self.unsolicited.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_seconds
        while not woke:
            woke = await self.noop()
            remaining = deadline - loop.time()
            if woke or remaining <= 0:
                break
            await asyncio.sleep(min(every, remaining))
        self._wake = woke
        return woke

    async def idle(self, max_seconds: float, done_timeout: float = 30.0) -> list[Untagged]:  # noqa: PLR0912
        """IDLE until the folder changes or `max_seconds` pass; returns what woke it.

        Always ends IDLE with DONE; when the tagged answer to DONE does not come within
        `done_timeout`, the connection is dead (a half-open TCP connection) → ConnectionLost.
        """
        woke: list[Untagged] = [u for u in self.unsolicited if u.kind in WAKE_KINDS]
        self.unsolicited.clear()
        if woke:
            self._wake = woke
            return woke
        tag = self._send(b"IDLE")
        await self._writer.drain()
        while True:
            resp = await self._next()
            if isinstance(resp, Continuation):
                break
            if isinstance(resp, Tagged):
                raise ImapError("IDLE", resp.status, resp.text, resp.code.name if resp.code else None)
            if resp.kind in WAKE_KINDS:
                woke.append(resp)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_seconds
        while not woke:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                resp = await self._next(wait=remaining)
            except TimeoutError:
                break
            if isinstance(resp, Untagged) and resp.kind in WAKE_KINDS:
                woke.append(resp)
        # Take whatever else arrived in the same read before leaving IDLE.
        while self._pending and isinstance(self._pending[0], Untagged):
            nxt = self._pending.popleft()
            if isinstance(nxt, Untagged) and nxt.kind in WAKE_KINDS:
                woke.append(nxt)
        self._writer.write(b"DONE\r\n")
        await self._writer.drain()
        try:
            async with asyncio.timeout(done_timeout):
                while True:
                    resp = await self._next(wait=done_timeout)
                    if isinstance(resp, Tagged) and resp.tag == tag:
                        break
                    if isinstance(resp, Untagged) and resp.kind in WAKE_KINDS:
                        woke.append(resp)
        except TimeoutError:
            self.abort()
            raise ConnectionLost(
                f"no answer to DONE within {done_timeout:.0f}s: connection is dead"
            ) from None
        self._wake = woke
        return woke

    def take_wake(self) -> list[Untagged] | None:
        """What ended the last IDLE (empty: its time ran out), once; None when no IDLE ended since."""
        wake, self._wake = self._wake, None
        return wake

    def _note(self, u: Untagged) -> None:
        if u.kind in WAKE_KINDS:
            self.unsolicited.append(u)
            self.exists_noted += u.kind == "EXISTS"


def _vanished(untagged: list[Untagged]) -> Vanished | None:
    """The VANISHED (EARLIER) answers of an EXAMINE with QRESYNC, merged; None when unusable (the
    caller then compares UID sets)."""
    try:
        return merge([parse_vanished(u) for u in untagged if u.kind == "VANISHED"])
    except ProtocolError:
        return None


# Every connection to one server announces the same capabilities: one frozenset per distinct list,
# shared, instead of ~30 new strings per connection (4 KiB each, 9% of an idle inbox's memory).
# Bounded, so a server that varies its list cannot grow it without end.
_CAPS_SEEN: dict[tuple[str, ...], frozenset[str]] = {}
_CAPS_SEEN_MAX = 256


def _caps(values: list[Value]) -> frozenset[str]:
    names = tuple(str(v).upper() for v in values if isinstance(v, (str, int)))
    caps = _CAPS_SEEN.get(names)
    if caps is None:
        caps = frozenset(names)
        if len(_CAPS_SEEN) < _CAPS_SEEN_MAX:
            _CAPS_SEEN[names] = caps
    return caps
